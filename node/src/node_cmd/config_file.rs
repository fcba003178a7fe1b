//! `--config FILE`: a TOML file whose keys are `murmur node`'s long flag names.
//!
//! Precedence is command line, then environment (`MURMUR_*`), then the file, then the
//! built-in default. The file is turned into extra flags inserted right after the
//! subcommand for every key the command line and the environment leave unset.

use std::path::Path;

use anyhow::{Context, bail};

/// Largest config file read.
const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// Expands `--config FILE` (or `MURMUR_CONFIG`) of the `node` subcommand into flags.
pub fn expand_args(args: Vec<String>) -> anyhow::Result<Vec<String>> {
    let Some(node_at) = args.iter().position(|a| a == "node") else {
        return Ok(args);
    };
    let tail = &args[node_at + 1..];
    let path = tail
        .iter()
        .position(|a| a == "--config")
        .and_then(|i| tail.get(i + 1).cloned())
        .or_else(|| {
            tail.iter()
                .find_map(|a| a.strip_prefix("--config=").map(str::to_owned))
        })
        .or_else(|| std::env::var("MURMUR_CONFIG").ok());
    let Some(path) = path else {
        return Ok(args);
    };
    let extra = flags_from_file(Path::new(&path), tail)?;
    let mut out = args[..=node_at].to_vec();
    out.extend(extra);
    out.extend_from_slice(tail);
    Ok(out)
}

fn flags_from_file(path: &Path, given: &[String]) -> anyhow::Result<Vec<String>> {
    let len = std::fs::metadata(path)
        .with_context(|| format!("reading config file {}", path.display()))?
        .len();
    if len > MAX_CONFIG_BYTES {
        bail!("config file {} is larger than 1 MiB", path.display());
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config file {}", path.display()))?;
    let table: toml::Table = text
        .parse()
        .with_context(|| format!("parsing config file {}", path.display()))?;
    let mut flags = Vec::new();
    for (key, value) in table {
        if key == "config" {
            bail!("config file {}: `config` cannot be nested", path.display());
        }
        let flag = format!("--{key}");
        let on_command_line = given
            .iter()
            .any(|a| *a == flag || a.starts_with(&format!("{flag}=")));
        let env = format!("MURMUR_{}", key.to_uppercase().replace('-', "_"));
        if on_command_line || std::env::var_os(&env).is_some() {
            continue;
        }
        match value {
            toml::Value::Boolean(true) => flags.push(flag),
            toml::Value::Boolean(false) => {}
            toml::Value::Array(items) => {
                for item in items {
                    flags.push(flag.clone());
                    flags.push(scalar(&key, &item)?);
                }
            }
            other => {
                flags.push(flag);
                flags.push(scalar(&key, &other)?);
            }
        }
    }
    Ok(flags)
}

fn scalar(key: &str, value: &toml::Value) -> anyhow::Result<String> {
    Ok(match value {
        toml::Value::String(s) => s.clone(),
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Float(f) => f.to_string(),
        toml::Value::Boolean(b) => b.to_string(),
        _ => bail!("config key `{key}`: expected a string, number, boolean or array of them"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_values_fill_only_what_the_command_line_leaves_unset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(
            &path,
            "fanout = 3\nrobust = true\nno-mdns = false\nsteps = 400\nbootstrap = [\"/ip4/127.0.0.1/tcp/1\"]\n",
        )
        .unwrap();
        let args: Vec<String> = [
            "murmur",
            "node",
            "--config",
            path.to_str().unwrap(),
            "--steps",
            "10",
        ]
        .map(String::from)
        .to_vec();
        let out = expand_args(args).unwrap();
        let joined = out.join(" ");
        assert!(joined.contains("--fanout 3"), "{joined}");
        assert!(joined.contains("--robust"), "{joined}");
        assert!(!joined.contains("--no-mdns"), "{joined}");
        assert!(!joined.contains("--steps 400"), "{joined}");
        assert!(
            joined.contains("--bootstrap /ip4/127.0.0.1/tcp/1"),
            "{joined}"
        );
    }

    #[test]
    fn a_broken_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "fanout = = 3").unwrap();
        let args: Vec<String> = ["murmur", "node", "--config", path.to_str().unwrap()]
            .map(String::from)
            .to_vec();
        let err = expand_args(args).unwrap_err();
        assert!(
            format!("{err:#}").contains("parsing config file"),
            "{err:#}"
        );
    }
}

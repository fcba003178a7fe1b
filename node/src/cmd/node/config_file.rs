//! `--config FILE`: a TOML file whose keys are `murmur node`'s long flag names (or a flag's
//! old name, which the command line also still accepts, e.g. `shard` for `data-part`).
//!
//! Precedence is command line, then environment (`MURMUR_*`), then the file, then the
//! built-in default. The command line is never rewritten: clap parses it first (so in
//! `murmur --data-dir node node` the first `node` is a directory), the file's values then
//! become the defaults of the `node` subcommand's arguments, and clap parses the same command
//! line again, where whatever the command line or the environment gives wins over them.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, bail};
use clap::{Arg, ArgAction, Command};

/// Largest config file read.
const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// `command` (the whole `murmur` command) with the values of the TOML file at `path` as the
/// defaults of its `node` subcommand's arguments.
pub fn with_file_defaults(command: Command, path: &Path) -> anyhow::Result<Command> {
    let table = read_table(path)?;
    let mut node = command
        .find_subcommand("node")
        .context("the murmur command has no `node` subcommand")?
        .clone();
    let mut keys = BTreeMap::new();
    for (key, value) in table {
        node = with_default(node, &key, &value, &mut keys)
            .with_context(|| format!("config file {}: key `{key}`", path.display()))?;
    }
    Ok(command.mut_subcommand("node", |_| node))
}

fn read_table(path: &Path) -> anyhow::Result<toml::Table> {
    let len = std::fs::metadata(path)
        .with_context(|| format!("reading config file {}", path.display()))?
        .len();
    if len > MAX_CONFIG_BYTES {
        bail!("config file {} is larger than 1 MiB", path.display());
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config file {}", path.display()))?;
    text.parse()
        .with_context(|| format!("parsing config file {}", path.display()))
}

/// `node` with `value` as the default of the argument whose long name (or alias) is `key`;
/// `keys` maps the arguments given so far to their key, so one flag under two names is refused.
fn with_default(
    node: Command,
    key: &str,
    value: &toml::Value,
    keys: &mut BTreeMap<String, String>,
) -> anyhow::Result<Command> {
    if key == "config" {
        bail!("`config` cannot be nested");
    }
    let named = |a: &&Arg| {
        a.get_long() == Some(key) || a.get_all_aliases().is_some_and(|old| old.contains(&key))
    };
    let Some(arg) = node.get_arguments().find(named) else {
        bail!("no such flag --{key}");
    };
    let id = arg.get_id().as_str().to_owned();
    if let Some(first) = keys.insert(id.clone(), key.to_owned()) {
        bail!("`{first}` and `{key}` set the same flag");
    }
    let values = strings(value)?;
    let takes_values = arg.get_action().takes_values();
    if !takes_values && !matches!(value, toml::Value::Boolean(_)) {
        bail!("--{key} is a switch: expected true or false");
    }
    if values.len() != 1 && !matches!(arg.get_action(), ArgAction::Append) {
        bail!("--{key} takes one value, not an array");
    }
    if takes_values {
        check_values(arg, key, &values)?;
    }
    Ok(node.mut_arg(id, |a| a.default_values(values)))
}

/// Parses `values` as clap would parse them after `--key`, so a bad value is an error naming
/// the file instead of a confusing one about a default.
fn check_values(arg: &Arg, key: &str, values: &[String]) -> anyhow::Result<()> {
    let probe = Arg::new("value")
        .long(key.to_owned())
        .action(arg.get_action().clone())
        .value_parser(arg.get_value_parser().clone());
    let argv = values.iter().flat_map(|v| [format!("--{key}"), v.clone()]);
    Command::new("murmur-node-config")
        .no_binary_name(true)
        .arg(probe)
        .try_get_matches_from(argv)
        .map(drop)
        .with_context(|| format!("bad value for --{key}"))
}

/// The value as the command-line words it stands for (an array: one per item).
fn strings(value: &toml::Value) -> anyhow::Result<Vec<String>> {
    match value {
        toml::Value::Array(items) => items.iter().map(scalar).collect(),
        other => Ok(vec![scalar(other)?]),
    }
}

fn scalar(value: &toml::Value) -> anyhow::Result<String> {
    Ok(match value {
        toml::Value::String(s) => s.clone(),
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Float(f) => f.to_string(),
        toml::Value::Boolean(b) => b.to_string(),
        _ => bail!("expected a string, number, boolean or array of them"),
    })
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use crate::cmd::{Cli, Command as Sub, parse_args};

    fn write(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    fn node_args(cli: Cli) -> super::super::NodeArgs {
        match cli.command {
            Some(Sub::Node(args)) => *args,
            other => panic!("not `node`: {other:?}"),
        }
    }

    #[test]
    fn file_values_fill_only_what_the_command_line_leaves_unset() {
        let (_dir, path) = write(
            "fanout = 3\nrobust = true\nno-mdns = false\nsteps = 400\n\
             bootstrap = [\"/ip4/127.0.0.1/tcp/1\", \"/ip4/127.0.0.1/tcp/2\"]\nrun = \"file-run\"\n",
        );
        let path = path.to_str().unwrap();
        let argv = ["murmur", "node", "--config", path, "--steps", "10"];
        let args = node_args(parse_args(argv).unwrap());
        assert_eq!(args.fanout, Some(3));
        assert!(args.robust);
        assert!(!args.no_mdns);
        assert_eq!(args.steps, Some(10), "the command line wins over the file");
        assert_eq!(args.bootstrap.len(), 2);
        assert_eq!(args.run, "file-run");
    }

    #[test]
    fn a_data_dir_called_node_is_not_taken_for_the_subcommand() {
        let (_dir, path) = write("fanout = 3\n");
        let path = path.to_str().unwrap();
        let argv = ["murmur", "--data-dir", "node", "node", "--config", path];
        let cli = parse_args(argv).unwrap();
        assert_eq!(cli.data_dir, Some(PathBuf::from("node")));
        assert_eq!(node_args(cli).fanout, Some(3));
        // `--config=FILE` and a subcommand word among the values work as well.
        let config = format!("--config={path}");
        let argv = [
            "murmur",
            "--data-dir=node",
            "node",
            "--run",
            "node",
            &config,
        ];
        let args = node_args(parse_args(argv).unwrap());
        assert_eq!((args.run.as_str(), args.fanout), ("node", Some(3)));
    }

    #[test]
    fn without_a_file_the_built_in_defaults_hold() {
        let args = node_args(parse_args(["murmur", "node"]).unwrap());
        assert_eq!(args.fanout, None);
        assert_eq!(args.run, super::super::defaults::RUN);
    }

    #[test]
    fn a_broken_file_is_a_clear_error() {
        let (_dir, path) = write("fanout = = 3");
        let argv = ["murmur", "node", "--config", path.to_str().unwrap()];
        let err = parse_args(argv).unwrap_err();
        assert!(
            format!("{err:#}").contains("parsing config file"),
            "{err:#}"
        );
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_key_and_the_file() {
        for (text, needle) in [
            ("fan-out = 3", "no such flag --fan-out"),
            ("fanout = \"many\"", "bad value for --fanout"),
            ("robust = \"yes\"", "--robust is a switch"),
            ("run = [\"a\", \"b\"]", "--run takes one value"),
            ("config = \"x.toml\"", "cannot be nested"),
            ("data-part = \"3/2\"", "bad value for --data-part"),
            ("shard = \"3/2\"", "bad value for --shard"),
            ("shard = \"1/2\"\ndata-part = \"1/2\"", "set the same flag"),
        ] {
            let (_dir, path) = write(text);
            let argv = ["murmur", "node", "--config", path.to_str().unwrap()];
            let err = format!("{:#}", parse_args(argv).unwrap_err());
            assert!(err.contains(needle), "{text}: {err}");
            assert!(err.contains("node.toml"), "{text}: {err}");
        }
    }

    #[test]
    fn old_flag_names_are_keys_too() {
        let args = |text: &str| {
            let (_dir, path) = write(text);
            let argv = ["murmur", "node", "--config", path.to_str().unwrap()];
            node_args(parse_args(argv).unwrap())
        };
        let (new, old) = (args("data-part = \"1/2\"\n"), args("shard = \"1/2\"\n"));
        assert_eq!((new.data_part, old.data_part), (Some((1, 2)), Some((1, 2))));
        let new = args("snapshot-every = 2\n");
        let old = args("replicate-every = 2\n");
        assert_eq!((new.snapshot_every, old.snapshot_every), (Some(2), Some(2)));
    }

    #[test]
    fn sharded_only_keys_in_the_file_are_refused_without_sharded() {
        let (_dir, path) = write("pipeline-peers = 4\n");
        let argv = ["murmur", "node", "--config", path.to_str().unwrap()];
        let args = node_args(parse_args(argv).unwrap());
        let err = super::super::NodeConfig::from_args(&args).unwrap_err();
        assert!(err.to_string().contains("--pipeline-peers"), "{err}");
    }
}

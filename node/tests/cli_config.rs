//! The `murmur` binary's command line end to end: `--config` file precedence against the
//! command line and `MURMUR_*` variables, a data directory named like a subcommand, and flags
//! of the other mode refused with an error naming them (`murmur node --check-config`, which
//! validates and prints the configuration without starting anything).

use std::process::{Command, Output};

fn murmur(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_murmur"));
    command.args(args);
    // Only the variables a test sets: the caller's environment must not leak in.
    for (key, _) in std::env::vars_os() {
        if key.to_str().is_some_and(|k| k.starts_with("MURMUR_")) {
            command.env_remove(key);
        }
    }
    command.envs(env.iter().copied());
    command.output().expect("run the murmur binary")
}

fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "murmur failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn command_line_beats_environment_beats_file_beats_default() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("node.toml");
    std::fs::write(
        &file,
        "fanout = 3\neval-every = 7\nsteps = 400\nrobust = true\n",
    )
    .unwrap();
    let file = file.to_str().unwrap();
    let data_dir = dir.path().join("node");
    let data_dir = data_dir.to_str().unwrap();
    let out = murmur(
        &[
            "--data-dir",
            data_dir,
            "node",
            "--config",
            file,
            "--steps",
            "10",
            "--check-config",
        ],
        &[("MURMUR_FANOUT", "5"), ("MURMUR_STEPS", "20")],
    );
    let text = stdout(&out);
    assert!(
        text.contains("steps: 10,"),
        "command line over env and file:\n{text}"
    );
    assert!(text.contains("fanout: 5,"), "env over file:\n{text}");
    assert!(
        text.contains("eval_every: 7,"),
        "file over default:\n{text}"
    );
    assert!(text.contains("robust: true,"), "file switch:\n{text}");
    assert!(text.contains("checkpoint_every: 4,"), "default:\n{text}");
    // The file can also come from the environment.
    let out = murmur(&["node", "--check-config"], &[("MURMUR_CONFIG", file)]);
    assert!(stdout(&out).contains("fanout: 3,"));
}

#[test]
fn a_data_dir_named_node_is_a_directory() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("node.toml");
    std::fs::write(&file, "fanout = 4\n").unwrap();
    let file = file.to_str().unwrap();
    let out = murmur(
        &[
            "--data-dir",
            "node",
            "node",
            "--config",
            file,
            "--check-config",
        ],
        &[],
    );
    assert!(stdout(&out).contains("fanout: 4,"));
}

#[test]
fn flags_of_the_other_mode_are_refused_by_name() {
    for (args, env, flag) in [
        (
            &["node", "--pipeline-peers", "4"][..],
            &[][..],
            "--pipeline-peers",
        ),
        (&["node", "--sharded", "--fanout", "3"], &[], "--fanout"),
        (
            &["node", "--sharded"],
            &[("MURMUR_SYNC", "steps:5")][..],
            "--sync",
        ),
        (
            &["node", "--sharded", "--peer-deadline", "inf"],
            &[],
            "--peer-deadline inf",
        ),
    ] {
        let mut args = args.to_vec();
        args.push("--check-config");
        let out = murmur(&args, env);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(stderr.contains(flag), "{args:?}: {stderr}");
    }
}

#[test]
fn renamed_flags_answer_to_their_old_names_and_help_shows_only_the_new() {
    let config = |args: &[&str], env: &[(&str, &str)]| {
        let args = [&["node"][..], args, &["--check-config"]].concat();
        stdout(&murmur(&args, env))
    };
    let part = config(&["--data-part", "1/2"], &[]);
    assert_ne!(part, config(&[], &[]));
    assert_eq!(config(&["--shard", "1/2"], &[]), part);
    assert_eq!(config(&[], &[("MURMUR_DATA_PART", "1/2")]), part);
    assert_eq!(config(&[], &[("MURMUR_SHARD", "1/2")]), part);
    let both = [("MURMUR_DATA_PART", "1/2"), ("MURMUR_SHARD", "0/2")];
    assert_eq!(config(&[], &both), part, "the new name wins");
    let every = config(&["--sharded", "--snapshot-every", "2"], &[]);
    assert_ne!(every, config(&["--sharded"], &[]));
    assert_eq!(config(&["--sharded", "--replicate-every", "2"], &[]), every);
    let old = [("MURMUR_REPLICATE_EVERY", "2")];
    assert_eq!(config(&["--sharded"], &old), every);
    for command in ["node", "train"] {
        let help = stdout(&murmur(&[command, "--help"], &[]));
        assert!(help.contains("--data-part"), "{command}:\n{help}");
        assert!(!help.contains("--shard "), "{command}:\n{help}");
        assert!(!help.contains("replicate"), "{command}:\n{help}");
    }
}

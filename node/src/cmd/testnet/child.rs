//! One child process of the testnet: spawned from this same binary, its JSON-lines stdout
//! read on a task, its stderr written to a log file, stopped by closing its stdin; and the
//! command lines every node child starts with, and the bootstrap child.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// A JSON line printed by child `index`.
#[derive(Debug)]
pub(crate) struct Line {
    pub(crate) index: usize,
    pub(crate) generation: u32,
    pub(crate) value: serde_json::Value,
}

/// How long the task reading a child's stdout may take to end once the child is gone.
const READER_GRACE: Duration = Duration::from_secs(2);

/// A running child.
#[derive(Debug)]
pub(crate) struct ChildProc {
    child: Child,
    stdin: Option<ChildStdin>,
    pub(crate) generation: u32,
    /// The task forwarding its stdout lines: joined (with a bounded wait) when the child
    /// is stopped or killed, aborted if the child is dropped.
    reader: Option<JoinHandle<()>>,
}

/// Starts `murmur <args>` with piped stdin/stdout and stderr appended to `log`.
pub(crate) fn spawn(
    index: usize,
    generation: u32,
    args: &[String],
    log: &Path,
    lines: mpsc::Sender<Line>,
) -> anyhow::Result<ChildProc> {
    spawn_with_env(index, generation, args, &[], log, lines)
}

/// [`spawn`] with extra environment variables.
pub(crate) fn spawn_with_env(
    index: usize,
    generation: u32,
    args: &[String],
    env: &[(&str, &str)],
    log: &Path,
    lines: mpsc::Sender<Line>,
) -> anyhow::Result<ChildProc> {
    let exe = std::env::current_exe().context("locating the murmur binary")?;
    let stderr = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening log file {}", log.display()))?;
    let mut command = Command::new(exe);
    // A child's configuration is its command line: `MURMUR_*` variables of the caller (say
    // `MURMUR_CONFIG` or `MURMUR_FANOUT`) would change it, or make `node` refuse it.
    for (key, _) in std::env::vars_os() {
        if key
            .to_str()
            .is_some_and(|k| k.starts_with("MURMUR_") && k != "MURMUR_LOG")
        {
            command.env_remove(key);
        }
    }
    let mut child = command
        .args(args)
        .env(
            "MURMUR_LOG",
            std::env::var("MURMUR_LOG").unwrap_or_else(|_| "info".into()),
        )
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(stderr))
        .kill_on_drop(true)
        .spawn()
        .context("starting a child process")?;
    let stdin = child.stdin.take();
    let reader = child
        .stdout
        .take()
        .map(|stdout| tokio::spawn(forward_lines(stdout, index, generation, lines)));
    Ok(ChildProc {
        child,
        stdin,
        generation,
        reader,
    })
}

/// Forwards the JSON lines of a child's stdout (others are skipped) until it closes or no
/// one listens.
async fn forward_lines(
    stdout: ChildStdout,
    index: usize,
    generation: u32,
    lines: mpsc::Sender<Line>,
) {
    let mut reader = BufReader::new(stdout).lines();
    while let Ok(Some(line)) = reader.next_line().await {
        let Ok(value) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        let line = Line {
            index,
            generation,
            value,
        };
        if lines.send(line).await.is_err() {
            return;
        }
    }
}

impl ChildProc {
    /// Asks the child to stop (closes its stdin).
    pub(crate) fn request_stop(&mut self) {
        self.stdin = None;
    }

    /// Kills the child at once (SIGKILL), as a crash would.
    pub(crate) async fn kill(&mut self) {
        let _ = self.child.kill().await;
        self.join_reader().await;
    }

    /// Waits (at most [`READER_GRACE`]) for the stdout reader of a child that is gone, then
    /// aborts it; a panic of the reader is logged, not lost.
    async fn join_reader(&mut self) {
        let Some(mut reader) = self.reader.take() else {
            return;
        };
        match tokio::time::timeout(READER_GRACE, &mut reader).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => tracing::error!(error = %err, "a testnet child's stdout reader failed"),
            Err(_) => {
                tracing::warn!("a testnet child's stdout reader did not end; aborting it");
                reader.abort();
            }
        }
    }

    /// The child's exit status, once it has exited.
    pub(crate) fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits up to `limit` for the child to exit, then kills it. Returns whether it exited
    /// by itself.
    pub(crate) async fn wait_or_kill(&mut self, limit: Duration) -> bool {
        match tokio::time::timeout(limit, self.child.wait()).await {
            Ok(_) => {
                self.join_reader().await;
                true
            }
            Err(_) => {
                self.kill().await;
                false
            }
        }
    }
}

impl Drop for ChildProc {
    fn drop(&mut self) {
        // The child itself is killed on drop (`kill_on_drop`); its reader goes with it.
        if let Some(reader) = self.reader.take() {
            reader.abort();
        }
    }
}

/// Directory layout of a testnet.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    pub(crate) root: PathBuf,
}

impl Layout {
    pub(crate) fn node_dir(&self, index: usize) -> PathBuf {
        self.root.join(format!("node-{index}"))
    }
    pub(crate) fn log(&self, name: &str) -> PathBuf {
        self.root.join(format!("{name}.log"))
    }
    /// The closed pool's manifest (butterfly testnets).
    pub(crate) fn pool_manifest(&self) -> PathBuf {
        self.root.join("pool.manifest")
    }
}

/// The arguments every testnet node process starts with: its data directory, JSON progress,
/// stop on stdin EOF, the run, loopback TCP only, no mDNS, the testnet's bootstrap node.
pub(crate) fn child_node_args(dir: &std::path::Path, run: &str, bootstrap: &str) -> Vec<String> {
    vec![
        "--data-dir".into(),
        dir.display().to_string(),
        "node".into(),
        "--json".into(),
        "--stdin-control".into(),
        "--run".into(),
        run.into(),
        "--no-mdns".into(),
        "--kad-server".into(),
        "--listen".into(),
        "/ip4/127.0.0.1/tcp/0".into(),
        "--bootstrap".into(),
        bootstrap.into(),
    ]
}

/// Starts the bootstrap node (data in `layout.root/<name>`) and returns it with its TCP
/// multiaddr.
pub(crate) async fn start_bootstrap(
    layout: &Layout,
    name: &str,
    lines_tx: &mpsc::Sender<Line>,
    lines: &mut mpsc::Receiver<Line>,
) -> anyhow::Result<(ChildProc, String)> {
    let boot_args: Vec<String> = vec![
        "--data-dir".into(),
        layout.root.join(name).display().to_string(),
        "bootstrap-node".into(),
    ];
    let bootstrap = spawn(
        usize::MAX,
        0,
        &boot_args,
        &layout.log(name),
        lines_tx.clone(),
    )?;
    let addr = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(line) = lines.recv().await {
            if line.index == usize::MAX
                && let Some(addr) = line.value.get("addr").and_then(|a| a.as_str())
                && addr.contains("/tcp/")
            {
                return Some(addr.to_owned());
            }
        }
        None
    })
    .await
    .ok()
    .flatten()
    .context("the bootstrap node did not report its address")?;
    Ok((bootstrap, addr))
}

//! One `sora` process with its own config, data dir and log file.

use crate::http::{self, HttpResponse};
use crate::net::{TestNet, API_PORT, MEDIA_PORT, SIGNALING_PORT};
use crate::{sora_bin, tail_of_file, TempDir};
use anyhow::{bail, Context};
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// What goes into the node's `sora.conf`.
#[derive(Debug, Clone)]
pub struct SoraNodeOptions {
    /// `node_name`; defaults to `sora1@<listen_address>`.
    pub node_name: Option<String>,
    pub listen_address: Ipv4Addr,
    pub api_port: u16,
    pub signaling_port: u16,
    pub media_port: u16,
    pub dataplane_cores: u32,
    pub log_level: String,
    /// `data_dir`; defaults to `<temp dir>/data`.
    pub data_dir: Option<PathBuf>,
    /// Further `key = value` lines, written after the ones above.
    pub extra: Vec<(String, String)>,
    /// How long the API and signaling ports may take to accept connections.
    pub startup_timeout: Duration,
}

impl SoraNodeOptions {
    /// Node `n` (1-based) of a test's address block, with the default ports.
    pub fn new(net: &TestNet, n: u8) -> Self {
        Self {
            node_name: None,
            listen_address: net.addr(n),
            api_port: API_PORT,
            signaling_port: SIGNALING_PORT,
            media_port: MEDIA_PORT,
            dataplane_cores: 1,
            log_level: "info".to_string(),
            data_dir: None,
            extra: Vec::new(),
            startup_timeout: Duration::from_secs(20),
        }
    }

    /// Adds one `key = value` line.
    pub fn with(mut self, key: &str, value: impl ToString) -> Self {
        self.extra.push((key.to_string(), value.to_string()));
        self
    }

    fn node_name(&self) -> String {
        self.node_name
            .clone()
            .unwrap_or_else(|| format!("sora1@{}", self.listen_address))
    }

    /// The text of `sora.conf`.
    pub fn render(&self, default_data_dir: &std::path::Path) -> String {
        let data_dir = self
            .data_dir
            .clone()
            .unwrap_or_else(|| default_data_dir.to_path_buf());
        let mut s = String::new();
        let _ = writeln!(s, "# written by the end-to-end test harness");
        let _ = writeln!(s, "node_name = {}", self.node_name());
        let _ = writeln!(s, "listen_address = {}", self.listen_address);
        let _ = writeln!(s, "api_port = {}", self.api_port);
        let _ = writeln!(s, "signaling_port = {}", self.signaling_port);
        let _ = writeln!(s, "media_port = {}", self.media_port);
        let _ = writeln!(s, "data_dir = {}", data_dir.display());
        let _ = writeln!(s, "dataplane_cores = {}", self.dataplane_cores);
        let _ = writeln!(s, "log_level = {}", self.log_level);
        for (k, v) in &self.extra {
            let _ = writeln!(s, "{k} = {v}");
        }
        s
    }
}

/// A running node. Killed (SIGKILL) when dropped; its log is printed then if
/// the test is failing.
///
/// Started either in the foreground as the test's child ([`SoraNode::start`],
/// `sora start`, log in the temp dir) or as Sora's operators do
/// ([`SoraNode::daemon`], `sora daemon`, pid file and log in `data_dir`).
pub struct SoraNode {
    child: Option<Child>,
    /// The pid from `<data_dir>/sora.pid` of a node started by `sora daemon`.
    daemon_pid: Option<u32>,
    daemon: bool,
    opts: SoraNodeOptions,
    log_path: PathBuf,
    config_path: PathBuf,
    dir: TempDir,
}

/// What a `sora` subcommand printed and how it exited.
#[derive(Debug)]
pub struct CommandOutput {
    pub status: std::process::ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl CommandOutput {
    pub fn success(&self) -> bool {
        self.status.success()
    }
}

impl std::fmt::Display for CommandOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}; stdout: {:?}; stderr: {:?}",
            self.status, self.stdout, self.stderr
        )
    }
}

impl SoraNode {
    /// Writes the config, starts `sora start --config <file>` and waits until
    /// both the API and the signaling port accept TCP connections.
    pub async fn start(opts: SoraNodeOptions) -> anyhow::Result<SoraNode> {
        let mut node = Self::prepare(opts, false)?;
        node.spawn_foreground()?;
        node.wait_ready().await?;
        Ok(node)
    }

    /// Writes the config and runs `sora daemon --config <file>`, which must
    /// exit 0 and leave `<data_dir>/sora.pid` naming a live process; then
    /// waits until the API and signaling ports accept TCP connections. The
    /// log is `<data_dir>/sora.log`.
    pub async fn daemon(opts: SoraNodeOptions) -> anyhow::Result<SoraNode> {
        let mut node = Self::prepare(opts, true)?;
        node.run_daemon().await?;
        node.wait_ready().await?;
        Ok(node)
    }

    fn prepare(opts: SoraNodeOptions, daemon: bool) -> anyhow::Result<SoraNode> {
        let dir = TempDir::new(&opts.node_name())?;
        let config_path = dir.path().join("sora.conf");
        let default_data = dir.path().join("data");
        std::fs::write(&config_path, opts.render(&default_data))?;
        let log_path = if daemon {
            opts.data_dir
                .clone()
                .unwrap_or(default_data)
                .join("sora.log")
        } else {
            dir.path().join("sora.log")
        };
        Ok(SoraNode {
            child: None,
            daemon_pid: None,
            daemon,
            opts,
            log_path,
            config_path,
            dir,
        })
    }

    fn spawn_foreground(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)?;
        let bin = sora_bin();
        let child = Command::new(&bin)
            .arg("start")
            .arg("--config")
            .arg(&self.config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| {
                format!(
                    "cannot run {} (build it with `cargo build --release`, or set SORA_BIN)",
                    bin.display()
                )
            })?;
        self.child = Some(child);
        Ok(())
    }

    async fn run_daemon(&mut self) -> anyhow::Result<()> {
        let out = self.sora_command("daemon").await?;
        if !out.success() {
            bail!(
                "`sora daemon` for {} failed: {out}\nlog:\n{}",
                self.node_name(),
                self.log_tail()
            );
        }
        let pid_path = self.pid_path();
        let text = std::fs::read_to_string(&pid_path).with_context(|| {
            format!("`sora daemon` exited 0 but left no {}", pid_path.display())
        })?;
        let pid: u32 = text
            .trim()
            .parse()
            .with_context(|| format!("{}: {text:?} is not a pid", pid_path.display()))?;
        if !pid_alive(pid) {
            bail!(
                "{} names pid {pid}, which is not running\nlog:\n{}",
                pid_path.display(),
                self.log_tail()
            );
        }
        self.daemon_pid = Some(pid);
        Ok(())
    }

    /// Runs `sora <subcommand> --config <this node's file>` and collects its
    /// output (at most 30 s).
    pub async fn sora_command(&self, subcommand: &str) -> anyhow::Result<CommandOutput> {
        let bin = sora_bin();
        let mut cmd = tokio::process::Command::new(&bin);
        cmd.arg(subcommand)
            .arg("--config")
            .arg(&self.config_path)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let out = tokio::time::timeout(Duration::from_secs(30), cmd.output())
            .await
            .with_context(|| format!("`sora {subcommand}` did not exit within 30 s"))?
            .with_context(|| format!("cannot run {}", bin.display()))?;
        Ok(CommandOutput {
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    /// `sora stop --config <file>` for a node started with [`SoraNode::daemon`]:
    /// it must exit 0, and the process must be gone.
    pub async fn stop(&mut self) -> anyhow::Result<CommandOutput> {
        let out = self.sora_command("stop").await?;
        if !out.success() {
            bail!("`sora stop` for {} failed: {out}", self.node_name());
        }
        if let Some(pid) = self.daemon_pid.take() {
            if pid_alive(pid) {
                bail!("`sora stop` exited 0 but pid {pid} is still running");
            }
        }
        Ok(out)
    }

    /// The process id of the running node, if any.
    pub fn pid(&self) -> Option<u32> {
        match (&self.child, self.daemon_pid) {
            (Some(c), _) => Some(c.id()),
            (None, pid) => pid,
        }
    }

    /// The node's `data_dir`.
    pub fn data_dir(&self) -> PathBuf {
        self.opts
            .data_dir
            .clone()
            .unwrap_or_else(|| self.dir.path().join("data"))
    }

    /// `<data_dir>/sora.pid`, written by `sora daemon`.
    pub fn pid_path(&self) -> PathBuf {
        self.data_dir().join("sora.pid")
    }

    /// Kills the node with SIGKILL (no graceful shutdown) and waits until the
    /// process is gone.
    pub async fn sigkill(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
            return Ok(());
        }
        if let Some(pid) = self.daemon_pid.take() {
            let status = Command::new("kill")
                .arg("-KILL")
                .arg(pid.to_string())
                .stdin(Stdio::null())
                .status()
                .context("running kill -KILL")?;
            if !status.success() && pid_alive(pid) {
                bail!("kill -KILL {pid} failed: {status}");
            }
            crate::wait_until(
                &format!("pid {pid} to exit"),
                Duration::from_secs(10),
                || (!pid_alive(pid)).then_some(()),
            )
            .await?;
        }
        Ok(())
    }

    /// Starts the node again the way it was started first, with the same
    /// config and `data_dir` (a foreground node's log is appended to). The
    /// node must not be running.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        if self.is_running() {
            bail!("{} is still running", self.node_name());
        }
        if self.daemon {
            self.run_daemon().await?;
        } else {
            self.spawn_foreground()?;
        }
        self.wait_ready().await
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + self.opts.startup_timeout;
        let targets = [self.api_addr(), self.signaling_addr()];
        let mut ready = [false, false];
        loop {
            for (i, addr) in targets.iter().enumerate() {
                if !ready[i] {
                    ready[i] = tokio::net::TcpStream::connect(addr).await.is_ok();
                }
            }
            if ready.iter().all(|r| *r) {
                return Ok(());
            }
            if self.daemon_pid.is_some_and(|pid| !pid_alive(pid)) {
                bail!(
                    "sora (daemon) exited before listening on {:?}\nlog:\n{}",
                    targets,
                    self.log_tail()
                );
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!(
                    "sora exited with {status} before listening on {:?}\nconfig:\n{}\nlog:\n{}",
                    targets,
                    self.opts.render(&self.dir.path().join("data")),
                    self.log_tail()
                );
            }
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "sora did not accept TCP on {:?} within {:?} (ready: {:?})\nlog:\n{}",
                    targets,
                    self.opts.startup_timeout,
                    ready,
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn options(&self) -> &SoraNodeOptions {
        &self.opts
    }

    pub fn node_name(&self) -> String {
        self.opts.node_name()
    }

    pub fn config_path(&self) -> &std::path::Path {
        &self.config_path
    }

    pub fn api_addr(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(self.opts.listen_address), self.opts.api_port)
    }

    pub fn signaling_addr(&self) -> SocketAddr {
        SocketAddr::new(
            IpAddr::V4(self.opts.listen_address),
            self.opts.signaling_port,
        )
    }

    pub fn media_addr(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(self.opts.listen_address), self.opts.media_port)
    }

    /// `ws://<addr>:<port>/signaling`
    pub fn signaling_url(&self) -> String {
        format!("ws://{}/signaling", self.signaling_addr())
    }

    /// `POST /` with `x-sora-target: <target>` and `body` as JSON (no body
    /// when `Value::Null`). Returns the status and the JSON answer.
    pub async fn api(
        &self,
        target: &str,
        body: serde_json::Value,
    ) -> anyhow::Result<(u16, serde_json::Value)> {
        let r = self.api_raw(target, &body_bytes(&body)).await?;
        Ok((r.status, r.json()))
    }

    /// Like [`SoraNode::api`] but fails unless the status is 200.
    pub async fn api_ok(
        &self,
        target: &str,
        body: serde_json::Value,
    ) -> anyhow::Result<serde_json::Value> {
        let (status, json) = self.api(target, body).await?;
        if status != 200 {
            bail!("{target} answered {status}: {json}");
        }
        Ok(json)
    }

    /// `POST /` with a raw body (for malformed input) and the whole answer.
    pub async fn api_raw(&self, target: &str, body: &[u8]) -> anyhow::Result<HttpResponse> {
        self.api_raw_within(target, body, Duration::from_secs(10))
            .await
    }

    /// Like [`SoraNode::api`], waiting up to `timeout` for the answer (cluster
    /// operations may wait for a Raft leader longer than the default 10 s).
    pub async fn api_within(
        &self,
        target: &str,
        body: serde_json::Value,
        timeout: Duration,
    ) -> anyhow::Result<(u16, serde_json::Value)> {
        let r = self
            .api_raw_within(target, &body_bytes(&body), timeout)
            .await?;
        Ok((r.status, r.json()))
    }

    async fn api_raw_within(
        &self,
        target: &str,
        body: &[u8],
        timeout: Duration,
    ) -> anyhow::Result<HttpResponse> {
        http::request(
            self.api_addr(),
            "POST",
            "/",
            &[
                ("x-sora-target", target),
                ("content-type", "application/json"),
            ],
            body,
            timeout,
        )
        .await
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        if let Some(pid) = self.daemon_pid {
            return pid_alive(pid);
        }
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// The last 16 KiB of the node's stdout+stderr.
    pub fn log_tail(&self) -> String {
        tail_of_file(&self.log_path, 16 * 1024)
    }

    pub fn log_path(&self) -> &std::path::Path {
        &self.log_path
    }

    /// Kills the process and waits for it (a daemon: SIGKILL, not waited for).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(pid) = self.daemon_pid.take() {
            if pid_alive(pid) {
                let _ = Command::new("kill")
                    .arg("-KILL")
                    .arg(pid.to_string())
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
        }
    }
}

impl Drop for SoraNode {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "---- sora node {} log ({}) ----\n{}\n---- end of log ----",
                self.node_name(),
                self.log_path.display(),
                self.log_tail()
            );
        }
    }
}

/// Whether `pid` is a live process (a zombie counts as gone).
fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

fn body_bytes(body: &serde_json::Value) -> Vec<u8> {
    if body.is_null() {
        Vec::new()
    } else {
        serde_json::to_vec(body).expect("a serde_json::Value always serialises")
    }
}

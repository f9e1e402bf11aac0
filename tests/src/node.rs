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
pub struct SoraNode {
    child: Option<Child>,
    opts: SoraNodeOptions,
    log_path: PathBuf,
    config_path: PathBuf,
    dir: TempDir,
}

impl SoraNode {
    /// Writes the config, starts `sora start --config <file>` and waits until
    /// both the API and the signaling port accept TCP connections.
    pub async fn start(opts: SoraNodeOptions) -> anyhow::Result<SoraNode> {
        let dir = TempDir::new(&opts.node_name())?;
        let config_path = dir.path().join("sora.conf");
        std::fs::write(&config_path, opts.render(&dir.path().join("data")))?;
        let log_path = dir.path().join("sora.log");
        let log = std::fs::File::create(&log_path)?;
        let bin = sora_bin();
        let child = Command::new(&bin)
            .arg("start")
            .arg("--config")
            .arg(&config_path)
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
        let mut node = SoraNode {
            child: Some(child),
            opts,
            log_path,
            config_path,
            dir,
        };
        node.wait_ready().await?;
        Ok(node)
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
        http::request(
            self.api_addr(),
            "POST",
            "/",
            &[
                ("x-sora-target", target),
                ("content-type", "application/json"),
            ],
            body,
            Duration::from_secs(10),
        )
        .await
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// The last 16 KiB of the node's stdout+stderr.
    pub fn log_tail(&self) -> String {
        tail_of_file(&self.log_path, 16 * 1024)
    }

    pub fn log_path(&self) -> &std::path::Path {
        &self.log_path
    }

    /// Kills the process and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
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

fn body_bytes(body: &serde_json::Value) -> Vec<u8> {
    if body.is_null() {
        Vec::new()
    } else {
        serde_json::to_vec(body).expect("a serde_json::Value always serialises")
    }
}

//! The SDK client programs (tests/clients/) run as subprocesses.
//!
//! Each prints JSON lines on stdout; a reader task collects them as events
//! while the client runs, so a test can wait for "the subscriber has decoded
//! green" with a deadline. stderr (libwebrtc's and Chromium's logs) goes to a
//! file that is shown when the test fails.

use crate::{chromium_bin, clients_dir, node_bin, python_bin, tail_of_file, TempDir};
use anyhow::{bail, Context};
use serde_json::Value;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientKind {
    /// sora-sdk (libwebrtc) in CPython.
    Python,
    /// sora-js-sdk in headless Chromium, driven by playwright-core.
    Js,
}

/// How to run one client. `args()` turns it into the command line shared by
/// the Python clients and the JS driver.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    pub url: String,
    pub channel: String,
    /// sendonly | recvonly | sendrecv
    pub role: String,
    pub duration: Duration,
    pub video_codec: Option<String>,
    pub colours: Vec<String>,
    pub colour_period: Duration,
    pub client_id: Option<String>,
    /// Any further `--flag value` pairs.
    pub extra: Vec<String>,
}

impl ClientOptions {
    pub fn new(url: &str, channel: &str, role: &str) -> Self {
        Self {
            url: url.to_string(),
            channel: channel.to_string(),
            role: role.to_string(),
            duration: Duration::from_secs(15),
            video_codec: None,
            colours: ["red", "green", "blue", "yellow"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            colour_period: Duration::from_secs(1),
            client_id: None,
            extra: Vec::new(),
        }
    }

    pub fn duration(mut self, d: Duration) -> Self {
        self.duration = d;
        self
    }

    pub fn video_codec(mut self, codec: &str) -> Self {
        self.video_codec = Some(codec.to_string());
        self
    }

    pub fn colours(mut self, colours: &[&str]) -> Self {
        self.colours = colours.iter().map(|s| s.to_string()).collect();
        self
    }

    pub fn args(&self) -> Vec<String> {
        let mut a = vec![
            "--url".into(),
            self.url.clone(),
            "--channel".into(),
            self.channel.clone(),
            "--role".into(),
            self.role.clone(),
            "--duration".into(),
            format!("{:.3}", self.duration.as_secs_f64()),
            "--colours".into(),
            self.colours.join(","),
            "--colour-period".into(),
            format!("{:.3}", self.colour_period.as_secs_f64()),
        ];
        if let Some(c) = &self.video_codec {
            a.push("--video-codec".into());
            a.push(c.clone());
        }
        if let Some(c) = &self.client_id {
            a.push("--client-id".into());
            a.push(c.clone());
        }
        a.extend(self.extra.iter().cloned());
        a
    }
}

/// A running client program and the events it has printed so far.
pub struct Client {
    name: String,
    kind: ClientKind,
    child: Child,
    events: Arc<Mutex<Vec<Value>>>,
    reader: Option<JoinHandle<()>>,
    stderr_path: PathBuf,
    _dir: TempDir,
}

impl Client {
    /// Runs `tests/clients/py/<script>` with the venv's Python.
    pub fn python(name: &str, script: &str, args: &[String]) -> anyhow::Result<Client> {
        let script_path = clients_dir().join("py").join(script);
        let mut cmd = Command::new(python_bin());
        cmd.arg("-u").arg(&script_path).args(args);
        Self::spawn(name, ClientKind::Python, cmd)
    }

    /// Runs the Playwright driver `tests/clients/js/driver.mjs` with Node.
    pub fn js(name: &str, args: &[String]) -> anyhow::Result<Client> {
        let js_dir = clients_dir().join("js");
        let mut cmd = Command::new(node_bin());
        cmd.arg(js_dir.join("driver.mjs"))
            .args(args)
            .current_dir(&js_dir)
            .env("CHROMIUM_PATH", chromium_bin());
        Self::spawn(name, ClientKind::Js, cmd)
    }

    /// A client of `kind` with `opts`: publisher.py / subscriber.py /
    /// sendrecv.py by role for Python, the driver for JS.
    pub fn start(kind: ClientKind, name: &str, opts: &ClientOptions) -> anyhow::Result<Client> {
        match kind {
            ClientKind::Python => {
                let script = match opts.role.as_str() {
                    "sendonly" => "publisher.py",
                    "recvonly" => "subscriber.py",
                    _ => "sendrecv.py",
                };
                Self::python(name, script, &opts.args())
            }
            ClientKind::Js => Self::js(name, &opts.args()),
        }
    }

    fn spawn(name: &str, kind: ClientKind, mut cmd: Command) -> anyhow::Result<Client> {
        let dir = TempDir::new(&format!("client-{name}"))?;
        let stderr_path = dir.path().join("stderr.log");
        let stderr = std::fs::File::create(&stderr_path)?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting client {name} ({kind:?}): {cmd:?}"))?;
        let stdout = child.stdout.take().expect("stdout was set to piped above");
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = events.clone();
        let reader = tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let trimmed = line.trim();
                if trimmed.is_empty() {
                    continue;
                }
                let value = serde_json::from_str::<Value>(trimmed)
                    .ok()
                    .filter(Value::is_object)
                    .unwrap_or_else(|| serde_json::json!({"event": "raw", "line": line}));
                sink.lock().expect("event list lock poisoned").push(value);
            }
        });
        Ok(Client {
            name: name.to_string(),
            kind,
            child,
            events,
            reader: Some(reader),
            stderr_path,
            _dir: dir,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn kind(&self) -> ClientKind {
        self.kind
    }

    /// All events so far.
    pub fn events(&self) -> Vec<Value> {
        self.events
            .lock()
            .expect("event list lock poisoned")
            .clone()
    }

    /// The events named `event` so far.
    pub fn events_named(&self, event: &str) -> Vec<Value> {
        self.events()
            .into_iter()
            .filter(|e| e["event"] == event)
            .collect()
    }

    /// The first event named `event` that satisfies `pred`, if any yet.
    pub fn find(&self, event: &str, pred: impl Fn(&Value) -> bool) -> Option<Value> {
        self.events
            .lock()
            .expect("event list lock poisoned")
            .iter()
            .find(|e| e["event"] == event && pred(e))
            .cloned()
    }

    /// Waits until an event named `event` satisfying `pred` has arrived.
    pub async fn wait_event(
        &mut self,
        event: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<Value> {
        self.wait_events(&format!("event {event:?}"), timeout, |evs| {
            evs.iter().find(|e| e["event"] == event && pred(e)).cloned()
        })
        .await
    }

    /// Waits until `cond` over all events so far returns `Some`. Fails early
    /// if the client exits without meeting it.
    pub async fn wait_events<T>(
        &mut self,
        what: &str,
        timeout: Duration,
        cond: impl Fn(&[Value]) -> Option<T>,
    ) -> anyhow::Result<T> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut exited_at: Option<tokio::time::Instant> = None;
        loop {
            {
                let evs = self.events.lock().expect("event list lock poisoned");
                if let Some(v) = cond(&evs) {
                    return Ok(v);
                }
            }
            let now = tokio::time::Instant::now();
            if exited_at.is_none() && self.child.try_wait()?.is_some() {
                exited_at = Some(now);
            }
            // After an exit, give the reader a moment to drain stdout.
            if exited_at.is_some_and(|t| now - t > Duration::from_millis(500)) {
                bail!(
                    "client {} exited before {what}\n{}",
                    self.name,
                    self.describe()
                );
            }
            if now >= deadline {
                bail!(
                    "client {}: timed out after {timeout:?} waiting for {what}\n{}",
                    self.name,
                    self.describe()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits for the process to exit (and its stdout to be read).
    pub async fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let status = match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(status) => status?,
            Err(_) => bail!(
                "client {} still running after {timeout:?}\n{}",
                self.name,
                self.describe()
            ),
        };
        if let Some(reader) = self.reader.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), reader).await;
        }
        Ok(status)
    }

    /// Kills the process now.
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }

    /// The events (one per line, long ones cut) and the stderr tail.
    pub fn describe(&self) -> String {
        let mut s = format!("---- client {} ({:?}) events ----\n", self.name, self.kind);
        for e in self.events() {
            let line = e.to_string();
            if line.len() > 600 {
                s.push_str(&line[..line.floor_char_boundary_compat(600)]);
                s.push_str("…\n");
            } else {
                s.push_str(&line);
                s.push('\n');
            }
        }
        s.push_str(&format!(
            "---- client {} stderr ({}) ----\n{}\n---- end ----",
            self.name,
            self.stderr_path.display(),
            tail_of_file(&self.stderr_path, 6 * 1024)
        ));
        s
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        if std::thread::panicking() {
            eprintln!("{}", self.describe());
        }
    }
}

/// `str::floor_char_boundary` is not stable on our MSRV.
trait FloorCharBoundary {
    fn floor_char_boundary_compat(&self, index: usize) -> usize;
}

impl FloorCharBoundary for String {
    fn floor_char_boundary_compat(&self, index: usize) -> usize {
        let mut i = index.min(self.len());
        while !self.is_char_boundary(i) {
            i -= 1;
        }
        i
    }
}

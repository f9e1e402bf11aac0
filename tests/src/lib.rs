//! Harness for the end-to-end tests: start the real `sora` binary, talk to
//! its HTTP API and signaling, and run Sora's own SDKs against it.
//!
//! ```text
//!   test ──► SoraNode::start ──► target/release/sora start --config <tmp>/sora.conf
//!     │          (waits until the API and signaling ports accept TCP)
//!     ├──► node.api(target, body)            POST / with x-sora-target
//!     ├──► RawSignaling::connect(url)        a bare WebSocket (tokio-tungstenite)
//!     └──► Client::python / Client::js       sora-sdk / sora-js-sdk in a subprocess,
//!                                            their JSON-lines stdout collected as events
//! ```
//!
//! Every test takes its own loopback address from [`TestNet`] so tests run in
//! parallel (nextest runs each in its own process). Tests wait on conditions
//! with deadlines, never on bare sleeps.
//!
//! Paths come from the environment, with defaults for a developer checkout:
//! `SORA_BIN` (`<workspace>/target/release/sora`), `SORA_E2E_PYTHON`
//! (`<workspace>/.venv/bin/python`), `SORA_E2E_NODE` (`node`),
//! `SORA_E2E_CHROMIUM` (`/usr/bin/chromium`). `scripts/test.sh` sets them all.

pub mod client;
pub mod colours;
pub mod http;
pub mod net;
pub mod node;
pub mod signaling;

pub use client::{Client, ClientKind, ClientOptions};
pub use colours::{assert_colour_sequence, colour_changes};
pub use http::HttpResponse;
pub use net::TestNet;
pub use node::{CommandOutput, SoraNode, SoraNodeOptions};
pub use signaling::{RawSignaling, Received};

use std::path::PathBuf;
use std::time::Duration;

/// The workspace root (the parent of this crate).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate lives one level below the workspace root")
        .to_path_buf()
}

/// The `sora` binary under test.
pub fn sora_bin() -> PathBuf {
    env_path("SORA_BIN").unwrap_or_else(|| workspace_root().join("target/release/sora"))
}

/// The Python interpreter of the venv that has sora-sdk.
pub fn python_bin() -> PathBuf {
    env_path("SORA_E2E_PYTHON").unwrap_or_else(|| workspace_root().join(".venv/bin/python"))
}

/// The Node.js binary that runs the Playwright driver.
pub fn node_bin() -> PathBuf {
    env_path("SORA_E2E_NODE").unwrap_or_else(|| PathBuf::from("node"))
}

/// Debian's Chromium.
pub fn chromium_bin() -> PathBuf {
    env_path("SORA_E2E_CHROMIUM").unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"))
}

/// Directory of the client programs (`py/`, `js/`).
pub fn clients_dir() -> PathBuf {
    workspace_root().join("tests/clients")
}

fn env_path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// Polls `cond` every 50 ms until it returns `Some`, or fails after `timeout`
/// with a message naming `what`.
pub async fn wait_until<T, F>(what: &str, timeout: Duration, mut cond: F) -> anyhow::Result<T>
where
    F: FnMut() -> Option<T>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = cond() {
            return Ok(v);
        }
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Like [`wait_until`] for conditions that need to `.await` (API calls).
pub async fn wait_until_async<T, F, Fut>(
    what: &str,
    timeout: Duration,
    mut cond: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = cond().await {
            return Ok(v);
        }
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A directory under the system temp dir, removed on drop unless the thread
/// is panicking (then it is kept and its path printed, for the logs in it).
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(label: &str) -> std::io::Result<Self> {
        use std::sync::atomic::{AtomicU32, Ordering};
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let safe: String = label
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        let path = std::env::temp_dir().join(format!(
            "sora-e2e-{safe}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path)?;
        Ok(Self { path })
    }

    pub fn path(&self) -> &std::path::Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("keeping {} for inspection", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// The last `max` bytes of a file, lossily decoded, for failure messages.
pub fn tail_of_file(path: &std::path::Path, max: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let start = bytes.len().saturating_sub(max);
            let text = String::from_utf8_lossy(&bytes[start..]).into_owned();
            if start > 0 {
                format!("…{text}")
            } else {
                text
            }
        }
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}

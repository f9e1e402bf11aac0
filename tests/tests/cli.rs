//! The `sora` command line: `version`, and a config the node must refuse.

use std::process::Output;
use std::time::Duration;
use tests::{sora_bin, TempDir};

async fn run(args: &[&str]) -> Output {
    let mut cmd = tokio::process::Command::new(sora_bin());
    cmd.args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    tokio::time::timeout(Duration::from_secs(20), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("sora {args:?} did not exit within 20 s"))
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", sora_bin().display()))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[tokio::test]
async fn version_prints_the_version_and_exits_0() {
    let out = run(&["version"]).await;
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "{:?}: {stdout} {}",
        out.status,
        text(&out.stderr)
    );
    assert!(
        stdout.contains(env!("CARGO_PKG_VERSION")),
        "version {} not in {stdout:?}",
        env!("CARGO_PKG_VERSION")
    );
}

#[tokio::test]
async fn unknown_config_key_exits_2_with_one_line_naming_it() {
    let dir = TempDir::new("cli-bad-key").unwrap();
    let conf = dir.path().join("sora.conf");
    std::fs::write(
        &conf,
        "node_name = sora1@127.0.0.1\nbogus_setting = 1\napi_port = 3000\n",
    )
    .unwrap();
    let out = run(&["start", "--config", conf.to_str().unwrap()]).await;
    let stderr = text(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(2),
        "status {:?}, stderr {stderr:?}",
        out.status
    );
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "want one line, got {stderr:?}");
    assert!(lines[0].contains("bogus_setting"), "{stderr:?}");
    assert!(
        lines[0].contains('2'),
        "the line number (2) should be named: {stderr:?}"
    );
}

#[tokio::test]
async fn missing_config_file_fails() {
    let dir = TempDir::new("cli-missing").unwrap();
    let conf = dir.path().join("nope.conf");
    let out = run(&["start", "--config", conf.to_str().unwrap()]).await;
    assert!(!out.status.success(), "started without a config file");
    assert!(
        text(&out.stderr).contains("nope.conf"),
        "{}",
        text(&out.stderr)
    );
}

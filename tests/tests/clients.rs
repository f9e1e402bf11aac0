//! The client programs themselves, against a stand-in signaling server
//! (tests/clients/py/fake_signaling.py) that records `connect` and closes
//! with 4001. These need no node: they prove each SDK client gets as far as
//! sending `connect` and reports the server's close, so a media test that
//! fails later is about the node, not the client.

use serde_json::Value;
use std::time::Duration;
use tests::{Client, ClientKind, ClientOptions};

const CLOSE_CODE: u64 = 4001;
const CLOSE_REASON: &str = "FAKE-SIGNALING-SERVER";

async fn fake_server(name: &str) -> (Client, String) {
    let mut server = Client::python(
        &format!("fake-{name}"),
        "fake_signaling.py",
        &[
            "--port".into(),
            "0".into(),
            "--lifetime".into(),
            "120".into(),
        ],
    )
    .expect("start fake_signaling.py");
    let listening = server
        .wait_event("listening", Duration::from_secs(20), |_| true)
        .await
        .expect("fake server listening");
    let port = listening["port"]
        .as_u64()
        .expect("listening event has a port");
    (server, format!("ws://127.0.0.1:{port}/signaling"))
}

/// Runs one client against the fake server and returns (what the server
/// recorded as `connect`, the client).
async fn connect_and_get_closed(
    kind: ClientKind,
    role: &str,
    codec: Option<&str>,
) -> (Value, Client) {
    let name = format!("{kind:?}-{role}").to_lowercase();
    let (mut server, url) = fake_server(&name).await;
    let mut opts =
        ClientOptions::new(&url, "sora-e2e-fake", role).duration(Duration::from_secs(20));
    if let Some(c) = codec {
        opts = opts.video_codec(c);
    }
    let mut client = Client::start(kind, &name, &opts).expect("start client");
    let connect = server
        .wait_event("connect", Duration::from_secs(60), |_| true)
        .await
        .expect("the client sends connect");
    // The client must see the close and end by itself, well before --duration.
    match kind {
        ClientKind::Python => {
            let close = client
                .wait_event("ws_close", Duration::from_secs(15), |_| true)
                .await
                .expect("ws_close reported");
            assert_eq!(close["code"], CLOSE_CODE, "{close}");
            assert_eq!(close["reason"], CLOSE_REASON, "{close}");
            let disc = client
                .wait_event("disconnect", Duration::from_secs(15), |_| true)
                .await
                .expect("disconnect reported");
            let msg = disc["message"].as_str().unwrap_or_default();
            assert!(msg.contains("wscode=4001"), "{disc}");
        }
        ClientKind::Js => {
            let err = client
                .wait_event("connect_error", Duration::from_secs(15), |_| true)
                .await
                .expect("connect_error reported");
            assert_eq!(err["code"], CLOSE_CODE, "{err}");
            assert_eq!(err["reason"], CLOSE_REASON, "{err}");
        }
    }
    client
        .wait_event("done", Duration::from_secs(15), |_| true)
        .await
        .expect("client finishes after the close");
    let status = client
        .wait_exit(Duration::from_secs(30))
        .await
        .expect("client exits");
    assert!(
        status.success(),
        "client exit status {status}\n{}",
        client.describe()
    );
    server.kill().await;
    (connect["message"].clone(), client)
}

fn assert_common_connect(msg: &Value, role: &str) {
    assert_eq!(msg["type"], "connect", "{msg}");
    assert_eq!(msg["role"], role, "{msg}");
    assert_eq!(msg["channel_id"], "sora-e2e-fake", "{msg}");
    assert!(msg["sora_client"].is_string(), "{msg}");
    assert!(msg["environment"].is_string(), "{msg}");
}

#[tokio::test]
async fn python_publisher_sends_connect_and_reports_close() {
    let (msg, _c) = connect_and_get_closed(ClientKind::Python, "sendonly", Some("VP9")).await;
    assert_common_connect(&msg, "sendonly");
    assert!(
        msg["sora_client"]
            .as_str()
            .unwrap()
            .starts_with("Sora Python SDK"),
        "{msg}"
    );
    assert!(msg["libwebrtc"].is_string(), "{msg}");
    assert_eq!(
        msg["video"],
        serde_json::json!({"codec_type": "VP9"}),
        "{msg}"
    );
    assert_eq!(msg["audio"], true, "{msg}");
    assert!(
        msg.get("sdp").is_none(),
        "the C++ SDK sends no SDP in connect: {msg}"
    );
}

#[tokio::test]
async fn python_subscriber_sends_connect_and_reports_close() {
    let (msg, _c) = connect_and_get_closed(ClientKind::Python, "recvonly", None).await;
    assert_common_connect(&msg, "recvonly");
    assert_eq!(msg["video"], true, "{msg}");
}

#[tokio::test]
async fn python_sendrecv_sends_connect_and_reports_close() {
    let (msg, _c) = connect_and_get_closed(ClientKind::Python, "sendrecv", Some("AV1")).await;
    assert_common_connect(&msg, "sendrecv");
    assert_eq!(msg["video"]["codec_type"], "AV1", "{msg}");
}

#[tokio::test]
async fn js_publisher_sends_connect_and_reports_close() {
    let (msg, _c) = connect_and_get_closed(ClientKind::Js, "sendonly", Some("VP8")).await;
    assert_common_connect(&msg, "sendonly");
    assert!(
        msg["sora_client"]
            .as_str()
            .unwrap()
            .starts_with("Sora JavaScript SDK"),
        "{msg}"
    );
    assert_eq!(
        msg["video"],
        serde_json::json!({"codec_type": "VP8"}),
        "{msg}"
    );
    // The JS SDK sends a throwaway offer (the fake server keeps only its size).
    assert!(
        msg["sdp"]
            .as_str()
            .unwrap_or_default()
            .contains("bytes of SDP"),
        "{msg}"
    );
    assert!(
        msg.get("metadata").is_some_and(Value::is_null),
        "JS sends metadata: null: {msg}"
    );
}

#[tokio::test]
async fn js_subscriber_sends_connect_and_reports_close() {
    let (msg, _c) = connect_and_get_closed(ClientKind::Js, "recvonly", None).await;
    assert_common_connect(&msg, "recvonly");
    assert_eq!(msg["audio"], true, "{msg}");
    assert_eq!(msg["video"], true, "{msg}");
}

/// The PyPI wheel has no H264 codec, so H264 is covered in the browser only.
#[tokio::test]
async fn python_wheel_has_no_h264_but_vp8_vp9_av1() {
    let mut probe = Client::python("codec-probe", "codecs.py", &[]).expect("start codecs.py");
    let caps = probe
        .wait_event("codecs", Duration::from_secs(30), |_| true)
        .await
        .expect("codec capability");
    for codec in ["VP8", "VP9", "AV1"] {
        assert_eq!(caps["encoders"][codec], true, "{codec}: {caps}");
        assert_eq!(caps["decoders"][codec], true, "{codec}: {caps}");
    }
    assert_eq!(caps["encoders"]["H264"], false, "{caps}");
    probe
        .wait_exit(Duration::from_secs(20))
        .await
        .expect("codecs.py exits");
}

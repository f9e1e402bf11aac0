//! Webhooks: the auth webhook admits or refuses a `connect`; session and event
//! webhooks report what happened. A small HTTP server in the test plays the
//! webhook endpoint and records what it is sent.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tests::{
    wait_until, Client, ClientKind, ClientOptions, RawSignaling, SoraNode, SoraNodeOptions, TestNet,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const WAIT: Duration = Duration::from_secs(15);

/// One request the endpoint received: its path, `*-webhook-type` header and body.
#[derive(Debug, Clone)]
struct Hook {
    path: String,
    kind: Option<String>,
    body: Value,
}

/// A webhook endpoint answering every request with `answer(path, body)`.
struct Endpoint {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Hook>>>,
}

impl Endpoint {
    async fn start(
        addr: SocketAddr,
        answer: impl Fn(&str, &Value) -> (u16, Value) + Send + Sync + 'static,
    ) -> Endpoint {
        let listener = TcpListener::bind(addr)
            .await
            .expect("bind webhook endpoint");
        let addr = listener.local_addr().expect("local addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let answer = Arc::new(answer);
        let seen2 = seen.clone();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let seen = seen2.clone();
                let answer = answer.clone();
                tokio::spawn(async move {
                    let Some((path, headers, body)) = read_request(&mut sock).await else {
                        return;
                    };
                    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    let kind = headers
                        .iter()
                        .find(|(k, _)| k.ends_with("-webhook-type"))
                        .map(|(_, v)| v.clone());
                    let (status, reply) = answer(&path, &body);
                    seen.lock().unwrap().push(Hook { path, kind, body });
                    let reply = reply.to_string();
                    let resp = format!(
                        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{reply}",
                        reply.len()
                    );
                    let _ = sock.write_all(resp.as_bytes()).await;
                });
            }
        });
        Endpoint { addr, seen }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn seen(&self) -> Vec<Hook> {
        self.seen.lock().unwrap().clone()
    }
}

/// Reads one HTTP/1.1 request with a content-length body.
async fn read_request(
    sock: &mut tokio::net::TcpStream,
) -> Option<(String, Vec<(String, String)>, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let n = sock.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let path = lines.next()?.split(' ').nth(1)?.to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + len {
        let n = sock.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Some((path, headers, buf[head_end..head_end + len].to_vec()))
}

fn connect_msg(channel: &str) -> Value {
    json!({"type": "connect", "role": "sendonly", "channel_id": channel,
           "metadata": {"token": "secret"}, "sora_client": "raw test client"})
}

#[tokio::test]
async fn auth_webhook_denial_closes_with_its_reason() {
    let net = TestNet::new("auth_denied");
    let hook = Endpoint::start(SocketAddr::new(net.addr(9).into(), 8080), |_, body| {
        if body["metadata"]["token"] == "secret" {
            (200, json!({"allowed": false, "reason": "token revoked"}))
        } else {
            (200, json!({"allowed": true}))
        }
    })
    .await;
    let node =
        SoraNode::start(SoraNodeOptions::new(&net, 1).with("auth_webhook_url", hook.url("/auth")))
            .await
            .expect("node starts");
    let mut ws = RawSignaling::connect(&node.signaling_url())
        .await
        .expect("ws");
    ws.send_json(&connect_msg("auth_denied"))
        .await
        .expect("send");
    let (code, reason, _) = ws.expect_close(WAIT).await.expect("closed");
    assert_eq!(code, 4403, "{reason}");
    assert!(reason.contains("token revoked"), "{reason}");
    let seen = hook.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    let body = &seen[0].body;
    assert_eq!(seen[0].path, "/auth");
    assert_eq!(body["channel_id"], "auth_denied");
    assert_eq!(body["role"], "sendonly");
    assert_eq!(
        body["connection_id"].as_str().map(str::len),
        Some(26),
        "{body}"
    );
    assert_eq!(body["sora_client"], "raw test client");
    assert!(node
        .api_ok("Sora_20201013.ListConnections", json!({}))
        .await
        .unwrap()
        .as_array()
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn auth_webhook_metadata_and_client_id_reach_the_offer() {
    let net = TestNet::new("auth_allowed");
    let hook = Endpoint::start(SocketAddr::new(net.addr(9).into(), 8080), |_, _| {
        (
            200,
            json!({"allowed": true, "client_id": "from-webhook", "metadata": {"room": 7}}),
        )
    })
    .await;
    let node =
        SoraNode::start(SoraNodeOptions::new(&net, 1).with("auth_webhook_url", hook.url("/auth")))
            .await
            .expect("node starts");
    let mut ws = RawSignaling::connect(&node.signaling_url())
        .await
        .expect("ws");
    ws.send_json(&connect_msg("auth_allowed"))
        .await
        .expect("send");
    let offer = ws.expect_type("offer", WAIT).await.expect("offer");
    assert_eq!(offer["client_id"], "from-webhook");
    assert_eq!(offer["metadata"], json!({"room": 7}));
}

#[tokio::test]
async fn auth_webhook_that_fails_denies() {
    let net = TestNet::new("auth_failing");
    // A 500 answer, then an endpoint that is not there at all.
    let hook = Endpoint::start(SocketAddr::new(net.addr(9).into(), 8080), |_, _| {
        (500, json!({"allowed": true}))
    })
    .await;
    let urls = [hook.url("/auth"), format!("http://{}:9/auth", net.addr(10))];
    for (n, url) in (1..).zip(urls) {
        let node = SoraNode::start(SoraNodeOptions::new(&net, n).with("auth_webhook_url", &url))
            .await
            .expect("node starts");
        let mut ws = RawSignaling::connect(&node.signaling_url())
            .await
            .expect("ws");
        ws.send_json(&connect_msg("auth_failing"))
            .await
            .expect("send");
        let (code, reason, before) = ws.expect_close(WAIT).await.expect("closed");
        assert_eq!(code, 4403, "{url}: {reason}");
        assert!(reason.starts_with("AUTH-WEBHOOK-DENIED"), "{url}: {reason}");
        assert!(before.iter().all(|m| m["type"] != "offer"), "{before:?}");
        drop(node);
    }
}

#[tokio::test]
async fn session_and_event_webhooks_follow_a_connection() {
    let net = TestNet::new("event_hooks");
    let hook = Endpoint::start(SocketAddr::new(net.addr(9).into(), 8080), |_, _| {
        (200, json!({}))
    })
    .await;
    let node = SoraNode::start(
        SoraNodeOptions::new(&net, 1)
            .with("event_webhook_url", hook.url("/event"))
            .with("session_webhook_url", hook.url("/session")),
    )
    .await
    .expect("node starts");
    let mut publisher = Client::start(
        ClientKind::Python,
        "publisher",
        &ClientOptions::new(&node.signaling_url(), "event_hooks", "sendonly")
            .video_codec("VP8")
            .duration(Duration::from_secs(3)),
    )
    .expect("start publisher");
    publisher
        .wait_exit(Duration::from_secs(60))
        .await
        .expect("publisher exits");
    let kinds = wait_until("four webhooks", WAIT, || {
        let seen = hook.seen();
        (seen.len() >= 4).then_some(seen)
    })
    .await
    .expect("webhooks arrive");
    let order: Vec<(String, Option<String>, String)> = kinds
        .iter()
        .map(|h| {
            (
                h.path.clone(),
                h.kind.clone(),
                h.body["type"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    let want = [
        ("/session", "session.created"),
        ("/event", "connection.created"),
        ("/event", "connection.destroyed"),
        ("/session", "session.destroyed"),
    ];
    for (path, kind) in want {
        let pos = order
            .iter()
            .position(|(p, k, t)| p == path && k.as_deref() == Some(kind) && t == kind)
            .unwrap_or_else(|| panic!("no {kind} on {path}: {order:?}"));
        let body = &kinds[pos].body;
        assert_eq!(body["channel_id"], "event_hooks", "{body}");
        assert!(
            body["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')),
            "{body}"
        );
    }
    let created = kinds
        .iter()
        .find(|h| h.body["type"] == "connection.created")
        .unwrap();
    let destroyed = kinds
        .iter()
        .find(|h| h.body["type"] == "connection.destroyed")
        .unwrap();
    assert_eq!(
        created.body["connection_id"],
        destroyed.body["connection_id"]
    );
    assert_eq!(created.body["role"], "sendonly");
    // Per path, the order is kept.
    let events: Vec<&str> = order
        .iter()
        .filter(|o| o.0 == "/event")
        .map(|o| o.2.as_str())
        .collect();
    assert_eq!(events, ["connection.created", "connection.destroyed"]);
}

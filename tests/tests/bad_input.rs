//! Input no SDK sends: the node must close with a 4xxx code and a reason a
//! person can act on, never hang or crash, and keep serving everyone else.

use serde_json::{json, Value};
use std::net::UdpSocket;
use std::time::Duration;
use tests::{RawSignaling, Received, SoraNode, SoraNodeOptions, TestNet};

const WAIT: Duration = Duration::from_secs(10);

async fn node(test: &str) -> SoraNode {
    SoraNode::start(SoraNodeOptions::new(&TestNet::new(test), 1))
        .await
        .expect("node starts")
}

fn connect_msg(channel: &str, role: &str) -> Value {
    json!({
        "type": "connect",
        "role": role,
        "channel_id": channel,
        "sora_client": "raw test client",
        "audio": true,
        "video": true,
    })
}

/// Sends `text` as the first message and expects a 4xxx close with a reason.
async fn expect_rejected(node: &SoraNode, text: &str) -> (u16, String) {
    let mut ws = RawSignaling::connect(&node.signaling_url())
        .await
        .expect("ws");
    ws.send_text(text).await.expect("send");
    let (code, reason, before) = ws.expect_close(WAIT).await.unwrap_or_else(|e| {
        panic!(
            "no close after {text:.200}: {e:#}\nnode log:\n{}",
            node.log_tail()
        )
    });
    assert!(
        (4000..5000).contains(&code),
        "close code {code} ({reason:?}) after {text:.200}; before it: {before:?}"
    );
    assert!(
        !reason.trim().is_empty(),
        "close {code} without a reason after {text:.200}"
    );
    assert!(
        before.iter().all(|m| m["type"] != "offer"),
        "an offer before the close: {before:?}"
    );
    (code, reason)
}

#[tokio::test]
async fn malformed_json_is_closed_with_a_reason() {
    let node = node("malformed_json").await;
    expect_rejected(&node, "{\"type\": \"connect\", ").await;
    expect_rejected(&node, "not json at all").await;
    expect_rejected(&node, "[1, 2, 3]").await;
}

#[tokio::test]
async fn unknown_message_type_is_closed_with_a_reason() {
    let node = node("unknown_type").await;
    expect_rejected(&node, &json!({"type": "hello"}).to_string()).await;
    expect_rejected(&node, &json!({"no_type": true}).to_string()).await;
    // A known type out of turn: nothing to answer before an offer.
    expect_rejected(
        &node,
        &json!({"type": "answer", "sdp": "v=0\r\n"}).to_string(),
    )
    .await;
}

#[tokio::test]
async fn connect_with_a_bad_role_is_closed_with_a_reason() {
    let node = node("bad_role").await;
    let (_, reason) =
        expect_rejected(&node, &connect_msg("bad_role", "publisher").to_string()).await;
    assert!(
        reason.to_ascii_lowercase().contains("role"),
        "reason {reason:?}"
    );
    let mut no_role = connect_msg("bad_role", "sendonly");
    no_role.as_object_mut().unwrap().remove("role");
    expect_rejected(&node, &no_role.to_string()).await;
}

#[tokio::test]
async fn channel_id_over_255_bytes_is_closed_with_a_reason() {
    let node = node("long_channel").await;
    let long = "c".repeat(256);
    let (_, reason) = expect_rejected(&node, &connect_msg(&long, "sendonly").to_string()).await;
    assert!(
        reason.to_ascii_lowercase().contains("channel"),
        "reason {reason:?}"
    );
    // 255 bytes of multi-byte UTF-8 is still over the limit once it passes 255 bytes.
    let wide = "é".repeat(128); // 256 bytes
    expect_rejected(&node, &connect_msg(&wide, "sendonly").to_string()).await;
    expect_rejected(&node, &connect_msg("", "sendonly").to_string()).await;

    // Exactly 255 bytes is accepted: the node answers with an offer.
    let ok = "c".repeat(255);
    let mut ws = RawSignaling::connect(&node.signaling_url())
        .await
        .expect("ws");
    ws.send_json(&connect_msg(&ok, "recvonly"))
        .await
        .expect("send");
    let offer = ws
        .expect_type("offer", WAIT)
        .await
        .expect("an offer for 255 bytes");
    assert!(offer["sdp"].is_string(), "{offer}");
    assert_eq!(
        offer["connection_id"].as_str().map(str::len),
        Some(26),
        "{offer}"
    );
    assert!(offer["config"]["iceServers"].is_array(), "{offer}");
    ws.close().await;
}

#[tokio::test]
async fn unsupported_codec_is_closed_with_a_reason() {
    let node = node("bad_codec").await;
    let mut msg = connect_msg("bad_codec", "sendonly");
    msg["video"] = json!({"codec_type": "VP7"});
    let (_, reason) = expect_rejected(&node, &msg.to_string()).await;
    assert!(
        reason.to_ascii_uppercase().contains("CODEC") || reason.contains("VP7"),
        "reason {reason:?}"
    );
    let mut msg = connect_msg("bad_codec", "sendonly");
    msg["audio"] = json!({"codec_type": "MP3"});
    expect_rejected(&node, &msg.to_string()).await;
}

/// Sum of every numeric field whose name says it counts rejected input.
fn rejected_counters(v: &Value) -> u64 {
    fn walk(v: &Value, key: &str, sum: &mut u64) {
        match v {
            Value::Object(m) => m.iter().for_each(|(k, v)| walk(v, k, sum)),
            Value::Array(a) => a.iter().for_each(|v| walk(v, key, sum)),
            Value::Number(n) => {
                let k = key.to_ascii_lowercase();
                if [
                    "drop",
                    "invalid",
                    "malformed",
                    "unknown",
                    "discard",
                    "garbage",
                ]
                .iter()
                .any(|w| k.contains(w))
                {
                    *sum += n.as_u64().unwrap_or(0);
                }
            }
            _ => {}
        }
    }
    let mut sum = 0;
    walk(v, "", &mut sum);
    sum
}

#[tokio::test]
async fn garbage_udp_to_the_media_port_is_counted_and_harmless() {
    let net = TestNet::new("garbage_udp");
    let node = SoraNode::start(SoraNodeOptions::new(&net, 1))
        .await
        .expect("node starts");
    let before = node
        .api_ok("Sora_20171010.GetStatsReport", Value::Null)
        .await
        .expect("GetStatsReport");
    let base = rejected_counters(&before);

    // One of each first-byte class of RFC 7983 and then some: STUN-looking,
    // DTLS-looking, RTP-looking, empty-ish and random.
    let sock = UdpSocket::bind((net.addr(200), 0)).expect("udp socket");
    let mut seed: u32 = 0x1234_5678;
    let mut sent = 0u64;
    for i in 0..500u32 {
        let len = 1 + (i as usize * 37) % 1200;
        let mut pkt = vec![0u8; len];
        for b in pkt.iter_mut() {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            *b = seed as u8;
        }
        pkt[0] = [0x00, 0x01, 0x16, 0x17, 0x80, 0x90, 0xff, 0x40][i as usize % 8];
        sock.send_to(&pkt, node.media_addr()).expect("send garbage");
        sent += 1;
    }

    let stats = tests::wait_until_async("rejected datagrams counted", WAIT, || async {
        let s = node
            .api_ok("Sora_20171010.GetStatsReport", Value::Null)
            .await
            .ok()?;
        (rejected_counters(&s) >= base + sent).then_some(s)
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\nbefore: {before}\nnode log:\n{}", node.log_tail()));
    assert!(rejected_counters(&stats) >= base + sent);

    // Still serving: the API answers and a new connection gets an offer.
    let mut ws = RawSignaling::connect(&node.signaling_url())
        .await
        .expect("ws");
    ws.send_json(&connect_msg("garbage_udp", "recvonly"))
        .await
        .expect("send");
    match ws.recv(WAIT).await.expect("an answer to connect") {
        Received::Json(v) if v["type"] == "offer" => {}
        other => panic!("expected an offer after the garbage, got {other:?}"),
    }
    ws.close().await;
}

/// A connectivity check with the connection's ufrag but the wrong password is
/// dropped and counted as a STUN authentication failure; the same check with
/// the right password is answered.
#[tokio::test]
async fn stun_with_a_bad_integrity_is_dropped_and_counted() {
    let net = TestNet::new("stun_bad_integrity");
    let node = SoraNode::start(SoraNodeOptions::new(&net, 1))
        .await
        .expect("node starts");
    let mut ws = RawSignaling::connect(&node.signaling_url())
        .await
        .expect("ws");
    ws.send_json(&connect_msg("stun_bad_integrity", "recvonly"))
        .await
        .expect("send");
    let offer = ws.expect_type("offer", WAIT).await.expect("offer");
    let sdp = offer["sdp"].as_str().expect("sdp");
    let attr = |name: &str| {
        sdp.lines()
            .find_map(|l| l.strip_prefix(&format!("a={name}:")))
            .unwrap_or_else(|| panic!("no a={name} in {sdp}"))
            .trim()
            .to_owned()
    };
    let (ufrag, pwd) = (attr("ice-ufrag"), attr("ice-pwd"));
    let username = format!("{ufrag}:peer");
    let stun_auth = |v: &Value| v["dataplane"]["dropped_stun_auth"].as_u64().unwrap_or(0);
    let base = stun_auth(
        &node
            .api_ok("Sora_20171010.GetStatsReport", Value::Null)
            .await
            .expect("stats"),
    );

    let sock = UdpSocket::bind((net.addr(200), 0)).expect("udp socket");
    sock.set_read_timeout(Some(Duration::from_millis(300)))
        .expect("timeout");
    let mut bad = Vec::new();
    dataplane::stun::write_binding_request(
        &mut bad,
        &[1; 12],
        username.as_bytes(),
        b"not the password",
        true,
    );
    for _ in 0..5 {
        sock.send_to(&bad, node.media_addr()).expect("send");
    }
    tests::wait_until_async("bad checks counted", WAIT, || async {
        let s = node
            .api_ok("Sora_20171010.GetStatsReport", Value::Null)
            .await
            .ok()?;
        (stun_auth(&s) >= base + 5).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\nnode log:\n{}", node.log_tail()));
    let mut buf = [0u8; 1500];
    assert!(
        sock.recv_from(&mut buf).is_err(),
        "a check with a bad integrity was answered"
    );

    let mut good = Vec::new();
    dataplane::stun::write_binding_request(
        &mut good,
        &[2; 12],
        username.as_bytes(),
        pwd.as_bytes(),
        true,
    );
    let answered = tests::wait_until("a valid check answered", WAIT, || {
        sock.send_to(&good, node.media_addr()).ok()?;
        let (n, _) = sock.recv_from(&mut buf).ok()?;
        dataplane::stun::xor_mapped_address(&buf[..n])
    })
    .await
    .expect("binding success");
    assert_eq!(answered, sock.local_addr().expect("local addr"));
    ws.close().await;
}

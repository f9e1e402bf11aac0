//! The media path on one node, judged by Sora's own SDKs: what a publisher
//! paints, a subscriber must decode in the same order; tones must arrive;
//! joins and leaves must reach everyone as notify + re-offer; the API must
//! see and end connections.

use serde_json::Value;
use std::time::Duration;
use tests::{
    assert_colour_sequence, colour_changes, Client, ClientKind, ClientOptions, SoraNode,
    SoraNodeOptions, TestNet,
};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
const MEDIA_TIMEOUT: Duration = Duration::from_secs(40);

async fn node(test: &str) -> SoraNode {
    SoraNode::start(SoraNodeOptions::new(&TestNet::new(test), 1))
        .await
        .expect("node starts")
}

/// The connection id a client got in its offer.
async fn connection_id(c: &mut Client) -> String {
    let offer = c
        .wait_event("offer", CONNECT_TIMEOUT, |e| e["connection_id"].is_string())
        .await
        .expect("offer with a connection_id");
    offer["connection_id"].as_str().unwrap().to_string()
}

/// Waits until `sub` has decoded at least `steps` in-order colour changes
/// of `cycle` from the stream of connection `publisher`.
async fn wait_colour_steps(sub: &mut Client, publisher: &str, cycle: &[&str], steps: usize) {
    let publisher = publisher.to_string();
    let cycle_owned: Vec<String> = cycle.iter().map(|s| s.to_string()).collect();
    let result = sub
        .wait_events(
            &format!("{steps} colour steps from {publisher}"),
            MEDIA_TIMEOUT,
            |evs| {
                let seen = colour_changes(evs, Some(&publisher));
                let c: Vec<&str> = cycle_owned.iter().map(String::as_str).collect();
                (seen.len() > steps).then(|| assert_colour_sequence(&seen, &c, steps))
            },
        )
        .await
        .expect("colours decoded");
    if let Err(e) = result {
        panic!(
            "{} decoded colours out of order: {e}\n{}",
            sub.name(),
            sub.describe()
        );
    }
}

async fn wait_audio(sub: &mut Client, publisher: &str) {
    let publisher = publisher.to_string();
    sub.wait_event("audio", MEDIA_TIMEOUT, move |e| {
        e["stream_id"] == publisher.as_str() && e["samples"].as_u64().unwrap_or(0) > 0
    })
    .await
    .expect("audio samples from the publisher");
}

async fn finish(c: &mut Client) {
    let status = c
        .wait_exit(Duration::from_secs(60))
        .await
        .expect("client exits");
    assert!(
        status.success(),
        "{} exited with {status}\n{}",
        c.name(),
        c.describe()
    );
}

async fn publisher_to_subscriber(
    test: &str,
    pub_kind: ClientKind,
    sub_kind: ClientKind,
    codec: &str,
) {
    let node = node(test).await;
    let url = node.signaling_url();
    let cycle = ["red", "green", "blue", "yellow"];
    let mut sub = Client::start(
        sub_kind,
        "subscriber",
        &ClientOptions::new(&url, test, "recvonly").duration(Duration::from_secs(45)),
    )
    .expect("start subscriber");
    sub.wait_event("connected", CONNECT_TIMEOUT, |_| true)
        .await
        .expect("subscriber connected");
    let mut publisher = Client::start(
        pub_kind,
        "publisher",
        &ClientOptions::new(&url, test, "sendonly")
            .video_codec(codec)
            .colours(&cycle)
            .duration(Duration::from_secs(30)),
    )
    .expect("start publisher");
    let pub_id = connection_id(&mut publisher).await;
    publisher
        .wait_event("connected", CONNECT_TIMEOUT, |_| true)
        .await
        .expect("publisher connected");
    wait_colour_steps(&mut sub, &pub_id, &cycle, 5).await;
    wait_audio(&mut sub, &pub_id).await;
    // The subscriber learns of the publisher through notify as well.
    sub.wait_event("notify", CONNECT_TIMEOUT, |e| {
        e["event_type"] == "connection.created" && e["message"]["connection_id"] == pub_id.as_str()
    })
    .await
    .expect("connection.created for the publisher");
    finish(&mut publisher).await;
    sub.wait_event("notify", CONNECT_TIMEOUT, |e| {
        e["event_type"] == "connection.destroyed"
            && e["message"]["connection_id"] == pub_id.as_str()
    })
    .await
    .expect("connection.destroyed for the publisher");
    sub.kill().await;
}

#[tokio::test]
async fn python_vp8_publisher_to_python_subscriber() {
    publisher_to_subscriber("py_vp8", ClientKind::Python, ClientKind::Python, "VP8").await;
}

#[tokio::test]
async fn python_vp9_publisher_to_python_subscriber() {
    publisher_to_subscriber("py_vp9", ClientKind::Python, ClientKind::Python, "VP9").await;
}

#[tokio::test]
async fn python_av1_publisher_to_python_subscriber() {
    publisher_to_subscriber("py_av1", ClientKind::Python, ClientKind::Python, "AV1").await;
}

#[tokio::test]
async fn js_vp8_publisher_to_python_subscriber() {
    publisher_to_subscriber("js_to_py", ClientKind::Js, ClientKind::Python, "VP8").await;
}

#[tokio::test]
async fn python_vp8_publisher_to_js_subscriber() {
    publisher_to_subscriber("py_to_js", ClientKind::Python, ClientKind::Js, "VP8").await;
}

/// H264 only in the browser: the sora-sdk wheel has no H264 codec.
#[tokio::test]
async fn js_h264_publisher_to_js_subscriber() {
    publisher_to_subscriber("js_h264", ClientKind::Js, ClientKind::Js, "H264").await;
}

/// Three sendrecv clients each decode the other two; when one leaves, the
/// others get connection.destroyed and a re-offer.
#[tokio::test]
async fn three_sendrecv_clients_then_one_leaves() {
    let test = "three_party";
    let node = node(test).await;
    let url = node.signaling_url();
    let palettes: [[&str; 2]; 3] = [["red", "green"], ["blue", "yellow"], ["magenta", "cyan"]];
    let durations = [60, 60, 25];
    let mut clients = Vec::new();
    for (i, (palette, secs)) in palettes.iter().zip(durations).enumerate() {
        let c = Client::start(
            ClientKind::Python,
            &format!("peer{i}"),
            &ClientOptions::new(&url, test, "sendrecv")
                .video_codec("VP8")
                .colours(palette)
                .duration(Duration::from_secs(secs)),
        )
        .expect("start sendrecv client");
        clients.push(c);
    }
    let mut ids = Vec::new();
    for c in clients.iter_mut() {
        ids.push(connection_id(c).await);
    }
    for (i, client) in clients.iter_mut().enumerate() {
        for (j, id) in ids.iter().enumerate() {
            if i != j {
                wait_colour_steps(client, id, &palettes[j], 2).await;
            }
        }
    }
    // peer2 leaves when its duration ends.
    let leaver = ids[2].clone();
    finish(&mut clients[2]).await;
    for c in clients.iter_mut().take(2) {
        let destroyed = c
            .wait_event("notify", CONNECT_TIMEOUT, |e| {
                e["event_type"] == "connection.destroyed"
                    && e["message"]["connection_id"] == leaver.as_str()
            })
            .await
            .expect("connection.destroyed for the leaver");
        let t = destroyed["t"].as_f64().unwrap_or(0.0);
        c.wait_event("reoffer", CONNECT_TIMEOUT, |e| {
            e["t"].as_f64().unwrap_or(0.0) >= t - 2.0
        })
        .await
        .expect("a re-offer after the leave");
        c.wait_event("signaling", CONNECT_TIMEOUT, |e| {
            e["direction"] == "sent" && e["type"] == "re-answer"
        })
        .await
        .expect("the client answered the re-offer");
    }
    // The two left still see each other.
    for (i, j) in [(0usize, 1usize), (1, 0)] {
        let seen_before = colour_changes(&clients[i].events(), Some(&ids[j])).len();
        let id = ids[j].clone();
        clients[i]
            .wait_events("more frames after the leave", MEDIA_TIMEOUT, |evs| {
                (colour_changes(evs, Some(&id)).len() >= seen_before + 2).then_some(())
            })
            .await
            .expect("media keeps flowing after the leave");
    }
}

fn connection_ids_in(list: &Value) -> Vec<String> {
    list.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|c| c["connection_id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// DisconnectConnection ends the client with 1000 "DISCONNECTED-API", and
/// ListConnections follows joins and leaves.
#[tokio::test]
async fn disconnect_connection_api_and_list_connections() {
    let test = "disconnect_api";
    let node = node(test).await;
    let url = node.signaling_url();
    let mut publisher = Client::start(
        ClientKind::Python,
        "publisher",
        &ClientOptions::new(&url, test, "sendonly")
            .video_codec("VP8")
            .duration(Duration::from_secs(40)),
    )
    .expect("start publisher");
    let mut sub = Client::start(
        ClientKind::Python,
        "subscriber",
        &ClientOptions::new(&url, test, "recvonly").duration(Duration::from_secs(40)),
    )
    .expect("start subscriber");
    let pub_id = connection_id(&mut publisher).await;
    let sub_id = connection_id(&mut sub).await;
    for c in [&mut publisher, &mut sub] {
        c.wait_event("connected", CONNECT_TIMEOUT, |_| true)
            .await
            .expect("connected");
    }
    let listed = tests::wait_until_async("both connections listed", CONNECT_TIMEOUT, || async {
        let list = node
            .api_ok("Sora_20201013.ListConnections", Value::Null)
            .await
            .ok()?;
        let ids = connection_ids_in(&list);
        (ids.contains(&pub_id) && ids.contains(&sub_id)).then_some(list)
    })
    .await
    .expect("ListConnections shows both");
    for c in listed.as_array().unwrap() {
        assert_eq!(c["channel_id"], test, "{c}");
    }

    let (status, body) = node
        .api(
            "Sora_20151104.DisconnectConnection",
            serde_json::json!({"channel_id": test, "connection_id": sub_id}),
        )
        .await
        .expect("DisconnectConnection answered");
    assert_eq!(status, 200, "{body}");
    let close = sub
        .wait_event("ws_close", CONNECT_TIMEOUT, |_| true)
        .await
        .expect("the subscriber is closed");
    assert_eq!(close["code"], 1000, "{close}");
    assert_eq!(close["reason"], "DISCONNECTED-API", "{close}");
    sub.wait_event("done", CONNECT_TIMEOUT, |e| e["reason"] == "server")
        .await
        .expect("the subscriber ends");

    tests::wait_until_async("the subscriber unlisted", CONNECT_TIMEOUT, || async {
        let list = node
            .api_ok("Sora_20201013.ListConnections", Value::Null)
            .await
            .ok()?;
        let ids = connection_ids_in(&list);
        (ids == vec![pub_id.clone()]).then_some(())
    })
    .await
    .expect("only the publisher is left");
    publisher
        .wait_event("notify", CONNECT_TIMEOUT, |e| {
            e["event_type"] == "connection.destroyed"
                && e["message"]["connection_id"] == sub_id.as_str()
        })
        .await
        .expect("the publisher hears of it");

    // Unknown connection: an error, not a crash.
    let (status, body) = node
        .api(
            "Sora_20151104.DisconnectConnection",
            serde_json::json!({"channel_id": test, "connection_id": sub_id}),
        )
        .await
        .expect("answered");
    assert!((400..500).contains(&status), "{status} {body}");

    finish(&mut publisher).await;
    tests::wait_until_async("no connections left", CONNECT_TIMEOUT, || async {
        let list = node
            .api_ok("Sora_20201013.ListConnections", Value::Null)
            .await
            .ok()?;
        connection_ids_in(&list).is_empty().then_some(())
    })
    .await
    .expect("ListConnections empty after the publisher left");
}

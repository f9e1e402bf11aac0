//! The client's signaling against a scripted WebSocket server: redirect,
//! offer → answer, re-offer → re-answer, ping → pong, notify, close code.

use std::net::SocketAddr;
use std::time::Duration;

use controlplane::sdp::{
    build_offer, parse_answer, Codec, Direction, MediaSection, OfferParams, SsrcInfo,
};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use shared::MediaKind;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tools::client::{Client, ClientOptions, Role};

fn offer_sdp(version: u64, forwarded: Option<u32>) -> String {
    let mut sections = vec![MediaSection {
        mid: "0".into(),
        kind: MediaKind::Video,
        direction: Direction::RecvOnly,
        codec: Codec::Vp9,
        ssrc: None,
    }];
    if let Some(ssrc) = forwarded {
        sections.push(MediaSection {
            mid: "1".into(),
            kind: MediaKind::Video,
            direction: Direction::SendOnly,
            codec: Codec::Vp9,
            ssrc: Some(SsrcInfo {
                ssrc,
                cname: "PUB".into(),
                stream_id: "PUB".into(),
                track_id: "video-PUB".into(),
            }),
        });
    }
    build_offer(&OfferParams {
        session_id: 7,
        version,
        ice_ufrag: "srvU".into(),
        ice_pwd: "server-password-0123456789".into(),
        fingerprint_sha256: "AA:BB".into(),
        // Nothing listens there: ICE never completes, which this test does not need.
        candidate_ip: "127.0.0.64".parse().unwrap(),
        candidate_port: 9,
        sections,
    })
}

async fn text(ws: &mut tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>) -> Value {
    loop {
        match ws.next().await.expect("socket open").expect("frame") {
            Message::Text(t) => return serde_json::from_str(&t).expect("JSON"),
            Message::Close(_) => panic!("client closed"),
            _ => {}
        }
    }
}

#[tokio::test]
async fn redirect_offer_reoffer_ping_close() {
    let first = TcpListener::bind("127.0.0.64:0").await.unwrap();
    let first_url = format!("ws://{}/signaling", first.local_addr().unwrap());
    let second = TcpListener::bind("127.0.0.64:0").await.unwrap();
    let second_url = format!("ws://{}/signaling", second.local_addr().unwrap());
    let (seen_tx, mut seen) = mpsc::unbounded_channel::<Value>();

    // The first node redirects.
    let loc = second_url.clone();
    let seen1 = seen_tx.clone();
    tokio::spawn(async move {
        let (tcp, _) = first.accept().await.unwrap();
        let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
        seen1.send(text(&mut ws).await).unwrap();
        ws.send(Message::Text(
            json!({"type": "redirect", "location": loc})
                .to_string()
                .into(),
        ))
        .await
        .unwrap();
        let _ = ws.close(None).await;
    });
    // The second offers, re-offers, pings and closes.
    tokio::spawn(async move {
        let (tcp, _) = second.accept().await.unwrap();
        let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
        seen_tx.send(text(&mut ws).await).unwrap();
        let offer = json!({"type": "offer", "sdp": offer_sdp(1, None), "connection_id": "CONN", "mid": {"video": "0"},
            "config": {"iceServers": []}});
        ws.send(Message::Text(offer.to_string().into()))
            .await
            .unwrap();
        seen_tx.send(text(&mut ws).await).unwrap(); // answer
        ws.send(Message::Text(
            json!({"type": "notify", "event_type": "connection.created"})
                .to_string()
                .into(),
        ))
        .await
        .unwrap();
        ws.send(Message::Text(
            json!({"type": "re-offer", "sdp": offer_sdp(2, Some(99))})
                .to_string()
                .into(),
        ))
        .await
        .unwrap();
        seen_tx.send(text(&mut ws).await).unwrap(); // re-answer
        ws.send(Message::Text(
            json!({"type": "ping", "stats": false}).to_string().into(),
        ))
        .await
        .unwrap();
        seen_tx.send(text(&mut ws).await).unwrap(); // pong
        ws.send(Message::Close(Some(CloseFrame {
            code: CloseCode::Library(4410),
            reason: "ICE-CONSENT-EXPIRED".into(),
        })))
        .await
        .unwrap();
        // Drain until the client's close reply.
        while let Some(Ok(_)) = ws.next().await {}
    });

    let mut o = ClientOptions::new(first_url, Role::SendOnly, "ch");
    o.video_codec = Some("VP9".into());
    let client = Client::connect(o)
        .await
        .expect("connects through the redirect");

    let c1 = seen.recv().await.unwrap();
    assert_eq!(
        (
            c1["type"].as_str(),
            c1["role"].as_str(),
            c1["channel_id"].as_str()
        ),
        (Some("connect"), Some("sendonly"), Some("ch"))
    );
    assert_eq!(c1["video"]["codec_type"], "VP9");
    assert!(c1.get("redirect").is_none());
    let c2 = seen.recv().await.unwrap();
    assert_eq!(c2["redirect"], true);
    let st = client.state();
    assert_eq!(st.redirects, std::slice::from_ref(&second_url));
    assert_eq!(st.url, second_url);
    assert_eq!(st.connection_id.as_deref(), Some("CONN"));
    assert_eq!(
        st.server_candidate,
        Some("127.0.0.64:9".parse::<SocketAddr>().unwrap())
    );

    let answer = seen.recv().await.unwrap();
    assert_eq!(answer["type"], "answer");
    let a = parse_answer(answer["sdp"].as_str().unwrap())
        .expect("server-side parser accepts the answer");
    assert_eq!(a.sections.len(), 1);
    assert_eq!(
        a.sections[0].direction,
        Direction::RecvOnly,
        "client sends on its upstream m-line"
    );
    let my_ssrc = st.send_tracks[0].ssrc;
    assert_eq!(a.sections[0].ssrcs, [my_ssrc]);
    assert_eq!(a.sections[0].payload_types, [Codec::Vp9.payload_type()]);

    let re = seen.recv().await.unwrap();
    assert_eq!(re["type"], "re-answer");
    let a = parse_answer(re["sdp"].as_str().unwrap()).unwrap();
    assert_eq!(a.sections.len(), 2);
    assert_eq!(
        a.sections[0].ssrcs,
        [my_ssrc],
        "upstream SSRC kept across re-answers"
    );
    assert_eq!(
        a.sections[1].direction,
        Direction::SendOnly,
        "client receives the forwarded m-line"
    );
    let pong = seen.recv().await.unwrap();
    assert_eq!(pong["type"], "pong");

    let st = client
        .wait_for("close", Duration::from_secs(5), |_, s| s.closed.is_some())
        .await
        .expect("close recorded");
    let closed = st.closed.clone().unwrap();
    assert_eq!(
        (closed.code, closed.reason.as_str()),
        (4410, "ICE-CONSENT-EXPIRED")
    );
    assert_eq!(st.reoffers, 1);
    assert_eq!(st.pings, 1);
    assert_eq!(st.notifications_of("connection.created").len(), 1);
    let tracks = st.remote_tracks();
    assert_eq!(tracks.len(), 1);
    assert_eq!((tracks[0].ssrc, tracks[0].stream_id.as_str()), (99, "PUB"));
}

#[tokio::test]
async fn close_before_offer_is_an_error() {
    let l = TcpListener::bind("127.0.0.64:0").await.unwrap();
    let url = format!("ws://{}/signaling", l.local_addr().unwrap());
    tokio::spawn(async move {
        let (tcp, _) = l.accept().await.unwrap();
        let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
        let _ = text(&mut ws).await;
        ws.send(Message::Close(Some(CloseFrame {
            code: CloseCode::Library(4400),
            reason: "INVALID-ROLE: x".into(),
        })))
        .await
        .unwrap();
        while let Some(Ok(_)) = ws.next().await {}
    });
    let err = match Client::connect(ClientOptions::new(url, Role::RecvOnly, "ch")).await {
        Ok(_) => panic!("connect should fail"),
        Err(e) => e,
    };
    let closed = err
        .downcast_ref::<tools::client::Closed>()
        .expect("a Closed error");
    assert_eq!(
        (closed.0.code, closed.0.reason.as_str()),
        (4400, "INVALID-ROLE: x")
    );
}

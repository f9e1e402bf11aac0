//! WebSocket signaling at `/signaling`, one [`Session`] per client.
//!
//! ```text
//! C→S connect ─► admit (role, channel, codec, license, cluster owner)
//!               ─► AddConnection / AddPublisherTrack down the ring, DTLS task
//! S→C offer   ◄─ ICE-lite candidate, fingerprint, own upstream m-lines + one
//!                pair per established publisher
//! C→S answer  ─► peer fingerprint for the DTLS check
//!     (ICE + DTLS in the data plane / dtls.rs) ─► SetSrtpKeys, Subscribe
//! S→C notify connection.created (to all), re-offer to the others
//! S→C ping ◄► C→S pong; C→S disconnect ─► close 1000 TYPE-DISCONNECT
//! ```
//! Every way out of a session closes the socket with a code and a reason; the
//! SDKs wait forever for an offer otherwise.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use serde_json::{json, Value};
use shared::{Command, ConnId, MediaKind};
use tokio::sync::{mpsc, oneshot, watch};

use crate::channels::{Member, PublishedTrack, Role, SessionMsg};
use crate::dtls::{self, RingConn, SrtpKeys};
use crate::ids;
use crate::media::{CommandSender, ConnEvent};
use crate::negotiation::{Action, Negotiation, PublisherView};
use crate::node::Node;
use crate::sdp::{self, Codec, Direction, OfferParams};
use crate::webhook::AuthDecision;

/// Close codes this server uses (documented in docs/SIGNALING.md).
pub mod close {
    /// Normal end: `TYPE-DISCONNECT`, `DISCONNECTED-API`, `REDIRECT`.
    pub const NORMAL: u16 = 1000;
    /// The node is shutting down.
    pub const GOING_AWAY: u16 = 1001;
    /// The client sent something invalid; the reason names it.
    pub const BAD_MESSAGE: u16 = 4400;
    /// Refused: license limit or authentication.
    pub const FORBIDDEN: u16 = 4403;
    /// The client did not send what was expected in time (connect, answer, pong).
    pub const TIMEOUT: u16 = 4408;
    /// The peer stopped answering ICE consent checks.
    pub const ICE_FAILED: u16 = 4410;
    /// DTLS handshake failed or another server-side failure.
    pub const INTERNAL: u16 = 4500;
    /// The node cannot serve new connections now (no cluster majority, stopping).
    pub const UNAVAILABLE: u16 = 4503;
}

/// How long a client has to send `connect` after opening the socket.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long from the offer to a finished DTLS handshake.
const ESTABLISH_TIMEOUT: Duration = Duration::from_secs(30);
const MAX_CHANNEL_ID_BYTES: usize = 255;

/// Why a session ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closing {
    pub code: u16,
    pub reason: String,
}

impl Closing {
    pub fn new(code: u16, reason: impl Into<String>) -> Self {
        Closing {
            code,
            reason: reason.into(),
        }
    }
    fn bad(reason: impl Into<String>) -> Self {
        Self::new(close::BAD_MESSAGE, reason)
    }
}

/// A validated `connect` message.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectRequest {
    pub role: Role,
    pub channel_id: String,
    pub client_id: Option<String>,
    pub bundle_id: Option<String>,
    pub audio: bool,
    pub video: Option<Codec>,
    pub metadata: Option<Value>,
    pub signaling_notify_metadata: Option<Value>,
    pub redirect: bool,
    /// `sora_client`, `environment`, `libwebrtc`: passed to the auth webhook.
    pub client_info: serde_json::Map<String, Value>,
}

/// Parses and validates a `connect` message. The error is the close to send.
pub fn parse_connect(text: &str, default_video: Codec) -> Result<ConnectRequest, Closing> {
    let v: Value =
        serde_json::from_str(text).map_err(|e| Closing::bad(format!("INVALID-JSON: {e}")))?;
    let obj = v
        .as_object()
        .ok_or_else(|| Closing::bad("INVALID-MESSAGE: not a JSON object"))?;
    match obj.get("type").and_then(Value::as_str) {
        Some("connect") => {}
        Some(other) => {
            return Err(Closing::bad(format!(
                "UNEXPECTED-TYPE: expected connect, got {other}"
            )))
        }
        None => {
            return Err(Closing::bad(
                "MISSING-TYPE: the message has no string \"type\"",
            ))
        }
    }
    let role_s = obj
        .get("role")
        .and_then(Value::as_str)
        .ok_or_else(|| Closing::bad("INVALID-ROLE: \"role\" is missing or not a string"))?;
    let role = Role::parse(role_s).ok_or_else(|| {
        Closing::bad(format!(
            "INVALID-ROLE: \"{role_s}\" is not sendrecv, sendonly or recvonly"
        ))
    })?;
    let channel_id = obj
        .get("channel_id")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            Closing::bad("INVALID-CHANNEL-ID: \"channel_id\" is missing or not a string")
        })?;
    if channel_id.is_empty() {
        return Err(Closing::bad("INVALID-CHANNEL-ID: \"channel_id\" is empty"));
    }
    if channel_id.len() > MAX_CHANNEL_ID_BYTES {
        return Err(Closing::bad(format!(
            "INVALID-CHANNEL-ID: \"channel_id\" is {} bytes, the limit is {MAX_CHANNEL_ID_BYTES}",
            channel_id.len()
        )));
    }
    let opt_str = |k: &str| -> Result<Option<String>, Closing> {
        match obj.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.len() <= MAX_CHANNEL_ID_BYTES => Ok(Some(s.clone())),
            Some(Value::String(_)) => Err(Closing::bad(format!(
                "INVALID-{}: too long",
                k.to_uppercase()
            ))),
            Some(_) => Err(Closing::bad(format!(
                "INVALID-{}: not a string",
                k.to_uppercase()
            ))),
        }
    };
    let client_id = opt_str("client_id")?;
    let bundle_id = opt_str("bundle_id")?;

    let audio = match obj.get("audio") {
        None | Some(Value::Null) | Some(Value::Bool(true)) => true,
        Some(Value::Bool(false)) => false,
        Some(Value::Object(a)) => match a.get("codec_type").and_then(Value::as_str) {
            None | Some("OPUS") => true,
            Some(other) => {
                return Err(Closing::bad(format!(
                    "UNSUPPORTED-AUDIO-CODEC: {other} (only OPUS)"
                )))
            }
        },
        Some(_) => {
            return Err(Closing::bad(
                "INVALID-AUDIO: \"audio\" must be a boolean or an object",
            ))
        }
    };
    let video = match obj.get("video") {
        None | Some(Value::Null) | Some(Value::Bool(true)) => Some(default_video),
        Some(Value::Bool(false)) => None,
        Some(Value::Object(o)) => match o.get("codec_type") {
            None | Some(Value::Null) => Some(default_video),
            Some(Value::String(s)) => Some(Codec::from_codec_type(s).ok_or_else(|| {
                Closing::bad(format!(
                    "UNSUPPORTED-VIDEO-CODEC: {s} (VP8, VP9, H264 or AV1)"
                ))
            })?),
            Some(_) => {
                return Err(Closing::bad(
                    "INVALID-VIDEO: \"codec_type\" must be a string",
                ))
            }
        },
        Some(_) => {
            return Err(Closing::bad(
                "INVALID-VIDEO: \"video\" must be a boolean or an object",
            ))
        }
    };
    if role.sends() && !audio && video.is_none() {
        return Err(Closing::bad(
            "INVALID-MEDIA: a sending role needs audio or video",
        ));
    }
    if matches!(obj.get("simulcast"), Some(Value::Bool(true))) {
        return Err(Closing::bad(
            "UNSUPPORTED-SIMULCAST: simulcast is not supported",
        ));
    }
    if matches!(obj.get("spotlight"), Some(Value::Bool(true))) {
        return Err(Closing::bad(
            "UNSUPPORTED-SPOTLIGHT: spotlight is not supported",
        ));
    }
    Ok(ConnectRequest {
        role,
        channel_id: channel_id.to_owned(),
        client_id,
        bundle_id,
        audio,
        video,
        metadata: obj.get("metadata").filter(|v| !v.is_null()).cloned(),
        signaling_notify_metadata: obj
            .get("signaling_notify_metadata")
            .filter(|v| !v.is_null())
            .cloned(),
        redirect: matches!(obj.get("redirect"), Some(Value::Bool(true))),
        client_info: ["sora_client", "environment", "libwebrtc"]
            .iter()
            .filter_map(|k| obj.get(*k).map(|v| ((*k).to_owned(), v.clone())))
            .collect(),
    })
}

/// Serves one signaling WebSocket until it closes.
pub async fn serve(node: Arc<Node>, mut ws: WebSocket) {
    node.counters.signaling_opened();
    let closing = match first_message(&mut ws).await {
        Err(c) => c,
        Ok(text) => match parse_connect(&text, node.default_video_codec()) {
            Err(c) => c,
            Ok(req) => match node.admit(&req).await {
                Err(c) => c,
                Ok(Admission::Redirect(location)) => {
                    let msg = json!({"type": "redirect", "location": location});
                    let _ = ws.send(Message::Text(msg.to_string().into())).await;
                    Closing::new(close::NORMAL, "REDIRECT")
                }
                Ok(Admission::Here) => {
                    let connection_id = ids::new_connection_id();
                    match node
                        .webhooks
                        .authorize(auth_request(&req, &connection_id))
                        .await
                    {
                        AuthDecision::Denied(reason) => {
                            Closing::new(close::FORBIDDEN, format!("AUTH-WEBHOOK-DENIED: {reason}"))
                        }
                        AuthDecision::Allowed {
                            metadata,
                            client_id,
                            bundle_id,
                        } => {
                            let mut req = req;
                            if client_id.is_some() {
                                req.client_id = client_id;
                            }
                            if bundle_id.is_some() {
                                req.bundle_id = bundle_id;
                            }
                            let mut session =
                                Session::open(node.clone(), req, connection_id, metadata);
                            let c = session.run(&mut ws).await;
                            session.finish().await;
                            c
                        }
                    }
                }
            },
        },
    };
    if closing.code != close::NORMAL {
        node.counters.signaling_failed();
        tracing::debug!(code = closing.code, reason = %closing.reason, "signaling closed");
    }
    send_close(&mut ws, &closing).await;
}

/// The auth webhook's request for a `connect`.
fn auth_request(req: &ConnectRequest, connection_id: &str) -> Value {
    let mut v = json!({
        "channel_id": req.channel_id,
        "connection_id": connection_id,
        "client_id": req.client_id.clone().unwrap_or_else(|| connection_id.to_owned()),
        "bundle_id": req.bundle_id.clone().unwrap_or_else(|| connection_id.to_owned()),
        "role": req.role.as_str(),
        "audio": req.audio,
        "video": req.video.is_some(),
        "multistream": true,
        "simulcast": false,
        "spotlight": false,
        "redirect": req.redirect,
    });
    if let Some(m) = &req.metadata {
        v["metadata"] = m.clone();
    }
    if let Some(c) = req.video {
        v["video"] = json!({"codec_type": c.codec_type()});
    }
    for (k, val) in &req.client_info {
        v[k] = val.clone();
    }
    v
}

/// What `Node::admit` decided.
pub enum Admission {
    Here,
    Redirect(String),
}

async fn first_message(ws: &mut WebSocket) -> Result<String, Closing> {
    let deadline = tokio::time::sleep(CONNECT_TIMEOUT);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = &mut deadline => return Err(Closing::new(close::TIMEOUT, "CONNECT-TIMEOUT: no connect message")),
            m = ws.recv() => match m {
                Some(Ok(Message::Text(t))) => return Ok(t.to_string()),
                Some(Ok(Message::Binary(_))) => return Err(Closing::bad("INVALID-MESSAGE: binary frame before connect")),
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                    return Err(Closing::new(close::NORMAL, "CLIENT-CLOSED"))
                }
                Some(Ok(_)) => continue,
            }
        }
    }
}

async fn send_close(ws: &mut WebSocket, c: &Closing) {
    // A close reason is limited to 123 bytes.
    let mut reason = c.reason.clone();
    while reason.len() > 123 {
        reason.pop();
    }
    let frame = CloseFrame {
        code: c.code,
        reason: reason.into(),
    };
    let _ = ws.send(Message::Close(Some(frame))).await;
}

/// One connection's sections and subscriptions, and the state of its offer/answer.
struct Session {
    node: Arc<Node>,
    req: ConnectRequest,
    conn: ConnId,
    connection_id: String,
    client_id: String,
    bundle_id: String,
    cmd: CommandSender,
    candidate: (std::net::IpAddr, u16),
    ice_ufrag: String,
    ice_pwd: String,
    sdp_version: u64,
    session_id: u64,
    negotiation: Negotiation,
    established: bool,
    fingerprint_tx: watch::Sender<Option<String>>,
    inbox: mpsc::UnboundedReceiver<SessionMsg>,
    events: mpsc::UnboundedReceiver<ConnEvent>,
    dtls_result: Option<oneshot::Receiver<Result<SrtpKeys, String>>>,
    dtls_conn: Arc<std::sync::Mutex<Option<Arc<webrtc_dtls::conn::DTLSConn>>>>,
    last_pong: Instant,
    opened: Instant,
    /// `metadata` from the auth webhook, given to the client in its offer.
    auth_metadata: Option<Value>,
    /// The channel's `session_id`.
    session_id_str: String,
}

impl Session {
    /// Registers the connection in its channel and the data plane.
    fn open(
        node: Arc<Node>,
        req: ConnectRequest,
        connection_id: String,
        auth_metadata: Option<Value>,
    ) -> Session {
        let conn = node.new_conn_id();
        let client_id = req
            .client_id
            .clone()
            .unwrap_or_else(|| connection_id.clone());
        let bundle_id = req
            .bundle_id
            .clone()
            .unwrap_or_else(|| connection_id.clone());
        let (tx, inbox) = mpsc::unbounded_channel();
        let track = |codec: Codec, kind: &str| PublishedTrack {
            codec,
            out_ssrc: ids::new_ssrc(),
            track_id: format!("{kind}-{}", &connection_id[..8]),
        };
        let (audio, video) = if req.role.sends() {
            (
                req.audio.then(|| track(Codec::Opus, "audio")),
                req.video.map(|c| track(c, "video")),
            )
        } else {
            (None, None)
        };
        let member = Member {
            conn,
            connection_id: connection_id.clone(),
            client_id: client_id.clone(),
            bundle_id: bundle_id.clone(),
            role: req.role,
            created_at: SystemTime::now(),
            established: false,
            audio: audio.clone(),
            video: video.clone(),
            metadata: req.signaling_notify_metadata.clone(),
            tx,
        };
        let (channel_key, core) = node.join_channel(&req.channel_id, member);
        let session_id_str = node
            .registry()
            .channels
            .get(&req.channel_id)
            .map(|c| c.session_id.clone())
            .unwrap_or_default();
        let cmd = node.media.sender(core);
        let ice_ufrag = ids::ice_token(16);
        let ice_pwd = ids::ice_token(32);
        cmd.send(Command::AddConnection {
            conn,
            channel: channel_key,
            local_ufrag: ice_ufrag.clone(),
            local_pwd: ice_pwd.clone(),
            send: req.role.sends(),
            recv: req.role.receives(),
        });
        for t in audio.iter().chain(video.iter()) {
            cmd.send(Command::AddPublisherTrack {
                conn,
                kind: t.codec.kind(),
                payload_type: t.codec.payload_type(),
                clock_rate: t.codec.clock_rate(),
                out_ssrc: t.out_ssrc,
            });
        }

        // DTLS records and ICE events for this connection, then the handshake.
        let (dtls_tx, dtls_rx) = mpsc::channel(64);
        let (ev_tx, events) = mpsc::unbounded_channel();
        node.media.route(conn, dtls_tx, ev_tx);
        let (fingerprint_tx, fingerprint_rx) = watch::channel(None);
        let (result_tx, result_rx) = oneshot::channel();
        let dtls_conn = Arc::new(std::sync::Mutex::new(None));
        {
            let identity = node.identity.clone();
            let transport = RingConn::new(conn, dtls_rx, cmd.clone());
            let keep = dtls_conn.clone();
            tokio::spawn(async move {
                let r =
                    dtls::handshake(&identity, transport, fingerprint_rx, ESTABLISH_TIMEOUT).await;
                let r = match r {
                    Ok((c, keys)) => {
                        *keep.lock().expect("dtls slot lock poisoned") = Some(c);
                        Ok(keys)
                    }
                    Err(e) => Err(e.to_string()),
                };
                let _ = result_tx.send(r);
            });
        }

        let upstream: Vec<Codec> = audio.iter().chain(video.iter()).map(|t| t.codec).collect();
        let negotiation = Negotiation::new(&upstream, req.role.receives());
        let candidate = node.candidate(core);
        Session {
            node,
            req,
            conn,
            connection_id,
            client_id,
            bundle_id,
            cmd,
            candidate,
            ice_ufrag,
            ice_pwd,
            sdp_version: 1,
            session_id: rand::random::<u64>() >> 2,
            negotiation,
            established: false,
            fingerprint_tx,
            inbox,
            events,
            dtls_result: Some(result_rx),
            dtls_conn,
            last_pong: Instant::now(),
            opened: Instant::now(),
            auth_metadata,
            session_id_str,
        }
    }

    async fn run(&mut self, ws: &mut WebSocket) -> Closing {
        // The initial offer: own upstream sections, then every established publisher.
        let publishers = self.publishers();
        self.negotiation
            .initial_offer(&publishers, self.node.default_video_codec());
        let offer = self.offer_message();
        if let Err(c) = send_json(ws, &offer).await {
            return c;
        }
        let mut ping = tokio::time::interval(self.node.config.ping_interval);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping.tick().await;
        let mut shutdown = self.node.shutdown_signal();
        let establish_deadline = tokio::time::sleep(ESTABLISH_TIMEOUT);
        tokio::pin!(establish_deadline);

        loop {
            let dtls_pending = self.dtls_result.is_some();
            tokio::select! {
                m = ws.recv() => match m {
                    Some(Ok(Message::Text(t))) => {
                        if let Err(c) = self.handle_text(ws, &t).await {
                            return c;
                        }
                    }
                    Some(Ok(Message::Binary(_))) => return Closing::bad("INVALID-MESSAGE: binary frames are not signaling messages"),
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return Closing::new(close::NORMAL, "WEBSOCKET-CLOSED"),
                    Some(Ok(_)) => {}
                },
                Some(msg) = self.inbox.recv() => match msg {
                    SessionMsg::PublishersChanged => {
                        if let Err(c) = self.reconcile(ws).await {
                            return c;
                        }
                    }
                    SessionMsg::Send(v) => {
                        if let Err(c) = send_json(ws, &v).await {
                            return c;
                        }
                    }
                    SessionMsg::Close { code, reason } => return Closing::new(code, reason),
                },
                Some(ev) = self.events.recv() => match ev {
                    ConnEvent::IceSelected(peer) => tracing::debug!(conn = self.conn.0, %peer, "ICE selected"),
                    ConnEvent::ConsentExpired => return Closing::new(close::ICE_FAILED, "ICE-CONSENT-EXPIRED: the peer stopped answering"),
                },
                r = async { self.dtls_result.as_mut().expect("polled only while pending").await }, if dtls_pending => {
                    self.dtls_result = None;
                    match r {
                        Ok(Ok(keys)) => {
                            if let Err(c) = self.established(ws, keys).await {
                                return c;
                            }
                        }
                        Ok(Err(e)) => return Closing::new(close::INTERNAL, format!("DTLS-FAILED: {e}")),
                        Err(_) => return Closing::new(close::INTERNAL, "DTLS-FAILED: handshake task ended"),
                    }
                },
                _ = &mut establish_deadline, if !self.established => {
                    return Closing::new(close::TIMEOUT, "ESTABLISH-TIMEOUT: ICE/DTLS did not complete");
                }
                _ = ping.tick(), if self.established => {
                    if self.last_pong.elapsed() > self.node.config.ping_timeout {
                        return Closing::new(close::TIMEOUT, "PONG-TIMEOUT: no pong received");
                    }
                    if let Err(c) = send_json(ws, &json!({"type": "ping", "stats": false})).await {
                        return c;
                    }
                }
                _ = shutdown.changed() => return Closing::new(close::GOING_AWAY, "SHUTDOWN: the node is stopping"),
            }
        }
    }

    async fn handle_text(&mut self, ws: &mut WebSocket, text: &str) -> Result<(), Closing> {
        let v: Value =
            serde_json::from_str(text).map_err(|e| Closing::bad(format!("INVALID-JSON: {e}")))?;
        let ty = v
            .get("type")
            .and_then(Value::as_str)
            .ok_or_else(|| Closing::bad("MISSING-TYPE: the message has no string \"type\""))?;
        match ty {
            "answer" | "re-answer" | "update" => {
                let sdp_text = v.get("sdp").and_then(Value::as_str).ok_or_else(|| {
                    Closing::bad(format!("INVALID-SDP: \"{ty}\" has no string \"sdp\""))
                })?;
                let answer = sdp::parse_answer(sdp_text)
                    .map_err(|e| Closing::bad(format!("INVALID-SDP: {e}")))?;
                if ty == "answer" {
                    let fp = answer
                        .fingerprint
                        .as_ref()
                        .map(|(_, value)| value.clone())
                        .ok_or_else(|| {
                            Closing::bad("INVALID-SDP: the answer has no a=fingerprint")
                        })?;
                    let _ = self.fingerprint_tx.send(Some(fp));
                }
                let publishers = self.publishers();
                let actions = self.negotiation.on_answer(&publishers);
                self.apply(ws, actions).await
            }
            "candidate" => Ok(()),
            "pong" => {
                self.last_pong = Instant::now();
                Ok(())
            }
            "stats" => Ok(()),
            "disconnect" => Err(Closing::new(close::NORMAL, "TYPE-DISCONNECT")),
            "connect" => Err(Closing::bad(
                "UNEXPECTED-TYPE: connect was already received",
            )),
            other => Err(Closing::bad(format!("UNKNOWN-TYPE: {other}"))),
        }
    }

    /// DTLS finished: install keys, subscribe to what was answered, announce.
    async fn established(&mut self, ws: &mut WebSocket, keys: SrtpKeys) -> Result<(), Closing> {
        self.cmd.send(keys.into_command(self.conn));
        self.established = true;
        self.last_pong = Instant::now();
        tracing::info!(
            conn = self.conn.0,
            connection_id = %self.connection_id,
            channel_id = %self.req.channel_id,
            ms = self.opened.elapsed().as_millis() as u64,
            "connection established"
        );
        let actions = self.negotiation.on_established();
        self.apply(ws, actions).await?;
        let notify = self.node.mark_established(self.conn, &self.req.channel_id);
        if let Some(n) = notify {
            send_json(ws, &n).await?;
        }
        Ok(())
    }

    /// The channel's established publishers other than this connection.
    fn publishers(&self) -> Vec<PublisherView> {
        if !self.req.role.receives() {
            return Vec::new();
        }
        self.node
            .publishers(self.conn, &self.req.channel_id)
            .into_iter()
            .map(|(conn, connection_id, tracks)| PublisherView {
                conn,
                connection_id,
                tracks,
            })
            .collect()
    }

    /// The channel's publishers changed: re-offer if this connection's m-lines must.
    async fn reconcile(&mut self, ws: &mut WebSocket) -> Result<(), Closing> {
        let publishers = self.publishers();
        let actions = self.negotiation.reconcile(&publishers);
        self.apply(ws, actions).await
    }

    /// Carries out what the negotiation decided.
    async fn apply(&mut self, ws: &mut WebSocket, actions: Vec<Action>) -> Result<(), Closing> {
        for a in actions {
            match a {
                Action::Subscribe(publisher) => self.cmd.send(Command::Subscribe {
                    subscriber: self.conn,
                    publisher,
                }),
                Action::Unsubscribe(publisher) => self.cmd.send(Command::Unsubscribe {
                    subscriber: self.conn,
                    publisher,
                }),
                Action::ReOffer => {
                    self.sdp_version += 1;
                    let sdp = self.build_sdp();
                    send_json(ws, &json!({"type": "re-offer", "sdp": sdp})).await?;
                }
            }
        }
        Ok(())
    }

    fn build_sdp(&self) -> String {
        sdp::build_offer(&OfferParams {
            session_id: self.session_id,
            version: self.sdp_version,
            ice_ufrag: self.ice_ufrag.clone(),
            ice_pwd: self.ice_pwd.clone(),
            fingerprint_sha256: self.node.identity.fingerprint_sha256.clone(),
            candidate_ip: self.candidate.0,
            candidate_port: self.candidate.1,
            sections: self.negotiation.sections().to_vec(),
        })
    }

    fn offer_message(&self) -> Value {
        let mut mid = serde_json::Map::new();
        for s in self
            .negotiation
            .sections()
            .iter()
            .filter(|s| s.direction == Direction::RecvOnly)
        {
            let k = if s.kind == MediaKind::Audio {
                "audio"
            } else {
                "video"
            };
            mid.insert(k.to_owned(), Value::String(s.mid.clone()));
        }
        let mut offer = json!({
            "type": "offer",
            "sdp": self.build_sdp(),
            "client_id": self.client_id,
            "bundle_id": self.bundle_id,
            "connection_id": self.connection_id,
            "session_id": self.session_id_str,
            "channel_id": self.req.channel_id,
            "multistream": true,
            "simulcast": false,
            "spotlight": false,
            "data_channel_signaling": false,
            "ignore_disconnect_websocket": false,
            "audio": self.req.audio,
            "video": self.req.video.is_some(),
            "config": {"iceServers": [], "iceTransportPolicy": "all"},
            "mid": Value::Object(mid),
            "version": env!("CARGO_PKG_VERSION"),
        });
        if let Some(m) = &self.auth_metadata {
            offer["metadata"] = m.clone();
        }
        offer
    }

    /// Leaves the channel and the data plane; tells the others.
    async fn finish(&mut self) {
        self.cmd.send(Command::RemoveConnection { conn: self.conn });
        self.node.media.unroute(self.conn);
        self.node.leave_channel(self.conn, self.established);
        let dtls = self
            .dtls_conn
            .lock()
            .expect("dtls slot lock poisoned")
            .take();
        if let Some(d) = dtls {
            let _ = d.close().await;
        }
    }
}

async fn send_json(ws: &mut WebSocket, v: &Value) -> Result<(), Closing> {
    ws.send(Message::Text(v.to_string().into()))
        .await
        .map_err(|_| Closing::new(close::NORMAL, "WEBSOCKET-CLOSED"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<ConnectRequest, Closing> {
        parse_connect(s, Codec::Vp9)
    }

    #[test]
    fn connect_defaults() {
        let r = parse(r#"{"type":"connect","role":"sendonly","channel_id":"c"}"#).unwrap();
        assert_eq!(r.role, Role::SendOnly);
        assert!(r.audio);
        assert_eq!(r.video, Some(Codec::Vp9));
        let r = parse(r#"{"type":"connect","role":"recvonly","channel_id":"c","video":{"codec_type":"AV1"},"audio":false}"#).unwrap();
        assert_eq!(r.video, Some(Codec::Av1));
        assert!(!r.audio);
    }

    #[test]
    fn connect_errors_name_the_problem() {
        let cases = [
            ("{", "INVALID-JSON"),
            ("[]", "INVALID-MESSAGE"),
            (r#"{"role":"sendonly"}"#, "MISSING-TYPE"),
            (r#"{"type":"answer"}"#, "UNEXPECTED-TYPE"),
            (
                r#"{"type":"connect","role":"upload","channel_id":"c"}"#,
                "INVALID-ROLE",
            ),
            (
                r#"{"type":"connect","role":"sendonly"}"#,
                "INVALID-CHANNEL-ID",
            ),
            (
                r#"{"type":"connect","role":"sendonly","channel_id":""}"#,
                "INVALID-CHANNEL-ID",
            ),
            (
                r#"{"type":"connect","role":"sendonly","channel_id":"c","video":{"codec_type":"H265"}}"#,
                "UNSUPPORTED-VIDEO-CODEC",
            ),
            (
                r#"{"type":"connect","role":"sendonly","channel_id":"c","audio":{"codec_type":"PCMU"}}"#,
                "UNSUPPORTED-AUDIO-CODEC",
            ),
            (
                r#"{"type":"connect","role":"sendonly","channel_id":"c","audio":false,"video":false}"#,
                "INVALID-MEDIA",
            ),
            (
                r#"{"type":"connect","role":"sendonly","channel_id":"c","video":3}"#,
                "INVALID-VIDEO",
            ),
        ];
        for (input, want) in cases {
            let e = parse(input).unwrap_err();
            assert_eq!(e.code, close::BAD_MESSAGE, "{input}");
            assert!(e.reason.starts_with(want), "{input}: {}", e.reason);
        }
        let long = format!(
            r#"{{"type":"connect","role":"sendonly","channel_id":"{}"}}"#,
            "a".repeat(256)
        );
        let e = parse(&long).unwrap_err();
        assert!(e.reason.contains("256 bytes"), "{}", e.reason);
        let ok = format!(
            r#"{{"type":"connect","role":"sendonly","channel_id":"{}"}}"#,
            "a".repeat(255)
        );
        assert!(parse(&ok).is_ok());
    }
}

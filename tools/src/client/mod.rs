//! A minimal Sora-compatible WebRTC client for tests and load generation.
//!
//! ```text
//! Client::connect ─► WS connect {role, channel_id, video, audio}
//!                    (redirect → reconnect to `location` with redirect: true)
//!                 ◄─ offer  ─► answer (sdp::build_answer)
//!   tasks:  signaling  re-offer → re-answer, ping → pong, notify recorded, close recorded
//!           udp reader demux: STUN responses, DTLS records → DtlsTransport, SRTP/SRTCP → Receiver
//!           ice        Binding requests (50 ms until answered, then every consent interval)
//!           dtls       webrtc-dtls client once ICE is up → RFC 5764 keys → SRTP contexts
//!           publisher  (start_sending) RTP with marker payloads on the upstream m-lines
//! ```
//!
//! The protocol pieces are sans-IO and tested on their own: [`sdp`], [`stun`],
//! [`media`]. This module is the IO shell around them.

pub mod media;
pub mod sdp;
pub mod stun;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use async_trait::async_trait;
use futures_util::{SinkExt, StreamExt};
use rand::Rng;
use serde::Serialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use webrtc_dtls::config::{Config as DtlsConfig, ExtendedMasterSecretType};
use webrtc_dtls::conn::DTLSConn;
use webrtc_dtls::crypto::Certificate;
use webrtc_dtls::extension::extension_use_srtp::SrtpProtectionProfile;
use webrtc_srtp::context::Context as SrtpContext;
use webrtc_srtp::protection_profile::ProtectionProfile;
use webrtc_util::KeyingMaterialExporter;

use media::{Receiver, RtcpCounts, TrackStats};
use sdp::{AnswerParams, Direction, LocalTrack, Offer};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The `role` of a connection.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize)]
pub enum Role {
    SendRecv,
    SendOnly,
    RecvOnly,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::SendRecv => "sendrecv",
            Role::SendOnly => "sendonly",
            Role::RecvOnly => "recvonly",
        }
    }
    pub fn sends(self) -> bool {
        matches!(self, Role::SendRecv | Role::SendOnly)
    }
}

/// An SRTP protection profile this client can offer in DTLS.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize)]
pub enum SrtpProfile {
    Aes128CmHmacSha1_80,
    AeadAes128Gcm,
}

impl SrtpProfile {
    fn dtls(self) -> SrtpProtectionProfile {
        match self {
            SrtpProfile::Aes128CmHmacSha1_80 => SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_80,
            SrtpProfile::AeadAes128Gcm => SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm,
        }
    }
    fn srtp(self) -> ProtectionProfile {
        match self {
            SrtpProfile::Aes128CmHmacSha1_80 => ProtectionProfile::Aes128CmHmacSha1_80,
            SrtpProfile::AeadAes128Gcm => ProtectionProfile::AeadAes128Gcm,
        }
    }
}

/// How to connect.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// `ws://host:port/signaling`.
    pub url: String,
    pub role: Role,
    pub channel_id: String,
    pub client_id: Option<String>,
    /// `video: {codec_type}`; `None` sends `video: false`.
    pub video_codec: Option<String>,
    pub audio: bool,
    pub metadata: Option<Value>,
    /// Extra fields merged into the `connect` message.
    pub extra: serde_json::Map<String, Value>,
    /// DTLS `use_srtp` profiles, in order of preference.
    pub srtp_profiles: Vec<SrtpProfile>,
    /// Interval of ICE consent checks once connected.
    pub consent_interval: Duration,
    /// How long to wait for the offer (including redirects).
    pub signaling_timeout: Duration,
    /// Redirects followed before giving up.
    pub max_redirects: usize,
}

impl ClientOptions {
    pub fn new(url: impl Into<String>, role: Role, channel_id: impl Into<String>) -> Self {
        ClientOptions {
            url: url.into(),
            role,
            channel_id: channel_id.into(),
            client_id: None,
            video_codec: Some("VP8".into()),
            audio: false,
            metadata: None,
            extra: serde_json::Map::new(),
            srtp_profiles: vec![SrtpProfile::AeadAes128Gcm, SrtpProfile::Aes128CmHmacSha1_80],
            consent_interval: Duration::from_secs(2),
            signaling_timeout: Duration::from_secs(10),
            max_redirects: 3,
        }
    }

    /// The `connect` message.
    pub fn connect_message(&self, redirect: bool) -> Value {
        let mut m = json!({
            "type": "connect",
            "role": self.role.as_str(),
            "channel_id": self.channel_id,
            "multistream": true,
            "audio": self.audio,
            "video": match &self.video_codec {
                Some(c) => json!({"codec_type": c}),
                None => json!(false),
            },
            "sora_client": "tools::client",
        });
        if let Some(c) = &self.client_id {
            m["client_id"] = json!(c);
        }
        if let Some(md) = &self.metadata {
            m["metadata"] = md.clone();
        }
        if redirect {
            m["redirect"] = json!(true);
        }
        for (k, v) in &self.extra {
            m[k] = v.clone();
        }
        m
    }
}

/// How the server closed the WebSocket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CloseInfo {
    pub code: u16,
    pub reason: String,
}

/// The server closed the signaling before the connection came up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closed(pub CloseInfo);

impl std::fmt::Display for Closed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "signaling closed: {} {}", self.0.code, self.0.reason)
    }
}
impl std::error::Error for Closed {}

/// A track this client sends.
#[derive(Clone, Debug, Serialize)]
pub struct SendTrack {
    pub mid: String,
    pub kind: String,
    pub ssrc: u32,
    pub payload_type: u8,
    pub clock_rate: u32,
}

/// A forwarded track announced by the latest (re-)offer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RemoteTrack {
    pub mid: String,
    pub kind: String,
    pub ssrc: u32,
    pub payload_type: u8,
    /// The publisher's connection id (`a=msid` stream id).
    pub stream_id: String,
    pub track_id: String,
}

/// Counters of what the publisher sent, per SSRC.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SentStats {
    pub packets: u64,
    pub bytes: u64,
    pub errors: u64,
}

/// Everything the client has seen, as a snapshot.
#[derive(Clone, Debug, Default, Serialize)]
pub struct State {
    pub url: String,
    pub redirects: Vec<String>,
    pub connection_id: Option<String>,
    /// The `offer` message as received.
    pub offer_message: Option<Value>,
    /// The latest offer or re-offer.
    #[serde(skip)]
    pub offer: Option<Offer>,
    pub server_candidate: Option<SocketAddr>,
    pub local_addr: Option<SocketAddr>,
    pub send_tracks: Vec<SendTrack>,
    pub offers: u64,
    pub reoffers: u64,
    pub reanswers: u64,
    pub pings: u64,
    pub notifications: Vec<Value>,
    pub ice_checks_sent: u64,
    pub ice_responses: u64,
    pub ice_errors: Vec<String>,
    pub ice_connected: bool,
    /// The address the server saw us at (XOR-MAPPED-ADDRESS).
    pub mapped: Option<SocketAddr>,
    pub srtp_profile: Option<SrtpProfile>,
    pub dtls_ms: Option<u64>,
    pub established: bool,
    pub established_ms: Option<u64>,
    pub error: Option<String>,
    pub closed: Option<CloseInfo>,
    pub sent: BTreeMap<u32, SentStats>,
    /// Datagrams before SRTP keys were ready.
    pub early_media: u64,
}

impl State {
    /// Forwarded tracks of the latest offer (server `a=sendonly` with `a=ssrc`).
    pub fn remote_tracks(&self) -> Vec<RemoteTrack> {
        let Some(o) = &self.offer else {
            return Vec::new();
        };
        o.sections
            .iter()
            .filter(|s| s.direction == Direction::SendOnly)
            .flat_map(|s| {
                s.ssrcs.iter().map(move |l| {
                    let (stream_id, track_id) = l
                        .msid
                        .clone()
                        .or_else(|| s.msid.clone())
                        .unwrap_or_default();
                    RemoteTrack {
                        mid: s.mid.clone(),
                        kind: s.kind.clone(),
                        ssrc: l.ssrc,
                        payload_type: s.payload_types.first().copied().unwrap_or(0),
                        stream_id,
                        track_id,
                    }
                })
            })
            .collect()
    }

    /// `notify` messages with this `event_type`.
    pub fn notifications_of(&self, event_type: &str) -> Vec<&Value> {
        self.notifications
            .iter()
            .filter(|n| n.get("event_type").and_then(Value::as_str) == Some(event_type))
            .collect()
    }
}

/// What the publisher sends on each upstream track.
#[derive(Copy, Clone, Debug, Serialize)]
pub struct SendPlan {
    /// Packets per second, per track.
    pub pps: u32,
    /// Bytes per RTP packet before SRTP (header included).
    pub size: usize,
}

struct Shared {
    started: Instant,
    state: Mutex<State>,
    changed: watch::Sender<u64>,
    receiver: Mutex<Receiver>,
    /// Decrypts what the server sends (server key and salt).
    remote_srtp: Mutex<Option<SrtpContext>>,
    /// Encrypts what this client sends (client key and salt).
    local_srtp: Mutex<Option<SrtpContext>>,
    dtls: tokio::sync::Mutex<Option<Arc<DTLSConn>>>,
    server_ufrag: Mutex<(String, String)>,
    local_ufrag: String,
    local_pwd: String,
    rtcp_ssrc: u32,
}

impl Shared {
    fn update<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let r = f(&mut self.state.lock().expect("state lock"));
        self.changed.send_modify(|v| *v += 1);
        r
    }
    fn snapshot(&self) -> State {
        self.state.lock().expect("state lock").clone()
    }
    fn fail(&self, e: impl Into<String>) {
        let e = e.into();
        tracing::debug!(error = %e, "client failed");
        self.update(|s| {
            if s.error.is_none() {
                s.error = Some(e);
            }
        });
    }
}

enum SigCmd {
    Send(Value),
}

/// A connected client. Dropping it stops its tasks; [`Client::close`] ends
/// the connection politely.
pub struct Client {
    shared: Arc<Shared>,
    sock: Arc<UdpSocket>,
    sig: mpsc::UnboundedSender<SigCmd>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    sender: Option<(watch::Sender<bool>, JoinHandle<()>)>,
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        for t in &self.tasks {
            t.abort();
        }
        if let Some((_, t)) = &self.sender {
            t.abort();
        }
    }
}

/// Binds a UDP socket with large buffers, so bursts are not dropped on this side.
fn bind_udp(addr: SocketAddr) -> anyhow::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    let _ = s.set_recv_buffer_size(4 << 20);
    let _ = s.set_send_buffer_size(4 << 20);
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    Ok(UdpSocket::from_std(s.into())?)
}

fn random_token(n: usize) -> String {
    const CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut rng = rand::rng();
    (0..n)
        .map(|_| CHARS[rng.random_range(0..CHARS.len())] as char)
        .collect()
}

/// SHA-256 fingerprint of a DER certificate, upper case colon hex.
pub fn fingerprint_sha256(der: &[u8]) -> String {
    Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn close_info(frame: Option<tokio_tungstenite::tungstenite::protocol::CloseFrame>) -> CloseInfo {
    match frame {
        Some(f) => CloseInfo {
            code: u16::from(f.code),
            reason: f.reason.to_string(),
        },
        None => CloseInfo {
            code: 1005,
            reason: String::new(),
        },
    }
}

/// Opens the WebSocket and sends `connect`, following redirects, until an
/// offer arrives. Returns the socket, the offer message and the final URL.
async fn signal_until_offer(opts: &ClientOptions, shared: &Shared) -> anyhow::Result<(Ws, Value)> {
    let mut url = opts.url.clone();
    let mut redirect = false;
    for _ in 0..=opts.max_redirects {
        let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .with_context(|| format!("opening {url}"))?;
        ws.send(Message::Text(
            opts.connect_message(redirect).to_string().into(),
        ))
        .await?;
        let mut next = None;
        while let Some(m) = ws.next().await {
            match m? {
                Message::Text(t) => {
                    let v: Value =
                        serde_json::from_str(&t).with_context(|| format!("server sent {t}"))?;
                    match v.get("type").and_then(Value::as_str) {
                        Some("offer") => {
                            shared.update(|s| s.url = url.clone());
                            return Ok((ws, v));
                        }
                        Some("redirect") => {
                            let loc = v
                                .get("location")
                                .and_then(Value::as_str)
                                .ok_or_else(|| anyhow!("redirect without location: {v}"))?
                                .to_owned();
                            shared.update(|s| s.redirects.push(loc.clone()));
                            next = Some(loc);
                            // As the JS SDK: close the old socket ourselves.
                            let _ = ws.close(None).await;
                            break;
                        }
                        Some("ping") => {
                            ws.send(Message::Text(json!({"type": "pong"}).to_string().into()))
                                .await?;
                        }
                        Some("notify") => shared.update(|s| s.notifications.push(v)),
                        _ => {}
                    }
                }
                Message::Close(f) => {
                    let c = close_info(f);
                    shared.update(|s| s.closed = Some(c.clone()));
                    return Err(Closed(c).into());
                }
                _ => {}
            }
        }
        match next {
            Some(loc) => {
                url = loc;
                redirect = true;
            }
            None => bail!("signaling at {url} ended without an offer or a close frame"),
        }
    }
    bail!("more than {} redirects", opts.max_redirects)
}

/// The answer to the current offer from the client's tracks.
fn answer_for(shared: &Shared, offer: &Offer, fingerprint: &str, version: u64) -> String {
    let st = shared.state.lock().expect("state lock");
    let stream_id = st.connection_id.clone().unwrap_or_else(|| "tools".into());
    let tracks: HashMap<String, LocalTrack> = st
        .send_tracks
        .iter()
        .map(|t| {
            (
                t.mid.clone(),
                LocalTrack {
                    ssrc: t.ssrc,
                    cname: stream_id.clone(),
                    stream_id: stream_id.clone(),
                    track_id: format!("{}-{}", t.kind, t.ssrc),
                },
            )
        })
        .collect();
    drop(st);
    sdp::build_answer(
        offer,
        &AnswerParams {
            session_id: u64::from(shared.rtcp_ssrc),
            version,
            ice_ufrag: shared.local_ufrag.clone(),
            ice_pwd: shared.local_pwd.clone(),
            fingerprint_sha256: fingerprint.to_owned(),
            tracks,
        },
    )
}

impl Client {
    /// Signals up to the answer and starts ICE, DTLS and the media reader.
    /// Returns once the answer is sent; see [`Client::wait_established`].
    pub async fn connect(opts: ClientOptions) -> anyhow::Result<Client> {
        let started = Instant::now();
        let (changed, _) = watch::channel(0u64);
        let shared = Arc::new(Shared {
            started,
            state: Mutex::new(State {
                url: opts.url.clone(),
                ..Default::default()
            }),
            changed,
            receiver: Mutex::new(Receiver::default()),
            remote_srtp: Mutex::new(None),
            local_srtp: Mutex::new(None),
            dtls: tokio::sync::Mutex::new(None),
            server_ufrag: Mutex::new((String::new(), String::new())),
            local_ufrag: random_token(8),
            local_pwd: random_token(24),
            rtcp_ssrc: rand::rng().random(),
        });
        let certificate = Certificate::generate_self_signed(vec!["tools-client".to_owned()])
            .map_err(|e| anyhow!("certificate: {e}"))?;
        let fingerprint = fingerprint_sha256(certificate.certificate[0].as_ref());

        let (ws, offer_msg) =
            tokio::time::timeout(opts.signaling_timeout, signal_until_offer(&opts, &shared))
                .await
                .map_err(|_| anyhow!("no offer within {:?}", opts.signaling_timeout))??;
        let sdp_text = offer_msg
            .get("sdp")
            .and_then(Value::as_str)
            .ok_or_else(|| anyhow!("offer without sdp: {offer_msg}"))?;
        let offer = sdp::parse_offer(sdp_text)?;
        let server = offer
            .host_candidate()
            .ok_or_else(|| anyhow!("offer has no UDP host candidate"))?;

        // Upstream tracks: the m-lines the offer's `mid` names.
        let mut send_tracks = Vec::new();
        if opts.role.sends() {
            if let Some(mids) = offer_msg.get("mid").and_then(Value::as_object) {
                for (kind, mid) in mids {
                    let Some(mid) = mid.as_str() else { continue };
                    let sec = offer
                        .section(mid)
                        .ok_or_else(|| anyhow!("offer's mid {mid} has no m-line"))?;
                    send_tracks.push(SendTrack {
                        mid: mid.to_owned(),
                        kind: kind.clone(),
                        ssrc: rand::rng().random(),
                        payload_type: *sec
                            .payload_types
                            .first()
                            .ok_or_else(|| anyhow!("m-line {mid} has no payload type"))?,
                        clock_rate: sec.clock_rate(),
                    });
                }
            }
        }
        *shared.server_ufrag.lock().expect("lock") =
            (offer.ice_ufrag.clone(), offer.ice_pwd.clone());

        let bind: SocketAddr = if server.is_ipv4() {
            "0.0.0.0:0"
        } else {
            "[::]:0"
        }
        .parse()?;
        let sock = bind_udp(bind)?;
        sock.connect(server).await?;
        let sock = Arc::new(sock);
        shared.update(|s| {
            s.connection_id = offer_msg
                .get("connection_id")
                .and_then(Value::as_str)
                .map(str::to_owned);
            s.offer_message = Some(offer_msg.clone());
            s.server_candidate = Some(server);
            s.local_addr = sock.local_addr().ok();
            s.send_tracks = send_tracks;
            s.offers = 1;
            s.offer = Some(offer.clone());
        });

        let answer = answer_for(&shared, &offer, &fingerprint, 1);
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (sig_tx, sig_rx) = mpsc::unbounded_channel();
        let mut ws = ws;
        ws.send(Message::Text(
            json!({"type": "answer", "sdp": answer}).to_string().into(),
        ))
        .await?;

        let (dtls_tx, dtls_rx) = mpsc::channel(256);
        let mut tasks = Vec::new();
        tasks.push(tokio::spawn(signaling_loop(
            ws,
            shared.clone(),
            sig_rx,
            shutdown_rx.clone(),
            fingerprint.clone(),
        )));
        tasks.push(tokio::spawn(udp_reader(
            sock.clone(),
            shared.clone(),
            dtls_tx,
            shutdown_rx.clone(),
        )));
        tasks.push(tokio::spawn(ice_loop(
            sock.clone(),
            shared.clone(),
            opts.consent_interval,
            shutdown_rx.clone(),
        )));
        let transport = DtlsTransport {
            sock: sock.clone(),
            rx: tokio::sync::Mutex::new(dtls_rx),
            peer: server,
        };
        tasks.push(tokio::spawn(dtls_task(
            transport,
            shared.clone(),
            certificate,
            opts.srtp_profiles.clone(),
            offer.fingerprint.1.clone(),
        )));
        Ok(Client {
            shared,
            sock,
            sig: sig_tx,
            shutdown,
            tasks,
            sender: None,
        })
    }

    /// A snapshot of everything seen so far.
    pub fn state(&self) -> State {
        self.shared.snapshot()
    }

    pub fn connection_id(&self) -> Option<String> {
        self.shared
            .state
            .lock()
            .expect("state lock")
            .connection_id
            .clone()
    }

    /// Received RTP, per SSRC.
    pub fn recv_stats(&self) -> BTreeMap<u32, TrackStats> {
        self.shared.receiver.lock().expect("receiver lock").stats()
    }

    /// Received RTCP, by kind.
    pub fn rtcp_stats(&self) -> RtcpCounts {
        self.shared
            .receiver
            .lock()
            .expect("receiver lock")
            .rtcp
            .clone()
    }

    /// SRTP/SRTCP packets that failed to decrypt, and plain RTP that did not parse.
    pub fn recv_errors(&self) -> (u64, u64) {
        let r = self.shared.receiver.lock().expect("receiver lock");
        (r.undecryptable, r.malformed)
    }

    /// Sent RTP, per SSRC.
    pub fn sent_stats(&self) -> BTreeMap<u32, SentStats> {
        self.shared.state.lock().expect("state lock").sent.clone()
    }

    /// Waits until `cond` holds for the state, or fails after `timeout` (also
    /// early when the client failed or was closed and `cond` still does not hold).
    pub async fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        mut cond: impl FnMut(&Client, &State) -> bool,
    ) -> anyhow::Result<State> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut rx = self.shared.changed.subscribe();
        loop {
            let st = self.state();
            if cond(self, &st) {
                return Ok(st);
            }
            if let Some(e) = &st.error {
                bail!("waiting for {what}: client failed: {e}");
            }
            if let Some(c) = &st.closed {
                bail!(
                    "waiting for {what}: signaling closed {} {}",
                    c.code,
                    c.reason
                );
            }
            tokio::select! {
                _ = rx.changed() => {}
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                _ = tokio::time::sleep_until(deadline) => {
                    let st = self.state();
                    if cond(self, &st) {
                        return Ok(st);
                    }
                    bail!("timed out after {timeout:?} waiting for {what}; state: ice_connected={} checks_sent={} responses={} ice_errors={:?} srtp={:?} established={}",
                        st.ice_connected, st.ice_checks_sent, st.ice_responses, st.ice_errors, st.srtp_profile, st.established);
                }
            }
        }
    }

    /// Waits until ICE is up and SRTP keys are installed.
    pub async fn wait_established(&self, timeout: Duration) -> anyhow::Result<State> {
        self.wait_for("ICE + DTLS", timeout, |_, s| s.established)
            .await
    }

    /// Starts sending RTP on every upstream track at `plan`.
    pub fn start_sending(&mut self, plan: SendPlan) {
        self.stop_sending();
        let (stop, stop_rx) = watch::channel(false);
        let t = tokio::spawn(publisher(
            self.sock.clone(),
            self.shared.clone(),
            plan,
            stop_rx,
        ));
        self.sender = Some((stop, t));
    }

    /// Stops the publisher (packets already due are not sent).
    pub fn stop_sending(&mut self) {
        if let Some((stop, t)) = self.sender.take() {
            let _ = stop.send(true);
            t.abort();
        }
    }

    fn send_rtcp(&self, plain: &[u8]) -> anyhow::Result<()> {
        let enc = {
            let mut ctx = self.shared.local_srtp.lock().expect("srtp lock");
            let ctx = ctx.as_mut().ok_or_else(|| anyhow!("SRTP is not up yet"))?;
            ctx.encrypt_rtcp(plain).map_err(|e| anyhow!("SRTCP: {e}"))?
        };
        self.sock.try_send(&enc)?;
        Ok(())
    }

    fn feedback_ssrc(&self) -> u32 {
        let st = self.shared.state.lock().expect("state lock");
        st.send_tracks
            .first()
            .map(|t| t.ssrc)
            .unwrap_or(self.shared.rtcp_ssrc)
    }

    /// Sends a Picture Loss Indication about `media_ssrc`.
    pub fn send_pli(&self, media_ssrc: u32) -> anyhow::Result<()> {
        self.send_rtcp(&media::build_pli(self.feedback_ssrc(), media_ssrc))
    }

    /// Sends a generic NACK for `seqs` of `media_ssrc`.
    pub fn send_nack(&self, media_ssrc: u32, seqs: &[u16]) -> anyhow::Result<()> {
        self.send_rtcp(&media::build_nack(self.feedback_ssrc(), media_ssrc, seqs))
    }

    /// NACKs up to `max` sequence numbers still missing on `media_ssrc`.
    pub fn nack_missing(&self, media_ssrc: u32, max: usize) -> anyhow::Result<usize> {
        let seqs = {
            let r = self.shared.receiver.lock().expect("receiver lock");
            r.tracks
                .get(&media_ssrc)
                .map(|t| t.missing_seqs(max))
                .unwrap_or_default()
        };
        if !seqs.is_empty() {
            self.send_nack(media_ssrc, &seqs)?;
        }
        Ok(seqs.len())
    }

    /// Sends any signaling message.
    pub fn send_signaling(&self, v: Value) -> anyhow::Result<()> {
        self.sig
            .send(SigCmd::Send(v))
            .map_err(|_| anyhow!("signaling is closed"))
    }

    /// Sends `disconnect`, waits up to 3 s for the server's close, then stops.
    /// Returns how the server closed, if it did.
    pub async fn close(mut self) -> Option<CloseInfo> {
        self.stop_sending();
        let _ = self.send_signaling(json!({"type": "disconnect", "reason": "NO-ERROR"}));
        let _ = self
            .wait_for("close", Duration::from_secs(3), |_, s| s.closed.is_some())
            .await;
        if let Some(d) = self.shared.dtls.lock().await.take() {
            let _ = tokio::time::timeout(Duration::from_secs(1), d.close()).await;
        }
        self.state().closed
    }
}

async fn signaling_loop(
    mut ws: Ws,
    shared: Arc<Shared>,
    mut cmds: mpsc::UnboundedReceiver<SigCmd>,
    mut shutdown: watch::Receiver<bool>,
    fingerprint: String,
) {
    let mut version = 1u64;
    let closed = loop {
        tokio::select! {
            m = ws.next() => match m {
                Some(Ok(Message::Text(t))) => {
                    let Ok(v) = serde_json::from_str::<Value>(&t) else {
                        shared.fail(format!("server sent invalid JSON: {t}"));
                        continue;
                    };
                    let reply = handle_server_message(&shared, v, &fingerprint, &mut version);
                    if let Some(r) = reply {
                        if ws.send(Message::Text(r.to_string().into())).await.is_err() {
                            break CloseInfo { code: 1006, reason: "send failed".into() };
                        }
                    }
                }
                Some(Ok(Message::Close(f))) => break close_info(f),
                Some(Ok(_)) => {}
                Some(Err(e)) => break CloseInfo { code: 1006, reason: e.to_string() },
                None => break CloseInfo { code: 1006, reason: "connection dropped".into() },
            },
            Some(SigCmd::Send(v)) = cmds.recv() => {
                if ws.send(Message::Text(v.to_string().into())).await.is_err() {
                    break CloseInfo { code: 1006, reason: "send failed".into() };
                }
            }
            _ = shutdown.changed() => {
                let _ = ws.close(None).await;
                return;
            }
        }
    };
    tracing::debug!(code = closed.code, reason = %closed.reason, "signaling closed");
    shared.update(|s| s.closed = Some(closed));
}

/// Handles one message after the offer; returns the reply, if any.
fn handle_server_message(
    shared: &Shared,
    v: Value,
    fingerprint: &str,
    version: &mut u64,
) -> Option<Value> {
    match v.get("type").and_then(Value::as_str) {
        Some("re-offer") => {
            let sdp_text = v.get("sdp").and_then(Value::as_str)?;
            match sdp::parse_offer(sdp_text) {
                Ok(offer) => {
                    *version += 1;
                    let answer = answer_for(shared, &offer, fingerprint, *version);
                    shared.update(|s| {
                        s.reoffers += 1;
                        s.reanswers += 1;
                        s.offer = Some(offer);
                    });
                    Some(json!({"type": "re-answer", "sdp": answer}))
                }
                Err(e) => {
                    shared.fail(format!("re-offer: {e}"));
                    None
                }
            }
        }
        Some("ping") => {
            shared.update(|s| s.pings += 1);
            if v.get("stats").and_then(Value::as_bool) == Some(true) {
                Some(json!({"type": "pong", "stats": []}))
            } else {
                Some(json!({"type": "pong"}))
            }
        }
        Some("notify") => {
            shared.update(|s| s.notifications.push(v));
            None
        }
        Some("offer") => {
            shared.update(|s| s.offers += 1);
            None
        }
        _ => None,
    }
}

async fn udp_reader(
    sock: Arc<UdpSocket>,
    shared: Arc<Shared>,
    dtls: mpsc::Sender<Vec<u8>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 2048];
    let server_pwd = shared.server_ufrag.lock().expect("lock").1.clone();
    loop {
        let n = tokio::select! {
            r = sock.recv(&mut buf) => match r {
                Ok(n) => n,
                // ICMP port unreachable surfaces as ECONNREFUSED on a connected socket.
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => continue,
                Err(e) => {
                    shared.fail(format!("UDP receive: {e}"));
                    return;
                }
            },
            _ = shutdown.changed() => return,
        };
        let pkt = &buf[..n];
        match media::demux(pkt) {
            media::Demux::Stun => match stun::parse(pkt, Some(server_pwd.as_bytes())) {
                Ok(p) if p.message_type == stun::BINDING_SUCCESS && p.integrity == Some(true) => {
                    shared.update(|s| {
                        s.ice_responses += 1;
                        s.ice_connected = true;
                        s.mapped = p.mapped;
                    });
                }
                Ok(p) => {
                    let e = match (p.message_type, &p.error, p.integrity) {
                        (stun::BINDING_ERROR, Some((c, r)), _) => format!("error response {c} {r}"),
                        (stun::BINDING_SUCCESS, _, i) => {
                            format!("success response with integrity {i:?}")
                        }
                        (t, _, _) => format!("unexpected STUN message type {t:#06x}"),
                    };
                    shared.update(|s| {
                        if s.ice_errors.len() < 16 {
                            s.ice_errors.push(e)
                        }
                    });
                }
                Err(e) => shared.update(|s| {
                    if s.ice_errors.len() < 16 {
                        s.ice_errors.push(e.to_string())
                    }
                }),
            },
            media::Demux::Dtls => {
                let _ = dtls.try_send(pkt.to_vec());
            }
            media::Demux::Rtp => {
                let plain = {
                    let mut ctx = shared.remote_srtp.lock().expect("srtp lock");
                    ctx.as_mut().map(|c| c.decrypt_rtp(pkt))
                };
                let now = media::unix_micros();
                match plain {
                    Some(Ok(p)) => shared
                        .receiver
                        .lock()
                        .expect("receiver lock")
                        .on_rtp(&p, now),
                    Some(Err(_)) => {
                        shared.receiver.lock().expect("receiver lock").undecryptable += 1
                    }
                    None => shared.state.lock().expect("state lock").early_media += 1,
                }
            }
            media::Demux::Rtcp => {
                let plain = {
                    let mut ctx = shared.remote_srtp.lock().expect("srtp lock");
                    ctx.as_mut().map(|c| c.decrypt_rtcp(pkt))
                };
                match plain {
                    Some(Ok(p)) => shared
                        .receiver
                        .lock()
                        .expect("receiver lock")
                        .rtcp
                        .on_packet(&p),
                    Some(Err(_)) => {
                        shared.receiver.lock().expect("receiver lock").undecryptable += 1
                    }
                    None => shared.state.lock().expect("state lock").early_media += 1,
                }
            }
            media::Demux::Other => {}
        }
    }
}

async fn ice_loop(
    sock: Arc<UdpSocket>,
    shared: Arc<Shared>,
    consent: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let (remote_ufrag, remote_pwd) = shared.server_ufrag.lock().expect("lock").clone();
    let tie_breaker: u64 = rand::rng().random();
    loop {
        let tid: [u8; 12] = rand::rng().random();
        let req = stun::BindingRequest {
            transaction_id: tid,
            remote_ufrag: &remote_ufrag,
            local_ufrag: &shared.local_ufrag,
            remote_pwd: &remote_pwd,
            priority: stun::candidate_priority(110),
            tie_breaker,
            use_candidate: true,
        }
        .encode();
        if sock.send(&req).await.is_ok() {
            shared.state.lock().expect("state lock").ice_checks_sent += 1;
        }
        let connected = shared.state.lock().expect("state lock").ice_connected;
        let wait = if connected {
            consent
        } else {
            Duration::from_millis(50)
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// webrtc-dtls's transport: DTLS records demultiplexed by the UDP reader.
struct DtlsTransport {
    sock: Arc<UdpSocket>,
    rx: tokio::sync::Mutex<mpsc::Receiver<Vec<u8>>>,
    peer: SocketAddr,
}

type UtilResult<T> = Result<T, webrtc_util::Error>;

#[async_trait]
impl webrtc_util::Conn for DtlsTransport {
    async fn connect(&self, _addr: SocketAddr) -> UtilResult<()> {
        Ok(())
    }
    async fn recv(&self, buf: &mut [u8]) -> UtilResult<usize> {
        match self.rx.lock().await.recv().await {
            Some(d) => {
                let n = d.len().min(buf.len());
                buf[..n].copy_from_slice(&d[..n]);
                Ok(n)
            }
            None => Err(webrtc_util::Error::ErrClosedListener),
        }
    }
    async fn recv_from(&self, buf: &mut [u8]) -> UtilResult<(usize, SocketAddr)> {
        Ok((self.recv(buf).await?, self.peer))
    }
    async fn send(&self, buf: &[u8]) -> UtilResult<usize> {
        Ok(self.sock.send(buf).await?)
    }
    async fn send_to(&self, buf: &[u8], _target: SocketAddr) -> UtilResult<usize> {
        self.send(buf).await
    }
    fn local_addr(&self) -> UtilResult<SocketAddr> {
        Ok(self.sock.local_addr()?)
    }
    fn remote_addr(&self) -> Option<SocketAddr> {
        Some(self.peer)
    }
    async fn close(&self) -> UtilResult<()> {
        Ok(())
    }
    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}

/// A master key and salt.
pub type KeySalt = (Vec<u8>, Vec<u8>);

/// RFC 5764 §4.2 keying material: client key, server key, client salt,
/// server salt. Returns (local = client, remote = server) as (key, salt).
pub fn split_client_keys(m: &[u8], key_len: usize, salt_len: usize) -> (KeySalt, KeySalt) {
    let client_key = m[..key_len].to_vec();
    let server_key = m[key_len..2 * key_len].to_vec();
    let client_salt = m[2 * key_len..2 * key_len + salt_len].to_vec();
    let server_salt = m[2 * key_len + salt_len..2 * (key_len + salt_len)].to_vec();
    ((client_key, client_salt), (server_key, server_salt))
}

async fn dtls_task(
    transport: DtlsTransport,
    shared: Arc<Shared>,
    certificate: Certificate,
    profiles: Vec<SrtpProfile>,
    server_fingerprint: String,
) {
    // The ICE-lite server accepts DTLS only from an address its checks selected.
    let mut rx = shared.changed.subscribe();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if shared.state.lock().expect("state lock").ice_connected {
            break;
        }
        tokio::select! {
            r = rx.changed() => if r.is_err() { return },
            _ = tokio::time::sleep_until(deadline) => {
                shared.fail("ICE: no Binding success response within 30 s");
                return;
            }
        }
    }
    let started = Instant::now();
    let config = DtlsConfig {
        certificates: vec![certificate],
        srtp_protection_profiles: profiles.iter().map(|p| p.dtls()).collect(),
        insecure_skip_verify: true,
        extended_master_secret: ExtendedMasterSecretType::Request,
        mtu: 1200,
        ..Default::default()
    };
    let conn: Arc<dyn webrtc_util::Conn + Send + Sync> = Arc::new(transport);
    let dtls = match tokio::time::timeout(
        Duration::from_secs(20),
        DTLSConn::new(conn, config, true, None),
    )
    .await
    {
        Ok(Ok(d)) => d,
        Ok(Err(e)) => return shared.fail(format!("DTLS handshake: {e}")),
        Err(_) => return shared.fail("DTLS handshake did not finish within 20 s"),
    };
    let state = dtls.connection_state().await;
    if let Some(cert) = state.peer_certificates.first() {
        let actual = fingerprint_sha256(cert);
        if !actual.eq_ignore_ascii_case(&server_fingerprint) {
            return shared.fail(format!(
                "server certificate fingerprint {actual} does not match the offer's {server_fingerprint}"
            ));
        }
    } else {
        return shared.fail("server presented no certificate");
    }
    let profile = match dtls.selected_srtpprotection_profile() {
        SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_80 => SrtpProfile::Aes128CmHmacSha1_80,
        SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm => SrtpProfile::AeadAes128Gcm,
        other => return shared.fail(format!("server selected SRTP profile {other:?}")),
    };
    let (key_len, salt_len) = (profile.srtp().key_len(), profile.srtp().salt_len());
    let material = match state
        .export_keying_material("EXTRACTOR-dtls_srtp", &[], 2 * (key_len + salt_len))
        .await
    {
        Ok(m) => m,
        Err(e) => return shared.fail(format!("exporting keys: {e}")),
    };
    let ((lk, ls), (rk, rs)) = split_client_keys(&material, key_len, salt_len);
    let local = SrtpContext::new(&lk, &ls, profile.srtp(), None, None);
    let remote = SrtpContext::new(&rk, &rs, profile.srtp(), None, None);
    let (local, remote) = match (local, remote) {
        (Ok(l), Ok(r)) => (l, r),
        (Err(e), _) | (_, Err(e)) => return shared.fail(format!("SRTP context: {e}")),
    };
    *shared.local_srtp.lock().expect("srtp lock") = Some(local);
    *shared.remote_srtp.lock().expect("srtp lock") = Some(remote);
    *shared.dtls.lock().await = Some(Arc::new(dtls));
    let ms = shared.started.elapsed().as_millis() as u64;
    shared.update(|s| {
        s.srtp_profile = Some(profile);
        s.dtls_ms = Some(started.elapsed().as_millis() as u64);
        s.established = true;
        s.established_ms = Some(ms);
    });
}

async fn publisher(
    sock: Arc<UdpSocket>,
    shared: Arc<Shared>,
    plan: SendPlan,
    mut stop: watch::Receiver<bool>,
) {
    struct Track {
        t: SendTrack,
        seq: u16,
        ts_base: u32,
        counter: u64,
    }
    let mut tracks: Vec<Track> = shared
        .snapshot()
        .send_tracks
        .into_iter()
        .map(|t| Track {
            t,
            seq: rand::rng().random(),
            ts_base: rand::rng().random(),
            counter: 0,
        })
        .collect();
    if tracks.is_empty() || plan.pps == 0 {
        return;
    }
    let start = Instant::now();
    let tick = Duration::from_micros((1_000_000 / u64::from(plan.pps)).clamp(1_000, 20_000));
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut sent_total = 0u64;
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = stop.changed() => return,
        }
        let elapsed = start.elapsed();
        let due = (elapsed.as_secs_f64() * f64::from(plan.pps)) as u64 + 1;
        if due <= sent_total {
            continue;
        }
        let mut batch: Vec<(u32, Vec<u8>)> = Vec::new();
        {
            let mut ctx = shared.local_srtp.lock().expect("srtp lock");
            let Some(ctx) = ctx.as_mut() else { continue };
            for _ in sent_total..due {
                for tr in tracks.iter_mut() {
                    let ts = tr
                        .ts_base
                        .wrapping_add((elapsed.as_secs_f64() * f64::from(tr.t.clock_rate)) as u32);
                    let plain = media::build_rtp(
                        tr.t.payload_type,
                        tr.seq,
                        ts,
                        tr.t.ssrc,
                        tr.counter,
                        media::unix_micros(),
                        plan.size,
                    );
                    tr.seq = tr.seq.wrapping_add(1);
                    tr.counter += 1;
                    match ctx.encrypt_rtp(&plain) {
                        Ok(enc) => batch.push((tr.t.ssrc, enc.to_vec())),
                        Err(_) => batch.push((tr.t.ssrc, Vec::new())),
                    }
                }
            }
        }
        sent_total = due;
        let mut results: Vec<(u32, usize, bool)> = Vec::with_capacity(batch.len());
        for (ssrc, pkt) in batch {
            let ok = !pkt.is_empty() && sock.send(&pkt).await.is_ok();
            results.push((ssrc, pkt.len(), ok));
        }
        let mut st = shared.state.lock().expect("state lock");
        for (ssrc, len, ok) in results {
            let e = st.sent.entry(ssrc).or_default();
            if ok {
                e.packets += 1;
                e.bytes += len as u64;
            } else {
                e.errors += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_message_shape() {
        let mut o = ClientOptions::new("ws://x/signaling", Role::SendOnly, "ch");
        o.audio = true;
        o.video_codec = Some("VP9".into());
        o.client_id = Some("me".into());
        let m = o.connect_message(false);
        assert_eq!(m["type"], "connect");
        assert_eq!(m["role"], "sendonly");
        assert_eq!(m["channel_id"], "ch");
        assert_eq!(m["video"]["codec_type"], "VP9");
        assert_eq!(m["audio"], true);
        assert_eq!(m["client_id"], "me");
        assert!(m.get("redirect").is_none());
        o.video_codec = None;
        let m = o.connect_message(true);
        assert_eq!(m["video"], false);
        assert_eq!(m["redirect"], true);
    }

    #[test]
    fn client_key_split() {
        let m: Vec<u8> = (0u8..56).collect();
        let ((lk, ls), (rk, rs)) = split_client_keys(&m, 16, 12);
        assert_eq!(lk, (0u8..16).collect::<Vec<_>>());
        assert_eq!(rk, (16u8..32).collect::<Vec<_>>());
        assert_eq!(ls, (32u8..44).collect::<Vec<_>>());
        assert_eq!(rs, (44u8..56).collect::<Vec<_>>());
    }

    #[test]
    fn fingerprint_format() {
        let f = fingerprint_sha256(b"abc");
        assert!(f.starts_with("BA:78:16:BF"));
        assert_eq!(f.len(), 95);
    }

    #[test]
    fn remote_tracks_from_offer() {
        let offer = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=ice-lite\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:0\r\na=sendonly\r\na=ice-ufrag:u\r\na=ice-pwd:p\r\n\
a=fingerprint:sha-256 AA\r\na=rtpmap:96 VP8/90000\r\na=msid:PUB v\r\na=ssrc:5 cname:PUB\r\n\
a=ssrc:5 msid:PUB v\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:1\r\na=inactive\r\n";
        let st = State {
            offer: Some(sdp::parse_offer(offer).unwrap()),
            ..Default::default()
        };
        let t = st.remote_tracks();
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].ssrc, 5);
        assert_eq!(t[0].payload_type, 96);
        assert_eq!(t[0].stream_id, "PUB");
    }
}

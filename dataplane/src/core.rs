//! The sans-IO packet core of one data-plane core.
//!
//! ```text
//!  handle_datagram ──► demux (RFC 7983 first byte)
//!                       ├─ 0..=3     STUN  ─► ICE-lite check ─► Binding success (transmit)
//!                       ├─ 20..=63   DTLS  ─► Event::DtlsReceived
//!                       └─ 128..=191 RTP   ─► unprotect once ─► rewrite SSRC ─► NACK buffer
//!                                                         └─► protect per subscriber (transmit)
//!                                    RTCP  ─► PLI/FIR ─► PLI to publisher (rate-limited)
//!                                             NACK    ─► retransmit from the buffer
//!                                             SR      ─► NTP/RTP mapping for our SRs
//!  handle_command ──► connections, keys, tracks, subscriptions, channel ownership
//!  handle_timeout ──► RR to publishers, SR to subscribers, consent, stats events
//! ```
//!
//! Time is an input: the core never reads a clock. Network input never panics
//! and never returns an error: it is dropped and counted in [`CoreStats`].
//!
//! Channel ownership: media is forwarded only in channels the node owns. A
//! channel for which no `SetChannelOwned` arrived yet counts as owned, so a
//! single node (no cluster) needs no ownership commands at all.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use shared::{ChannelKey, Command, ConnId, ConnStats, CoreStats, Event, MediaKind};
use tracing::{debug, trace, warn};

use crate::rtcp::{self, Feedback, RtcpPacket};
use crate::srtp::SrtpSession;
use crate::stun::{self, StunError, StunMessage};
use crate::track::Track;

/// Settings of a [`Core`]. Defaults in [`CoreConfig::default`].
#[derive(Clone, Debug)]
pub struct CoreConfig {
    /// Without a valid binding request for this long, a connection's consent
    /// expires (RFC 7675): `Event::ConsentExpired` and no more media to it.
    pub consent_timeout: Duration,
    /// Interval of receiver reports to publishers and sender reports to
    /// subscribers.
    pub report_interval: Duration,
    /// Interval of `Event::CoreStats` / `Event::ConnStats`.
    pub stats_interval: Duration,
    /// Minimum time between two key frame requests for one track.
    pub key_frame_interval: Duration,
    /// How old a packet may be and still be retransmitted on NACK.
    pub retransmit_window: Duration,
    /// Wall-clock time at the first `now` the core sees; the origin of the NTP
    /// timestamps of sender reports that are not derived from the
    /// publisher's own reports.
    pub wallclock: SystemTime,
}

impl Default for CoreConfig {
    fn default() -> Self {
        CoreConfig {
            consent_timeout: Duration::from_secs(30),
            report_interval: Duration::from_secs(1),
            stats_interval: Duration::from_secs(1),
            key_frame_interval: Duration::from_millis(500),
            retransmit_window: Duration::from_secs(1),
            wallclock: SystemTime::now(),
        }
    }
}

/// A datagram to send.
#[derive(Debug, PartialEq, Eq)]
pub struct Transmit<'a> {
    pub destination: SocketAddr,
    pub contents: &'a [u8],
}

/// Outgoing datagrams, packed into one buffer that is reused once drained.
#[derive(Default)]
struct TransmitQueue {
    buf: Vec<u8>,
    items: VecDeque<(SocketAddr, usize, usize)>,
}

/// Beyond this many queued bytes the runtime is not draining; drop rather
/// than grow without bound.
const MAX_QUEUED_BYTES: usize = 16 << 20;
/// Beyond this many queued events the runtime is not draining.
const MAX_QUEUED_EVENTS: usize = 8192;
/// Addresses remembered per connection (validated by a binding request).
const MAX_ADDRESSES: usize = 8;
/// Report blocks in one receiver report (5-bit count).
const MAX_REPORT_BLOCKS: usize = 31;

impl TransmitQueue {
    fn push_with(&mut self, destination: SocketAddr, write: impl FnOnce(&mut Vec<u8>)) {
        if self.items.is_empty() {
            self.buf.clear();
        }
        if self.buf.len() > MAX_QUEUED_BYTES {
            trace!("transmit queue full, dropping datagram");
            return;
        }
        let start = self.buf.len();
        write(&mut self.buf);
        self.items
            .push_back((destination, start, self.buf.len() - start));
    }

    fn push(&mut self, destination: SocketAddr, contents: &[u8]) {
        self.push_with(destination, |buf| buf.extend_from_slice(contents));
    }

    fn pop(&mut self) -> Option<Transmit<'_>> {
        let (destination, start, len) = self.items.pop_front()?;
        Some(Transmit {
            destination,
            contents: &self.buf[start..start + len],
        })
    }
}

/// One peer connection (mediasoup's Transport).
struct Conn {
    channel: ChannelKey,
    local_ufrag: String,
    local_pwd: String,
    selected: Option<SocketAddr>,
    /// Addresses that passed a connectivity check, oldest first.
    validated: Vec<SocketAddr>,
    last_check: Instant,
    consent_expired: bool,
    srtp: Option<SrtpSession>,
    /// Published tracks: (payload type, out_ssrc).
    tracks: Vec<(u8, u32)>,
    /// Publishers this connection receives.
    subscribed_to: Vec<ConnId>,
    stats: ConnStats,
}

/// The SSRC the core uses as RTCP sender towards a connection.
fn rtcp_ssrc(conn: ConnId) -> u32 {
    0x5F00_0000 ^ conn.0.wrapping_mul(0x9E37_79B9)
}

/// Packet core of one data-plane core. See the module docs.
pub struct Core {
    config: CoreConfig,
    conns: HashMap<ConnId, Conn>,
    by_ufrag: HashMap<Vec<u8>, ConnId>,
    by_addr: HashMap<SocketAddr, ConnId>,
    /// Published tracks by out_ssrc.
    tracks: HashMap<u32, Track>,
    /// Publisher -> subscribers.
    fanout: HashMap<ConnId, Vec<ConnId>>,
    owned: HashMap<ChannelKey, bool>,
    tx: TransmitQueue,
    events: VecDeque<Event>,
    stats: CoreStats,
    /// First time input, the origin of RTP arrival clocks and the wall clock.
    epoch: Option<Instant>,
    next_report: Option<Instant>,
    next_stats: Option<Instant>,
    /// Earliest time a rate-limited key frame request may go out.
    key_frame_due: Option<Instant>,
}

impl Core {
    pub fn new(core_index: u16, config: CoreConfig) -> Self {
        Core {
            config,
            conns: HashMap::new(),
            by_ufrag: HashMap::new(),
            by_addr: HashMap::new(),
            tracks: HashMap::new(),
            fanout: HashMap::new(),
            owned: HashMap::new(),
            tx: TransmitQueue {
                buf: Vec::with_capacity(256 << 10),
                items: VecDeque::with_capacity(1024),
            },
            events: VecDeque::with_capacity(256),
            stats: CoreStats {
                core: core_index,
                ..CoreStats::default()
            },
            epoch: None,
            next_report: None,
            next_stats: None,
            key_frame_due: None,
        }
    }

    pub fn stats(&self) -> &CoreStats {
        &self.stats
    }

    /// Counts an event that the runtime could not hand to the control plane.
    pub fn count_dropped_event(&mut self) {
        self.stats.dropped_events += 1;
    }

    /// Counts a ring record that did not decode.
    pub fn count_bad_command(&mut self) {
        self.stats.dropped_bad_command += 1;
    }

    fn touch(&mut self, now: Instant) {
        if self.epoch.is_none() {
            self.epoch = Some(now);
            self.next_report = Some(now + self.config.report_interval);
            self.next_stats = Some(now + self.config.stats_interval);
        }
    }

    fn since_epoch(&self, now: Instant) -> Duration {
        self.epoch
            .map(|e| now.saturating_duration_since(e))
            .unwrap_or_default()
    }

    fn emit(&mut self, ev: Event) {
        if self.events.len() >= MAX_QUEUED_EVENTS {
            self.stats.dropped_events += 1;
            return;
        }
        self.events.push_back(ev);
    }

    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Transmit<'_>> {
        let t = self.tx.pop()?;
        self.stats.udp_sent += 1;
        Some(t)
    }

    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        [self.next_report, self.next_stats, self.key_frame_due]
            .into_iter()
            .flatten()
            .min()
    }

    // ---- datagrams -------------------------------------------------------

    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, pkt: &mut [u8]) {
        self.touch(now);
        self.stats.udp_received += 1;
        match pkt.first() {
            Some(0..=3) => self.handle_stun(now, from, pkt),
            Some(20..=63) => self.handle_dtls(from, pkt),
            Some(128..=191) if pkt.len() >= 2 && (192..=223).contains(&pkt[1]) => {
                self.handle_rtcp(now, from, pkt)
            }
            Some(128..=191) => self.handle_rtp(now, from, pkt),
            _ => {
                trace!(len = pkt.len(), "unclassified datagram");
                self.stats.dropped_malformed += 1;
            }
        }
    }

    fn handle_stun(&mut self, now: Instant, from: SocketAddr, pkt: &[u8]) {
        self.stats.stun_received += 1;
        let msg = match StunMessage::parse(pkt) {
            Ok(msg) => msg,
            Err(StunError::BadFingerprint) => {
                self.stats.dropped_stun_auth += 1;
                return;
            }
            Err(e) => {
                trace!(%from, error = %e, "malformed STUN");
                self.stats.dropped_malformed += 1;
                return;
            }
        };
        if msg.message_type != stun::BINDING_REQUEST {
            // Indications (keepalives) and responses need no answer.
            trace!(%from, message_type = msg.message_type, "STUN ignored");
            return;
        }
        let id = match msg.local_ufrag().and_then(|u| self.by_ufrag.get(u)) {
            Some(&id) if msg.has_fingerprint => id,
            _ => {
                self.stats.dropped_stun_auth += 1;
                return;
            }
        };
        let Some(conn) = self.conns.get_mut(&id) else {
            self.stats.dropped_stun_auth += 1;
            return;
        };
        if msg.verify_integrity(conn.local_pwd.as_bytes()).is_err() {
            self.stats.dropped_stun_auth += 1;
            return;
        }
        conn.last_check = now;
        if !conn.validated.contains(&from) {
            if conn.validated.len() >= MAX_ADDRESSES {
                if let Some(i) = conn
                    .validated
                    .iter()
                    .position(|a| Some(*a) != conn.selected)
                {
                    let old = conn.validated.remove(i);
                    if self.by_addr.get(&old) == Some(&id) {
                        self.by_addr.remove(&old);
                    }
                }
            }
            conn.validated.push(from);
            self.by_addr.insert(from, id);
        }
        if (msg.use_candidate || conn.selected.is_none()) && conn.selected != Some(from) {
            debug!(conn = id.0, peer = %from, "ICE selected");
            conn.selected = Some(from);
            self.events.push_back(Event::IceSelected {
                conn: id,
                peer: from,
            });
        }
        let pwd = conn.local_pwd.as_bytes();
        self.tx.push_with(from, |buf| {
            stun::write_binding_success(buf, &msg.transaction_id, from, pwd)
        });
    }

    fn handle_dtls(&mut self, from: SocketAddr, pkt: &[u8]) {
        self.stats.dtls_received += 1;
        let Some(&conn) = self.by_addr.get(&from) else {
            self.stats.dropped_unknown_peer += 1;
            return;
        };
        self.emit(Event::DtlsReceived {
            conn,
            data: pkt.to_vec(),
        });
    }

    fn handle_rtp(&mut self, now: Instant, from: SocketAddr, pkt: &[u8]) {
        self.stats.rtp_received += 1;
        if pkt.len() < 12 {
            self.stats.dropped_malformed += 1;
            return;
        }
        let Some((id, conn)) = self
            .by_addr
            .get(&from)
            .and_then(|id| self.conns.get_mut(id).map(|c| (*id, c)))
        else {
            self.stats.dropped_unknown_peer += 1;
            return;
        };
        conn.stats.packets_received += 1;
        conn.stats.bytes_received += pkt.len() as u64;
        let Some(srtp) = conn.srtp.as_mut() else {
            self.stats.dropped_srtp += 1;
            return;
        };
        let pt = pkt[1] & 0x7F;
        let Some(&(_, out_ssrc)) = conn.tracks.iter().find(|t| t.0 == pt) else {
            trace!(conn = id.0, pt, "RTP for an undeclared payload type");
            return;
        };
        let Some(mut plain) = srtp.unprotect_rtp(pkt) else {
            self.stats.dropped_srtp += 1;
            return;
        };
        let channel = conn.channel;
        let arrival = self.since_epoch(now);
        let Some(track) = self.tracks.get_mut(&out_ssrc) else {
            return;
        };
        let seq = u16::from_be_bytes([plain[2], plain[3]]);
        let ts = u32::from_be_bytes([plain[4], plain[5], plain[6], plain[7]]);
        let ssrc = u32::from_be_bytes([plain[8], plain[9], plain[10], plain[11]]);
        let mut key_frame_now = false;
        match track.in_ssrc {
            None => {
                debug!(conn = id.0, ssrc, out_ssrc, "track SSRC learned");
                track.in_ssrc = Some(ssrc);
                key_frame_now = track.pli_pending;
            }
            Some(known) if known != ssrc => {
                trace!(conn = id.0, ssrc, "second SSRC on a payload type");
                return;
            }
            Some(_) => {}
        }
        track
            .recv
            .update(seq, ts, rtcp::rtp_ticks(arrival, track.clock_rate));
        track.last_packet = Some((ts, now));
        track.packets += 1;
        track.octets += plain.len() as u64;
        // The decrypted packet is ours: rewrite its SSRC in place.
        plain[8..12].copy_from_slice(&out_ssrc.to_be_bytes());
        track.buffer.store(seq, &plain, now);

        if self.owned.get(&channel).copied().unwrap_or(true) {
            if let Some(subs) = self.fanout.get(&id) {
                for sub in subs {
                    if send_rtp(&mut self.conns, &mut self.tx, *sub, &plain) {
                        self.stats.rtp_forwarded += 1;
                    }
                }
            }
        }
        if key_frame_now {
            self.request_key_frame(now, out_ssrc);
        }
    }

    fn handle_rtcp(&mut self, now: Instant, from: SocketAddr, pkt: &[u8]) {
        self.stats.rtcp_received += 1;
        if pkt.len() < 8 {
            self.stats.dropped_malformed += 1;
            return;
        }
        let Some(&id) = self.by_addr.get(&from) else {
            self.stats.dropped_unknown_peer += 1;
            return;
        };
        let Some(conn) = self.conns.get_mut(&id) else {
            self.stats.dropped_unknown_peer += 1;
            return;
        };
        conn.stats.packets_received += 1;
        conn.stats.bytes_received += pkt.len() as u64;
        let Some(plain) = conn.srtp.as_mut().and_then(|s| s.unprotect_rtcp(pkt)) else {
            self.stats.dropped_srtp += 1;
            return;
        };
        let Some(feedback) = rtcp::parse(&plain) else {
            self.stats.dropped_malformed += 1;
            return;
        };
        for fb in feedback {
            match fb {
                Feedback::KeyFrame { media_ssrc, .. } => {
                    if let Some(c) = self.conns.get_mut(&id) {
                        c.stats.plis_received += 1;
                    }
                    if self.is_subscribed(id, media_ssrc) {
                        self.request_key_frame(now, media_ssrc);
                    }
                }
                Feedback::Nack { media_ssrc, lost } => {
                    self.stats.nacks_received += 1;
                    if let Some(c) = self.conns.get_mut(&id) {
                        c.stats.nacks_received += 1;
                    }
                    if self.is_subscribed(id, media_ssrc) {
                        self.retransmit(now, id, media_ssrc, &lost);
                    }
                }
                Feedback::SenderReport { ssrc, ntp, rtp } => {
                    let Some(conn) = self.conns.get(&id) else {
                        continue;
                    };
                    for (_, out) in &conn.tracks {
                        if let Some(t) = self.tracks.get_mut(out) {
                            if t.in_ssrc == Some(ssrc) {
                                t.last_sr = Some((ntp, rtp, now));
                            }
                        }
                    }
                }
            }
        }
    }

    /// Whether `sub` receives the track `out_ssrc` and the track's channel is
    /// owned here.
    fn is_subscribed(&self, sub: ConnId, out_ssrc: u32) -> bool {
        let Some(track) = self.tracks.get(&out_ssrc) else {
            return false;
        };
        self.fanout
            .get(&track.publisher)
            .is_some_and(|subs| subs.contains(&sub))
    }

    fn retransmit(&mut self, now: Instant, sub: ConnId, out_ssrc: u32, lost: &[u16]) {
        let Some(track) = self.tracks.get(&out_ssrc) else {
            return;
        };
        for &seq in lost {
            let Some(pkt) = track.buffer.get(seq, now, self.config.retransmit_window) else {
                trace!(seq, out_ssrc, "NACKed packet no longer held");
                continue;
            };
            if send_rtp(&mut self.conns, &mut self.tx, sub, pkt) {
                self.stats.retransmissions_sent += 1;
            }
        }
    }

    /// Sends a PLI for the track to its publisher, at most one per
    /// `key_frame_interval`; a request inside the interval, or before the
    /// incoming SSRC is known, is deferred rather than lost.
    fn request_key_frame(&mut self, now: Instant, out_ssrc: u32) {
        let Some(track) = self.tracks.get_mut(&out_ssrc) else {
            return;
        };
        if track.kind != MediaKind::Video {
            return;
        }
        let Some(in_ssrc) = track.in_ssrc else {
            track.pli_pending = true;
            return;
        };
        if let Some(last) = track.last_pli {
            let due = last + self.config.key_frame_interval;
            if now < due {
                track.pli_pending = true;
                self.key_frame_due = Some(self.key_frame_due.map_or(due, |d| d.min(due)));
                return;
            }
        }
        track.last_pli = Some(now);
        track.pli_pending = false;
        let publisher = track.publisher;
        if self.send_rtcp(publisher, &[rtcp::pli(rtcp_ssrc(publisher), in_ssrc)]) {
            self.stats.key_frame_requests_sent += 1;
        }
    }

    /// Protects and queues a compound RTCP packet to `id`'s selected address.
    fn send_rtcp(&mut self, id: ConnId, packets: &[RtcpPacket]) -> bool {
        let Some(conn) = self.conns.get_mut(&id) else {
            return false;
        };
        let (Some(dest), Some(srtp)) = (conn.selected, conn.srtp.as_mut()) else {
            return false;
        };
        if conn.consent_expired {
            return false;
        }
        let Some(out) = rtcp::marshal(packets).and_then(|raw| srtp.protect_rtcp(&raw)) else {
            return false;
        };
        conn.stats.packets_sent += 1;
        conn.stats.bytes_sent += out.len() as u64;
        self.tx.push(dest, &out);
        true
    }

    // ---- commands --------------------------------------------------------

    pub fn handle_command(&mut self, now: Instant, cmd: Command) {
        self.touch(now);
        match cmd {
            Command::AddConnection {
                conn,
                channel,
                local_ufrag,
                local_pwd,
                send,
                recv,
            } => {
                debug!(
                    conn = conn.0,
                    channel = channel.0,
                    send,
                    recv,
                    "add connection"
                );
                self.remove_connection(conn);
                self.by_ufrag.insert(local_ufrag.as_bytes().to_vec(), conn);
                self.conns.insert(
                    conn,
                    Conn {
                        channel,
                        local_ufrag,
                        local_pwd,
                        selected: None,
                        validated: Vec::new(),
                        last_check: now,
                        consent_expired: false,
                        srtp: None,
                        tracks: Vec::new(),
                        subscribed_to: Vec::new(),
                        stats: ConnStats::default(),
                    },
                );
            }
            Command::SetSrtpKeys {
                conn,
                profile,
                local_key,
                local_salt,
                remote_key,
                remote_salt,
            } => {
                let Some(c) = self.conns.get_mut(&conn) else {
                    return;
                };
                match SrtpSession::new(profile, &local_key, &local_salt, &remote_key, &remote_salt)
                {
                    Ok(s) => {
                        debug!(conn = conn.0, ?profile, "SRTP keys installed");
                        c.srtp = Some(s);
                    }
                    Err(e) => warn!(conn = conn.0, error = %e, "SRTP keys rejected"),
                }
            }
            Command::AddPublisherTrack {
                conn,
                kind,
                payload_type,
                clock_rate,
                out_ssrc,
            } => {
                let Some(c) = self.conns.get_mut(&conn) else {
                    return;
                };
                // A payload type or out_ssrc declared again replaces the old track.
                let replaced: Vec<u32> = c
                    .tracks
                    .iter()
                    .filter(|t| t.0 == payload_type || t.1 == out_ssrc)
                    .map(|t| t.1)
                    .collect();
                c.tracks.retain(|t| t.0 != payload_type && t.1 != out_ssrc);
                c.tracks.push((payload_type, out_ssrc));
                for old in replaced {
                    self.tracks.remove(&old);
                }
                let mut track = Track::new(conn, kind, payload_type, clock_rate, out_ssrc);
                track.pli_pending = self.fanout.get(&conn).is_some_and(|s| !s.is_empty());
                if let Some(old) = self.tracks.insert(out_ssrc, track) {
                    if old.publisher != conn {
                        if let Some(c) = self.conns.get_mut(&old.publisher) {
                            c.tracks.retain(|t| t.1 != out_ssrc);
                        }
                    }
                }
            }
            Command::Subscribe {
                subscriber,
                publisher,
            } => {
                let Some(sub) = self.conns.get_mut(&subscriber) else {
                    return;
                };
                if !sub.subscribed_to.contains(&publisher) {
                    sub.subscribed_to.push(publisher);
                }
                let subs = self.fanout.entry(publisher).or_default();
                if !subs.contains(&subscriber) {
                    subs.push(subscriber);
                }
                self.request_key_frames(now, publisher);
            }
            Command::Unsubscribe {
                subscriber,
                publisher,
            } => {
                if let Some(sub) = self.conns.get_mut(&subscriber) {
                    sub.subscribed_to.retain(|p| *p != publisher);
                }
                if let Some(subs) = self.fanout.get_mut(&publisher) {
                    subs.retain(|s| *s != subscriber);
                }
            }
            Command::RemoveConnection { conn } => self.remove_connection(conn),
            Command::SendDtls { conn, data } => {
                match self.conns.get(&conn).and_then(|c| c.selected) {
                    Some(dest) => self.tx.push(dest, &data),
                    None => trace!(conn = conn.0, "DTLS before an address is selected"),
                }
            }
            Command::RequestKeyFrame { conn } => self.request_key_frames(now, conn),
            Command::SetChannelOwned { channel, owned } => {
                debug!(channel = channel.0, owned, "channel ownership");
                self.owned.insert(channel, owned);
            }
            Command::Shutdown => {}
        }
    }

    fn request_key_frames(&mut self, now: Instant, publisher: ConnId) {
        let Some(conn) = self.conns.get(&publisher) else {
            return;
        };
        let ssrcs: Vec<u32> = conn.tracks.iter().map(|t| t.1).collect();
        for out_ssrc in ssrcs {
            self.request_key_frame(now, out_ssrc);
        }
    }

    fn remove_connection(&mut self, id: ConnId) {
        let Some(conn) = self.conns.remove(&id) else {
            return;
        };
        debug!(conn = id.0, "remove connection");
        if self.by_ufrag.get(conn.local_ufrag.as_bytes()) == Some(&id) {
            self.by_ufrag.remove(conn.local_ufrag.as_bytes());
        }
        for addr in &conn.validated {
            if self.by_addr.get(addr) == Some(&id) {
                self.by_addr.remove(addr);
            }
        }
        for (_, out_ssrc) in &conn.tracks {
            self.tracks.remove(out_ssrc);
        }
        for publisher in &conn.subscribed_to {
            if let Some(subs) = self.fanout.get_mut(publisher) {
                subs.retain(|s| *s != id);
            }
        }
        for sub in self.fanout.remove(&id).unwrap_or_default() {
            if let Some(c) = self.conns.get_mut(&sub) {
                c.subscribed_to.retain(|p| *p != id);
            }
        }
    }

    // ---- timers ----------------------------------------------------------

    pub fn handle_timeout(&mut self, now: Instant) {
        self.touch(now);
        if self.key_frame_due.is_some_and(|due| due <= now) {
            self.key_frame_due = None;
            let pending: Vec<u32> = self
                .tracks
                .values()
                .filter(|t| t.pli_pending && t.in_ssrc.is_some())
                .map(|t| t.out_ssrc)
                .collect();
            for out_ssrc in pending {
                self.request_key_frame(now, out_ssrc);
            }
        }
        if self.next_report.is_some_and(|t| t <= now) {
            self.next_report = Some(now + self.config.report_interval);
            self.send_reports(now);
        }
        if self.next_stats.is_some_and(|t| t <= now) {
            self.next_stats = Some(now + self.config.stats_interval);
            self.check_consent(now);
            self.emit(Event::CoreStats(self.stats.clone()));
            let conn_stats: Vec<Event> = self
                .conns
                .iter()
                .map(|(id, c)| Event::ConnStats {
                    conn: *id,
                    stats: c.stats.clone(),
                })
                .collect();
            for ev in conn_stats {
                self.emit(ev);
            }
        }
    }

    fn check_consent(&mut self, now: Instant) {
        let mut expired = Vec::new();
        for (id, c) in &mut self.conns {
            if !c.consent_expired
                && now.saturating_duration_since(c.last_check) >= self.config.consent_timeout
            {
                c.consent_expired = true;
                expired.push(*id);
            }
        }
        for conn in expired {
            debug!(conn = conn.0, "consent expired");
            self.emit(Event::ConsentExpired { conn });
        }
    }

    /// Receiver reports for what each connection publishes, sender reports
    /// for what it receives, in one compound packet per connection.
    fn send_reports(&mut self, now: Instant) {
        let wall_ntp = rtcp::ntp_from_system(self.config.wallclock + self.since_epoch(now));
        let ids: Vec<ConnId> = self.conns.keys().copied().collect();
        for id in ids {
            let conn = &self.conns[&id];
            if conn.srtp.is_none() || conn.selected.is_none() || conn.consent_expired {
                continue;
            }
            let mut packets: Vec<RtcpPacket> = Vec::new();
            for publisher in &conn.subscribed_to {
                let Some(p) = self.conns.get(publisher) else {
                    continue;
                };
                if !self.owned.get(&p.channel).copied().unwrap_or(true) {
                    continue;
                }
                for (_, out_ssrc) in &p.tracks {
                    if let Some(t) = self.tracks.get(out_ssrc) {
                        if let Some((ntp, rtp)) = sender_report_times(t, now, wall_ntp) {
                            packets.push(rtcp::sender_report(
                                t.out_ssrc, ntp, rtp, t.packets, t.octets,
                            ));
                        }
                    }
                }
            }
            let mut blocks = Vec::new();
            for (_, out_ssrc) in &conn.tracks {
                let Some(t) = self.tracks.get_mut(out_ssrc) else {
                    continue;
                };
                let Some(in_ssrc) = t.in_ssrc else {
                    continue;
                };
                if !t.recv.started() || blocks.len() >= MAX_REPORT_BLOCKS {
                    continue;
                }
                let r = t.recv.report();
                let (lsr, dlsr) = match t.last_sr {
                    Some((ntp, _, at)) => (
                        (ntp >> 16) as u32,
                        (rtcp::ntp_duration(now.saturating_duration_since(at)) >> 16) as u32,
                    ),
                    None => (0, 0),
                };
                blocks.push(rtcp::Block {
                    ssrc: in_ssrc,
                    fraction_lost: r.fraction_lost,
                    total_lost: r.total_lost,
                    extended_highest: r.extended_highest,
                    jitter: r.jitter,
                    last_sender_report: lsr,
                    delay: dlsr,
                });
            }
            if !blocks.is_empty() {
                packets.push(rtcp::receiver_report(rtcp_ssrc(id), &blocks));
            }
            if !packets.is_empty() {
                self.send_rtcp(id, &packets);
            }
        }
    }
}

/// NTP and RTP time of a sender report for `t` at `now`: extrapolated from
/// the publisher's last SR when there is one (keeps its tracks in lip sync),
/// otherwise from the last packet's arrival and the clock rate.
fn sender_report_times(t: &Track, now: Instant, wall_ntp: u64) -> Option<(u64, u32)> {
    if let Some((ntp, rtp, at)) = t.last_sr {
        let e = now.saturating_duration_since(at);
        return Some((
            ntp.wrapping_add(rtcp::ntp_duration(e)),
            rtp.wrapping_add(rtcp::rtp_ticks(e, t.clock_rate)),
        ));
    }
    let (ts, at) = t.last_packet?;
    let e = now.saturating_duration_since(at);
    Some((wall_ntp, ts.wrapping_add(rtcp::rtp_ticks(e, t.clock_rate))))
}

/// Protects `pkt` for `sub` and queues it, if `sub` has keys, a selected
/// address and consent.
fn send_rtp(
    conns: &mut HashMap<ConnId, Conn>,
    tx: &mut TransmitQueue,
    sub: ConnId,
    pkt: &[u8],
) -> bool {
    let Some(c) = conns.get_mut(&sub) else {
        return false;
    };
    let (Some(dest), Some(srtp)) = (c.selected, c.srtp.as_mut()) else {
        return false;
    };
    if c.consent_expired {
        return false;
    }
    let Some(out) = srtp.protect_rtp(pkt) else {
        return false;
    };
    c.stats.packets_sent += 1;
    c.stats.bytes_sent += out.len() as u64;
    tx.push(dest, &out);
    true
}

#[cfg(test)]
mod tests;

//! The messages carried by the rings, and their fixed, versioned binary layout.
//!
//! Every record in a ring is `[u16 layout version][u16 message tag][payload]`,
//! little-endian. Decoding never panics: a short, unknown or inconsistent
//! record is a [`DecodeError`].
//!
//! Field encodings:
//!
//! | field | bytes |
//! |---|---|
//! | `ConnId`, `ChannelKey`, `u32` | `u32` |
//! | `bool` | `u8`, 0 or 1 |
//! | `MediaKind` | `u8` (its discriminant) |
//! | `SrtpProfile` | `u16` (its IANA id) |
//! | `String`, `Vec<u8>` | `u16` length, then the bytes (UTF-8 for strings) |
//! | `SocketAddr` | `u8` family (4 or 6), 16 address bytes (IPv4: 4 bytes then 12 zeros), `u16` port |
//! | every `CoreStats` / `ConnStats` field | `u64` |
//!
//! Payloads, fields in this order:
//!
//! | tag | message | payload |
//! |---|---|---|
//! | `0x0001` | `Command::AddConnection` | conn, channel, local_ufrag, local_pwd, send, recv |
//! | `0x0002` | `Command::SetSrtpKeys` | conn, profile, local_key, local_salt, remote_key, remote_salt |
//! | `0x0003` | `Command::AddPublisherTrack` | conn, kind, payload_type (`u8`), clock_rate, out_ssrc |
//! | `0x0004` | `Command::Subscribe` | subscriber, publisher |
//! | `0x0005` | `Command::Unsubscribe` | subscriber, publisher |
//! | `0x0006` | `Command::RemoveConnection` | conn |
//! | `0x0007` | `Command::SendDtls` | conn, data |
//! | `0x0008` | `Command::RequestKeyFrame` | conn |
//! | `0x0009` | `Command::SetChannelOwned` | channel, owned |
//! | `0x000a` | `Command::Shutdown` | (none) |
//! | `0x0101` | `Event::IceSelected` | conn, peer |
//! | `0x0102` | `Event::ConsentExpired` | conn |
//! | `0x0103` | `Event::DtlsReceived` | conn, data |
//! | `0x0104` | `Event::CoreStats` | core, then the counters in declaration order |
//! | `0x0105` | `Event::ConnStats` | conn, then the counters in declaration order |
//!
//! Commands and events use disjoint tags, so a record read from the wrong ring
//! is an [`DecodeError::UnknownTag`]. An encoding is canonical: a record that
//! decodes re-encodes to the same bytes (bytes after the last field, a bool
//! other than 0/1 or a non-zero IPv4 padding byte are errors). An IPv6
//! address's flow info and scope id are not carried.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Version of the binary layout; bump it on any incompatible change.
pub const LAYOUT_VERSION: u16 = 1;

/// Node-local connection handle, assigned by the control plane, never reused
/// while the node runs.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u32);

/// Node-local channel handle, assigned by the control plane per `channel_id`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelKey(pub u32);

#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum MediaKind {
    Audio = 0,
    Video = 1,
}

/// SRTP protection profiles, with their IANA DTLS-SRTP ids.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum SrtpProfile {
    Aes128CmHmacSha1_80 = 0x0001,
    AeadAes128Gcm = 0x0007,
}

/// Control plane -> data plane.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// A new connection on this core: its local ICE credentials (the server's
    /// ufrag/pwd from the offer) and its channel. Sent before the offer leaves,
    /// so the first STUN check finds it.
    AddConnection {
        conn: ConnId,
        channel: ChannelKey,
        local_ufrag: String,
        local_pwd: String,
        /// The connection publishes media (role sendrecv or sendonly).
        send: bool,
        /// The connection receives media (role sendrecv or recvonly).
        recv: bool,
    },
    /// Keys exported from the finished DTLS handshake (RFC 5764 §4.2). "local" is
    /// what this node protects with; "remote" is what it unprotects with. Until
    /// these arrive, SRTP/SRTCP from the peer is dropped (counted).
    SetSrtpKeys {
        conn: ConnId,
        profile: SrtpProfile,
        local_key: Vec<u8>,
        local_salt: Vec<u8>,
        remote_key: Vec<u8>,
        remote_salt: Vec<u8>,
    },
    /// A track the connection publishes, recognised by its payload type on that
    /// connection. Subscribers see it with SSRC `out_ssrc`.
    AddPublisherTrack {
        conn: ConnId,
        kind: MediaKind,
        payload_type: u8,
        clock_rate: u32,
        out_ssrc: u32,
    },
    /// Start forwarding every track of `publisher` to `subscriber` (after the
    /// subscriber's re-answer). Triggers a key frame request to the publisher.
    Subscribe {
        subscriber: ConnId,
        publisher: ConnId,
    },
    /// Stop forwarding `publisher` to `subscriber`.
    Unsubscribe {
        subscriber: ConnId,
        publisher: ConnId,
    },
    /// Forget the connection: its subscriptions, tracks, keys and address.
    RemoveConnection { conn: ConnId },
    /// DTLS record(s) to send to the connection's selected peer address.
    SendDtls { conn: ConnId, data: Vec<u8> },
    /// Ask the publisher `conn` for a key frame on all its video tracks.
    RequestKeyFrame { conn: ConnId },
    /// This node owns (or no longer owns) the channel; media is only forwarded in
    /// owned channels.
    SetChannelOwned { channel: ChannelKey, owned: bool },
    /// Stop the core's loop (node shutdown).
    Shutdown,
}

/// Data plane -> control plane.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The peer's first valid binding request with USE-CANDIDATE: `peer` is the
    /// selected address (also sent again when the selected address changes).
    IceSelected { conn: ConnId, peer: SocketAddr },
    /// No valid binding request from the peer within the consent timeout.
    ConsentExpired { conn: ConnId },
    /// DTLS record(s) received from the connection's peer. May be dropped (and
    /// counted) when the event ring is full: DTLS retransmits.
    DtlsReceived { conn: ConnId, data: Vec<u8> },
    /// Counters of one core, sent about once a second. Droppable.
    CoreStats(CoreStats),
    /// Counters of one connection, sent about once a second. Droppable.
    ConnStats { conn: ConnId, stats: ConnStats },
}

/// Monotonic counters of one data-plane core.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CoreStats {
    pub core: u16,
    pub udp_received: u64,
    pub udp_sent: u64,
    pub rtp_received: u64,
    pub rtp_forwarded: u64,
    pub rtcp_received: u64,
    pub stun_received: u64,
    pub dtls_received: u64,
    /// Not STUN, DTLS, RTP or RTCP, or too short to be any of them.
    pub dropped_malformed: u64,
    /// STUN whose USERNAME is unknown or whose MESSAGE-INTEGRITY/FINGERPRINT fails.
    pub dropped_stun_auth: u64,
    /// SRTP/SRTCP that fails authentication or arrives before keys.
    pub dropped_srtp: u64,
    /// DTLS/SRTP from an address that is no connection's selected peer.
    pub dropped_unknown_peer: u64,
    /// Events dropped because the event ring was full.
    pub dropped_events: u64,
    /// Ring records that failed to decode.
    pub dropped_bad_command: u64,
    pub nacks_received: u64,
    pub retransmissions_sent: u64,
    pub key_frame_requests_sent: u64,
}

impl CoreStats {
    /// Every counter by name, in the order of the binary layout.
    pub fn counters(&self) -> [(&'static str, u64); 16] {
        [
            ("udp_received", self.udp_received),
            ("udp_sent", self.udp_sent),
            ("rtp_received", self.rtp_received),
            ("rtp_forwarded", self.rtp_forwarded),
            ("rtcp_received", self.rtcp_received),
            ("stun_received", self.stun_received),
            ("dtls_received", self.dtls_received),
            ("dropped_malformed", self.dropped_malformed),
            ("dropped_stun_auth", self.dropped_stun_auth),
            ("dropped_srtp", self.dropped_srtp),
            ("dropped_unknown_peer", self.dropped_unknown_peer),
            ("dropped_events", self.dropped_events),
            ("dropped_bad_command", self.dropped_bad_command),
            ("nacks_received", self.nacks_received),
            ("retransmissions_sent", self.retransmissions_sent),
            ("key_frame_requests_sent", self.key_frame_requests_sent),
        ]
    }

    /// The counters, mutable, in the order of [`CoreStats::counters`].
    fn counters_mut(&mut self) -> [&mut u64; 16] {
        [
            &mut self.udp_received,
            &mut self.udp_sent,
            &mut self.rtp_received,
            &mut self.rtp_forwarded,
            &mut self.rtcp_received,
            &mut self.stun_received,
            &mut self.dtls_received,
            &mut self.dropped_malformed,
            &mut self.dropped_stun_auth,
            &mut self.dropped_srtp,
            &mut self.dropped_unknown_peer,
            &mut self.dropped_events,
            &mut self.dropped_bad_command,
            &mut self.nacks_received,
            &mut self.retransmissions_sent,
            &mut self.key_frame_requests_sent,
        ]
    }

    /// Adds `other`'s counters to these (totals over cores).
    pub fn add(&mut self, other: &CoreStats) {
        for (mine, (_, theirs)) in self.counters_mut().into_iter().zip(other.counters()) {
            *mine += theirs;
        }
    }
}

/// Monotonic counters of one connection.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConnStats {
    pub packets_received: u64,
    pub bytes_received: u64,
    pub packets_sent: u64,
    pub bytes_sent: u64,
    pub nacks_received: u64,
    pub plis_received: u64,
}

/// Why a ring record could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record is {0} bytes, shorter than its fields")]
    Truncated(usize),
    #[error("layout version {0}, expected {LAYOUT_VERSION}")]
    Version(u16),
    #[error("unknown message tag {0}")]
    UnknownTag(u16),
    #[error("invalid field {0}")]
    InvalidField(&'static str),
}

/// Longest string or byte field a record can carry: its length is a `u16`.
///
/// Every field of the protocol stays well below it: ICE ufrag/pwd are at most
/// 256 characters, SRTP keys and salts a few dozen bytes, and a DTLS datagram
/// fits in one UDP datagram (at most 65,507 bytes of payload over IPv4, 65,527
/// over IPv6).
pub const MAX_FIELD_LEN: usize = u16::MAX as usize;

/// Why a message could not be encoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EncodeError {
    /// A string or byte field is longer than [`MAX_FIELD_LEN`]; the message
    /// cannot be carried as it is (split or refuse it before it gets here).
    #[error("field {field} is {len} bytes, longer than {MAX_FIELD_LEN}")]
    FieldTooLong { field: &'static str, len: usize },
}

/// Message tags. Commands and events use disjoint ranges.
mod tag {
    pub const ADD_CONNECTION: u16 = 0x0001;
    pub const SET_SRTP_KEYS: u16 = 0x0002;
    pub const ADD_PUBLISHER_TRACK: u16 = 0x0003;
    pub const SUBSCRIBE: u16 = 0x0004;
    pub const UNSUBSCRIBE: u16 = 0x0005;
    pub const REMOVE_CONNECTION: u16 = 0x0006;
    pub const SEND_DTLS: u16 = 0x0007;
    pub const REQUEST_KEY_FRAME: u16 = 0x0008;
    pub const SET_CHANNEL_OWNED: u16 = 0x0009;
    pub const SHUTDOWN: u16 = 0x000a;

    pub const ICE_SELECTED: u16 = 0x0101;
    pub const CONSENT_EXPIRED: u16 = 0x0102;
    pub const DTLS_RECEIVED: u16 = 0x0103;
    pub const CORE_STATS: u16 = 0x0104;
    pub const CONN_STATS: u16 = 0x0105;
}

const FAMILY_V4: u8 = 4;
const FAMILY_V6: u8 = 6;

impl Command {
    /// Appends this command's record to `out`.
    ///
    /// # Panics
    ///
    /// If a string or byte field is longer than [`MAX_FIELD_LEN`], which no
    /// well-formed command is; use [`Command::try_encode`] where the length
    /// is not already bounded.
    pub fn encode(&self, out: &mut Vec<u8>) {
        if let Err(e) = self.try_encode(out) {
            panic!("cannot encode command: {e}");
        }
    }

    /// Appends this command's record to `out`, or leaves `out` as it was and
    /// returns why the command cannot be encoded.
    pub fn try_encode(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        let start = out.len();
        let result = self.write(&mut Writer { out: &mut *out });
        if result.is_err() {
            out.truncate(start);
        }
        result
    }

    fn write(&self, w: &mut Writer<'_>) -> Result<(), EncodeError> {
        match self {
            Command::AddConnection {
                conn,
                channel,
                local_ufrag,
                local_pwd,
                send,
                recv,
            } => {
                w.header(tag::ADD_CONNECTION);
                w.u32(conn.0);
                w.u32(channel.0);
                w.bytes("local_ufrag", local_ufrag.as_bytes())?;
                w.bytes("local_pwd", local_pwd.as_bytes())?;
                w.bool(*send);
                w.bool(*recv);
            }
            Command::SetSrtpKeys {
                conn,
                profile,
                local_key,
                local_salt,
                remote_key,
                remote_salt,
            } => {
                w.header(tag::SET_SRTP_KEYS);
                w.u32(conn.0);
                w.u16(*profile as u16);
                w.bytes("local_key", local_key)?;
                w.bytes("local_salt", local_salt)?;
                w.bytes("remote_key", remote_key)?;
                w.bytes("remote_salt", remote_salt)?;
            }
            Command::AddPublisherTrack {
                conn,
                kind,
                payload_type,
                clock_rate,
                out_ssrc,
            } => {
                w.header(tag::ADD_PUBLISHER_TRACK);
                w.u32(conn.0);
                w.u8(*kind as u8);
                w.u8(*payload_type);
                w.u32(*clock_rate);
                w.u32(*out_ssrc);
            }
            Command::Subscribe {
                subscriber,
                publisher,
            } => {
                w.header(tag::SUBSCRIBE);
                w.u32(subscriber.0);
                w.u32(publisher.0);
            }
            Command::Unsubscribe {
                subscriber,
                publisher,
            } => {
                w.header(tag::UNSUBSCRIBE);
                w.u32(subscriber.0);
                w.u32(publisher.0);
            }
            Command::RemoveConnection { conn } => {
                w.header(tag::REMOVE_CONNECTION);
                w.u32(conn.0);
            }
            Command::SendDtls { conn, data } => {
                w.header(tag::SEND_DTLS);
                w.u32(conn.0);
                w.bytes("data", data)?;
            }
            Command::RequestKeyFrame { conn } => {
                w.header(tag::REQUEST_KEY_FRAME);
                w.u32(conn.0);
            }
            Command::SetChannelOwned { channel, owned } => {
                w.header(tag::SET_CHANNEL_OWNED);
                w.u32(channel.0);
                w.bool(*owned);
            }
            Command::Shutdown => w.header(tag::SHUTDOWN),
        }
        Ok(())
    }

    /// Decodes one record. Never panics; any record that is not exactly the
    /// encoding of a command is an error.
    pub fn decode(record: &[u8]) -> Result<Command, DecodeError> {
        let mut r = Reader::new(record);
        let cmd = match r.header()? {
            tag::ADD_CONNECTION => Command::AddConnection {
                conn: r.conn()?,
                channel: r.channel()?,
                local_ufrag: r.string("local_ufrag")?,
                local_pwd: r.string("local_pwd")?,
                send: r.bool("send")?,
                recv: r.bool("recv")?,
            },
            tag::SET_SRTP_KEYS => Command::SetSrtpKeys {
                conn: r.conn()?,
                profile: r.profile()?,
                local_key: r.bytes()?.to_vec(),
                local_salt: r.bytes()?.to_vec(),
                remote_key: r.bytes()?.to_vec(),
                remote_salt: r.bytes()?.to_vec(),
            },
            tag::ADD_PUBLISHER_TRACK => Command::AddPublisherTrack {
                conn: r.conn()?,
                kind: r.kind()?,
                payload_type: r.u8()?,
                clock_rate: r.u32()?,
                out_ssrc: r.u32()?,
            },
            tag::SUBSCRIBE => Command::Subscribe {
                subscriber: r.conn()?,
                publisher: r.conn()?,
            },
            tag::UNSUBSCRIBE => Command::Unsubscribe {
                subscriber: r.conn()?,
                publisher: r.conn()?,
            },
            tag::REMOVE_CONNECTION => Command::RemoveConnection { conn: r.conn()? },
            tag::SEND_DTLS => Command::SendDtls {
                conn: r.conn()?,
                data: r.bytes()?.to_vec(),
            },
            tag::REQUEST_KEY_FRAME => Command::RequestKeyFrame { conn: r.conn()? },
            tag::SET_CHANNEL_OWNED => Command::SetChannelOwned {
                channel: r.channel()?,
                owned: r.bool("owned")?,
            },
            tag::SHUTDOWN => Command::Shutdown,
            other => return Err(DecodeError::UnknownTag(other)),
        };
        r.finish()?;
        Ok(cmd)
    }
}

impl Event {
    /// Appends this event's record to `out`.
    ///
    /// # Panics
    ///
    /// If `DtlsReceived::data` is longer than [`MAX_FIELD_LEN`], which one UDP
    /// datagram never is; use [`Event::try_encode`] where the length is not
    /// already bounded.
    pub fn encode(&self, out: &mut Vec<u8>) {
        if let Err(e) = self.try_encode(out) {
            panic!("cannot encode event: {e}");
        }
    }

    /// Appends this event's record to `out`, or leaves `out` as it was and
    /// returns why the event cannot be encoded.
    pub fn try_encode(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        let start = out.len();
        let result = self.write(&mut Writer { out: &mut *out });
        if result.is_err() {
            out.truncate(start);
        }
        result
    }

    fn write(&self, w: &mut Writer<'_>) -> Result<(), EncodeError> {
        match self {
            Event::IceSelected { conn, peer } => {
                w.header(tag::ICE_SELECTED);
                w.u32(conn.0);
                w.addr(peer);
            }
            Event::ConsentExpired { conn } => {
                w.header(tag::CONSENT_EXPIRED);
                w.u32(conn.0);
            }
            Event::DtlsReceived { conn, data } => {
                w.header(tag::DTLS_RECEIVED);
                w.u32(conn.0);
                w.bytes("data", data)?;
            }
            Event::CoreStats(s) => {
                w.header(tag::CORE_STATS);
                w.u64(u64::from(s.core));
                for (_, v) in s.counters() {
                    w.u64(v);
                }
            }
            Event::ConnStats { conn, stats: s } => {
                w.header(tag::CONN_STATS);
                w.u32(conn.0);
                for v in [
                    s.packets_received,
                    s.bytes_received,
                    s.packets_sent,
                    s.bytes_sent,
                    s.nacks_received,
                    s.plis_received,
                ] {
                    w.u64(v);
                }
            }
        }
        Ok(())
    }

    /// Decodes one record. Never panics; any record that is not exactly the
    /// encoding of an event is an error.
    pub fn decode(record: &[u8]) -> Result<Event, DecodeError> {
        let mut r = Reader::new(record);
        let ev = match r.header()? {
            tag::ICE_SELECTED => Event::IceSelected {
                conn: r.conn()?,
                peer: r.addr("peer")?,
            },
            tag::CONSENT_EXPIRED => Event::ConsentExpired { conn: r.conn()? },
            tag::DTLS_RECEIVED => Event::DtlsReceived {
                conn: r.conn()?,
                data: r.bytes()?.to_vec(),
            },
            tag::CORE_STATS => {
                let mut s = CoreStats {
                    core: u16::try_from(r.u64()?).map_err(|_| DecodeError::InvalidField("core"))?,
                    ..CoreStats::default()
                };
                for c in s.counters_mut() {
                    *c = r.u64()?;
                }
                Event::CoreStats(s)
            }
            tag::CONN_STATS => Event::ConnStats {
                conn: r.conn()?,
                stats: ConnStats {
                    packets_received: r.u64()?,
                    bytes_received: r.u64()?,
                    packets_sent: r.u64()?,
                    bytes_sent: r.u64()?,
                    nacks_received: r.u64()?,
                    plis_received: r.u64()?,
                },
            },
            other => return Err(DecodeError::UnknownTag(other)),
        };
        r.finish()?;
        Ok(ev)
    }
}

/// Appends little-endian fields to a record.
struct Writer<'a> {
    out: &'a mut Vec<u8>,
}

impl Writer<'_> {
    fn header(&mut self, tag: u16) {
        self.u16(LAYOUT_VERSION);
        self.u16(tag);
    }

    fn u8(&mut self, v: u8) {
        self.out.push(v);
    }

    fn u16(&mut self, v: u16) {
        self.out.extend_from_slice(&v.to_le_bytes());
    }

    fn u32(&mut self, v: u32) {
        self.out.extend_from_slice(&v.to_le_bytes());
    }

    fn u64(&mut self, v: u64) {
        self.out.extend_from_slice(&v.to_le_bytes());
    }

    fn bool(&mut self, v: bool) {
        self.u8(u8::from(v));
    }

    fn bytes(&mut self, field: &'static str, v: &[u8]) -> Result<(), EncodeError> {
        let len = u16::try_from(v.len()).map_err(|_| EncodeError::FieldTooLong {
            field,
            len: v.len(),
        })?;
        self.u16(len);
        self.out.extend_from_slice(v);
        Ok(())
    }

    fn addr(&mut self, addr: &SocketAddr) {
        let mut ip = [0u8; 16];
        match addr.ip() {
            IpAddr::V4(v4) => {
                self.u8(FAMILY_V4);
                ip[..4].copy_from_slice(&v4.octets());
            }
            IpAddr::V6(v6) => {
                self.u8(FAMILY_V6);
                ip = v6.octets();
            }
        }
        self.out.extend_from_slice(&ip);
        self.u16(addr.port());
    }
}

/// Reads little-endian fields from a record; every read is bounds-checked.
struct Reader<'a> {
    rest: &'a [u8],
    total: usize,
}

impl<'a> Reader<'a> {
    fn new(record: &'a [u8]) -> Self {
        Reader {
            rest: record,
            total: record.len(),
        }
    }

    /// Checks the layout version and returns the tag.
    fn header(&mut self) -> Result<u16, DecodeError> {
        let version = self.u16()?;
        if version != LAYOUT_VERSION {
            return Err(DecodeError::Version(version));
        }
        self.u16()
    }

    fn finish(self) -> Result<(), DecodeError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::InvalidField("trailing bytes"))
        }
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let (head, rest) = self
            .rest
            .split_first_chunk::<N>()
            .ok_or(DecodeError::Truncated(self.total))?;
        self.rest = rest;
        Ok(*head)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        self.array().map(u8::from_le_bytes)
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        self.array().map(u16::from_le_bytes)
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        self.array().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        self.array().map(u64::from_le_bytes)
    }

    fn bool(&mut self, field: &'static str) -> Result<bool, DecodeError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(DecodeError::InvalidField(field)),
        }
    }

    fn conn(&mut self) -> Result<ConnId, DecodeError> {
        self.u32().map(ConnId)
    }

    fn channel(&mut self) -> Result<ChannelKey, DecodeError> {
        self.u32().map(ChannelKey)
    }

    fn kind(&mut self) -> Result<MediaKind, DecodeError> {
        match self.u8()? {
            0 => Ok(MediaKind::Audio),
            1 => Ok(MediaKind::Video),
            _ => Err(DecodeError::InvalidField("kind")),
        }
    }

    fn profile(&mut self) -> Result<SrtpProfile, DecodeError> {
        match self.u16()? {
            0x0001 => Ok(SrtpProfile::Aes128CmHmacSha1_80),
            0x0007 => Ok(SrtpProfile::AeadAes128Gcm),
            _ => Err(DecodeError::InvalidField("profile")),
        }
    }

    /// A `u16` length followed by that many bytes.
    fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let len = usize::from(self.u16()?);
        let (head, rest) = self
            .rest
            .split_at_checked(len)
            .ok_or(DecodeError::Truncated(self.total))?;
        self.rest = rest;
        Ok(head)
    }

    fn string(&mut self, field: &'static str) -> Result<String, DecodeError> {
        let bytes = self.bytes()?;
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| DecodeError::InvalidField(field))
    }

    fn addr(&mut self, field: &'static str) -> Result<SocketAddr, DecodeError> {
        let family = self.u8()?;
        let ip: [u8; 16] = self.array()?;
        let port = self.u16()?;
        let ip = match family {
            FAMILY_V4 => {
                let [a, b, c, d, pad @ ..] = ip;
                if pad.iter().any(|&x| x != 0) {
                    return Err(DecodeError::InvalidField(field));
                }
                IpAddr::V4(Ipv4Addr::new(a, b, c, d))
            }
            FAMILY_V6 => IpAddr::V6(Ipv6Addr::from(ip)),
            _ => return Err(DecodeError::InvalidField(field)),
        };
        Ok(SocketAddr::new(ip, port))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_stats_add_every_counter() {
        let mut one = CoreStats::default();
        for (i, c) in one.counters_mut().into_iter().enumerate() {
            *c = i as u64 + 1;
        }
        let mut total = one.clone();
        total.add(&one);
        for ((name, a), (_, b)) in total.counters().into_iter().zip(one.counters()) {
            assert_eq!(a, 2 * b, "{name}");
        }
    }

    fn commands() -> Vec<Command> {
        vec![
            Command::AddConnection {
                conn: ConnId(1),
                channel: ChannelKey(0xdead_beef),
                local_ufrag: "ufrag".into(),
                local_pwd: "pässwörd-ｕｎｉｃｏｄｅ".into(),
                send: true,
                recv: false,
            },
            Command::AddConnection {
                conn: ConnId(u32::MAX),
                channel: ChannelKey(0),
                local_ufrag: String::new(),
                local_pwd: String::new(),
                send: false,
                recv: true,
            },
            Command::SetSrtpKeys {
                conn: ConnId(2),
                profile: SrtpProfile::Aes128CmHmacSha1_80,
                local_key: vec![1; 16],
                local_salt: vec![2; 14],
                remote_key: vec![3; 16],
                remote_salt: vec![4; 14],
            },
            Command::SetSrtpKeys {
                conn: ConnId(3),
                profile: SrtpProfile::AeadAes128Gcm,
                local_key: vec![],
                local_salt: vec![5; 12],
                remote_key: vec![6; 16],
                remote_salt: vec![],
            },
            Command::AddPublisherTrack {
                conn: ConnId(4),
                kind: MediaKind::Audio,
                payload_type: 111,
                clock_rate: 48_000,
                out_ssrc: 0x1234_5678,
            },
            Command::AddPublisherTrack {
                conn: ConnId(5),
                kind: MediaKind::Video,
                payload_type: 96,
                clock_rate: 90_000,
                out_ssrc: u32::MAX,
            },
            Command::Subscribe {
                subscriber: ConnId(6),
                publisher: ConnId(7),
            },
            Command::Unsubscribe {
                subscriber: ConnId(8),
                publisher: ConnId(9),
            },
            Command::RemoveConnection { conn: ConnId(10) },
            Command::SendDtls {
                conn: ConnId(11),
                data: (0..1200).map(|i| i as u8).collect(),
            },
            Command::SendDtls {
                conn: ConnId(12),
                data: vec![],
            },
            Command::RequestKeyFrame { conn: ConnId(13) },
            Command::SetChannelOwned {
                channel: ChannelKey(14),
                owned: true,
            },
            Command::SetChannelOwned {
                channel: ChannelKey(15),
                owned: false,
            },
            Command::Shutdown,
        ]
    }

    fn events() -> Vec<Event> {
        vec![
            Event::IceSelected {
                conn: ConnId(1),
                peer: "192.0.2.1:5000".parse().unwrap(),
            },
            Event::IceSelected {
                conn: ConnId(2),
                peer: "[2001:db8::1]:65535".parse().unwrap(),
            },
            Event::ConsentExpired { conn: ConnId(3) },
            Event::DtlsReceived {
                conn: ConnId(4),
                data: vec![22, 254, 253, 0, 0],
            },
            Event::DtlsReceived {
                conn: ConnId(5),
                data: vec![],
            },
            Event::CoreStats(CoreStats::default()),
            Event::CoreStats(CoreStats {
                core: u16::MAX,
                udp_received: 1,
                udp_sent: 2,
                rtp_received: 3,
                rtp_forwarded: 4,
                rtcp_received: 5,
                stun_received: 6,
                dtls_received: 7,
                dropped_malformed: 8,
                dropped_stun_auth: 9,
                dropped_srtp: 10,
                dropped_unknown_peer: 11,
                dropped_events: 12,
                dropped_bad_command: 13,
                nacks_received: 14,
                retransmissions_sent: 15,
                key_frame_requests_sent: u64::MAX,
            }),
            Event::ConnStats {
                conn: ConnId(6),
                stats: ConnStats {
                    packets_received: 1,
                    bytes_received: 2,
                    packets_sent: 3,
                    bytes_sent: 4,
                    nacks_received: 5,
                    plis_received: u64::MAX,
                },
            },
        ]
    }

    fn enc_cmd(c: &Command) -> Vec<u8> {
        let mut v = Vec::new();
        c.encode(&mut v);
        v
    }

    fn enc_ev(e: &Event) -> Vec<u8> {
        let mut v = Vec::new();
        e.encode(&mut v);
        v
    }

    fn all_records() -> Vec<Vec<u8>> {
        let cmds = commands().iter().map(enc_cmd).collect::<Vec<_>>();
        let evs = events().iter().map(enc_ev).collect::<Vec<_>>();
        cmds.into_iter().chain(evs).collect()
    }

    use crate::test_rng::Rng;

    #[test]
    fn every_command_round_trips() {
        for cmd in commands() {
            let bytes = enc_cmd(&cmd);
            assert_eq!(Command::decode(&bytes), Ok(cmd.clone()), "{cmd:?}");
        }
    }

    #[test]
    fn every_event_round_trips() {
        for ev in events() {
            let bytes = enc_ev(&ev);
            assert_eq!(Event::decode(&bytes), Ok(ev.clone()), "{ev:?}");
        }
    }

    #[test]
    fn encode_appends_to_what_is_there() {
        let mut out = vec![0xaa, 0xbb];
        Command::Shutdown.encode(&mut out);
        assert_eq!(out, [0xaa, 0xbb, 1, 0, 0x0a, 0]);
    }

    #[test]
    fn layout_is_little_endian_and_fixed() {
        let bytes = enc_cmd(&Command::Subscribe {
            subscriber: ConnId(0x0102_0304),
            publisher: ConnId(5),
        });
        assert_eq!(bytes, [1, 0, 4, 0, 4, 3, 2, 1, 5, 0, 0, 0]);
        let bytes = enc_ev(&Event::IceSelected {
            conn: ConnId(7),
            peer: "10.0.0.1:258".parse().unwrap(),
        });
        let mut want = vec![1, 0, 0x01, 0x01, 7, 0, 0, 0, 4, 10, 0, 0, 1];
        want.extend([0; 12]);
        want.extend([2, 1]);
        assert_eq!(bytes, want);
        // CoreStats: header + 17 u64 fields, `core` included.
        assert_eq!(
            enc_ev(&Event::CoreStats(CoreStats::default())).len(),
            4 + 17 * 8
        );
    }

    #[test]
    fn every_truncation_is_an_error() {
        for bytes in all_records() {
            for n in 0..bytes.len() {
                let short = &bytes[..n];
                assert!(Command::decode(short).is_err(), "{bytes:?} cut at {n}");
                assert!(Event::decode(short).is_err(), "{bytes:?} cut at {n}");
            }
        }
        assert_eq!(Command::decode(&[1, 0, 4]), Err(DecodeError::Truncated(3)));
    }

    #[test]
    fn trailing_bytes_are_an_error() {
        for cmd in commands() {
            let mut bytes = enc_cmd(&cmd);
            bytes.push(0);
            assert_eq!(
                Command::decode(&bytes),
                Err(DecodeError::InvalidField("trailing bytes"))
            );
        }
        for ev in events() {
            let mut bytes = enc_ev(&ev);
            bytes.push(0);
            assert_eq!(
                Event::decode(&bytes),
                Err(DecodeError::InvalidField("trailing bytes"))
            );
        }
    }

    #[test]
    fn wrong_version_and_unknown_tags_are_errors() {
        let mut bytes = enc_cmd(&Command::Shutdown);
        bytes[0] = 2;
        assert_eq!(Command::decode(&bytes), Err(DecodeError::Version(2)));
        assert_eq!(
            Command::decode(&[1, 0, 0xff, 0xff]),
            Err(DecodeError::UnknownTag(0xffff))
        );
        assert_eq!(
            Command::decode(&[1, 0, 0, 0]),
            Err(DecodeError::UnknownTag(0))
        );
        // A record from the other ring is never mistaken for a message of this one.
        for ev in events() {
            assert!(matches!(
                Command::decode(&enc_ev(&ev)),
                Err(DecodeError::UnknownTag(_))
            ));
        }
        for cmd in commands() {
            assert!(matches!(
                Event::decode(&enc_cmd(&cmd)),
                Err(DecodeError::UnknownTag(_))
            ));
        }
    }

    #[test]
    fn invalid_field_values_are_errors() {
        // bool other than 0/1
        let mut b = enc_cmd(&Command::SetChannelOwned {
            channel: ChannelKey(1),
            owned: true,
        });
        *b.last_mut().unwrap() = 2;
        assert_eq!(Command::decode(&b), Err(DecodeError::InvalidField("owned")));

        // media kind
        let mut b = enc_cmd(&Command::AddPublisherTrack {
            conn: ConnId(1),
            kind: MediaKind::Video,
            payload_type: 96,
            clock_rate: 90_000,
            out_ssrc: 1,
        });
        b[8] = 2;
        assert_eq!(Command::decode(&b), Err(DecodeError::InvalidField("kind")));

        // SRTP profile
        let mut b = enc_cmd(&Command::SetSrtpKeys {
            conn: ConnId(1),
            profile: SrtpProfile::AeadAes128Gcm,
            local_key: vec![],
            local_salt: vec![],
            remote_key: vec![],
            remote_salt: vec![],
        });
        b[8] = 2;
        assert_eq!(
            Command::decode(&b),
            Err(DecodeError::InvalidField("profile"))
        );

        // non-UTF-8 string
        let mut b = enc_cmd(&Command::AddConnection {
            conn: ConnId(1),
            channel: ChannelKey(2),
            local_ufrag: "ab".into(),
            local_pwd: "cd".into(),
            send: true,
            recv: true,
        });
        b[14] = 0xff;
        assert_eq!(
            Command::decode(&b),
            Err(DecodeError::InvalidField("local_ufrag"))
        );

        // address family and IPv4 padding
        let good = enc_ev(&Event::IceSelected {
            conn: ConnId(1),
            peer: "192.0.2.1:1".parse().unwrap(),
        });
        let mut b = good.clone();
        b[8] = 5;
        assert_eq!(Event::decode(&b), Err(DecodeError::InvalidField("peer")));
        let mut b = good;
        b[20] = 1;
        assert_eq!(Event::decode(&b), Err(DecodeError::InvalidField("peer")));

        // `core` travels as u64 but must fit a u16
        let mut b = enc_ev(&Event::CoreStats(CoreStats::default()));
        b[6] = 1;
        assert_eq!(Event::decode(&b), Err(DecodeError::InvalidField("core")));

        // a length that runs past the end
        let mut b = enc_cmd(&Command::SendDtls {
            conn: ConnId(1),
            data: vec![1, 2, 3],
        });
        b[8] = 4;
        assert_eq!(Command::decode(&b), Err(DecodeError::Truncated(b.len())));
    }

    #[test]
    fn too_long_fields_are_refused_without_writing() {
        let cmd = Command::SendDtls {
            conn: ConnId(1),
            data: vec![0; MAX_FIELD_LEN + 1],
        };
        let mut out = vec![9];
        assert_eq!(
            cmd.try_encode(&mut out),
            Err(EncodeError::FieldTooLong {
                field: "data",
                len: MAX_FIELD_LEN + 1
            })
        );
        assert_eq!(out, [9]);

        let ev = Event::DtlsReceived {
            conn: ConnId(1),
            data: vec![0; MAX_FIELD_LEN + 1],
        };
        assert!(ev.try_encode(&mut out).is_err());
        assert_eq!(out, [9]);

        // The longest field still fits.
        let cmd = Command::SendDtls {
            conn: ConnId(1),
            data: vec![7; MAX_FIELD_LEN],
        };
        assert_eq!(Command::decode(&enc_cmd(&cmd)), Ok(cmd));
    }

    #[test]
    #[should_panic(expected = "longer than")]
    fn encode_panics_on_a_too_long_field() {
        let cmd = Command::AddConnection {
            conn: ConnId(1),
            channel: ChannelKey(1),
            local_ufrag: "x".repeat(MAX_FIELD_LEN + 1),
            local_pwd: String::new(),
            send: true,
            recv: true,
        };
        cmd.encode(&mut Vec::new());
    }

    /// Random and mutated records never panic the decoders, and whatever they
    /// accept re-encodes to the very same bytes.
    #[test]
    fn random_records_never_panic() {
        let seeds = all_records();
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut accepted = 0;
        for round in 0..200_000 {
            let bytes: Vec<u8> = match round % 3 {
                // Pure noise, sometimes behind a valid version.
                0 => {
                    let len = rng.below(64);
                    let mut b: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                    if len >= 2 && rng.below(2) == 0 {
                        b[..2].copy_from_slice(&LAYOUT_VERSION.to_le_bytes());
                    }
                    b
                }
                // A valid record with a few bytes changed.
                1 => {
                    let mut b = seeds[rng.below(seeds.len())].clone();
                    for _ in 0..=rng.below(3) {
                        let i = rng.below(b.len());
                        b[i] = rng.next() as u8;
                    }
                    b
                }
                // A valid record cut or extended at a random place.
                _ => {
                    let mut b = seeds[rng.below(seeds.len())].clone();
                    let len = rng.below(b.len() + 8);
                    b.resize(len, rng.next() as u8);
                    b
                }
            };
            if let Ok(cmd) = Command::decode(&bytes) {
                accepted += 1;
                assert_eq!(enc_cmd(&cmd), bytes);
            }
            if let Ok(ev) = Event::decode(&bytes) {
                accepted += 1;
                assert_eq!(enc_ev(&ev), bytes);
            }
        }
        // The mutations must reach past the header now and then.
        assert!(accepted > 1000, "only {accepted} records accepted");
    }
}

//! The messages carried by the rings, and their fixed, versioned binary layout.
//!
//! Every record in a ring is `[u16 layout version][u16 message tag][payload]`,
//! little-endian. Decoding never panics: a short, unknown or inconsistent
//! record is a [`DecodeError`].

use std::net::SocketAddr;

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

impl Command {
    /// Appends this command's record to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let _ = out;
        todo!("layout")
    }
    pub fn decode(record: &[u8]) -> Result<Command, DecodeError> {
        let _ = record;
        todo!("layout")
    }
}

impl Event {
    /// Appends this event's record to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let _ = out;
        todo!("layout")
    }
    pub fn decode(record: &[u8]) -> Result<Event, DecodeError> {
        let _ = record;
        todo!("layout")
    }
}

//! The client half of ICE connectivity checks (RFC 8445 / RFC 8489), sans-IO.
//!
//! A controlling agent's Binding request: USERNAME `server_ufrag:client_ufrag`,
//! PRIORITY, ICE-CONTROLLING, USE-CANDIDATE, MESSAGE-INTEGRITY (HMAC-SHA1 keyed
//! with the server's password) and FINGERPRINT; and the parser for the
//! response, which checks the same two trailers.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use hmac::{Hmac, Mac};
use sha1::Sha1;

type HmacSha1 = Hmac<Sha1>;

pub const MAGIC_COOKIE: u32 = 0x2112_A442;
const HEADER_LEN: usize = 20;
const FINGERPRINT_XOR: u32 = 0x5354_554E;

pub const BINDING_REQUEST: u16 = 0x0001;
pub const BINDING_SUCCESS: u16 = 0x0101;
pub const BINDING_ERROR: u16 = 0x0111;

pub const ATTR_MAPPED_ADDRESS: u16 = 0x0001;
pub const ATTR_USERNAME: u16 = 0x0006;
pub const ATTR_MESSAGE_INTEGRITY: u16 = 0x0008;
pub const ATTR_ERROR_CODE: u16 = 0x0009;
pub const ATTR_XOR_MAPPED_ADDRESS: u16 = 0x0020;
pub const ATTR_PRIORITY: u16 = 0x0024;
pub const ATTR_USE_CANDIDATE: u16 = 0x0025;
pub const ATTR_FINGERPRINT: u16 = 0x8028;
pub const ATTR_ICE_CONTROLLED: u16 = 0x8029;
pub const ATTR_ICE_CONTROLLING: u16 = 0x802A;

/// What goes into one Binding request.
#[derive(Debug, Clone)]
pub struct BindingRequest<'a> {
    pub transaction_id: [u8; 12],
    /// The server's ICE ufrag (from the offer).
    pub remote_ufrag: &'a str,
    /// This client's ICE ufrag (from its answer).
    pub local_ufrag: &'a str,
    /// The server's ICE password: the key of MESSAGE-INTEGRITY.
    pub remote_pwd: &'a str,
    /// PRIORITY of the peer-reflexive candidate this check would create.
    pub priority: u32,
    pub tie_breaker: u64,
    pub use_candidate: bool,
}

/// PRIORITY for a candidate (RFC 8445 §5.1.2.1) of the given type preference,
/// local preference 65535 and component 1.
pub fn candidate_priority(type_preference: u32) -> u32 {
    (type_preference << 24) | (65_535 << 8) | (256 - 1)
}

impl BindingRequest<'_> {
    /// Encodes the request.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        write_header(&mut out, BINDING_REQUEST, &self.transaction_id);
        let username = format!("{}:{}", self.remote_ufrag, self.local_ufrag);
        write_attribute(&mut out, ATTR_USERNAME, username.as_bytes());
        write_attribute(&mut out, ATTR_PRIORITY, &self.priority.to_be_bytes());
        write_attribute(
            &mut out,
            ATTR_ICE_CONTROLLING,
            &self.tie_breaker.to_be_bytes(),
        );
        if self.use_candidate {
            write_attribute(&mut out, ATTR_USE_CANDIDATE, &[]);
        }
        add_integrity_and_fingerprint(&mut out, self.remote_pwd.as_bytes());
        out
    }
}

fn write_header(out: &mut Vec<u8>, message_type: u16, transaction_id: &[u8; 12]) {
    out.extend_from_slice(&message_type.to_be_bytes());
    out.extend_from_slice(&0u16.to_be_bytes());
    out.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
    out.extend_from_slice(transaction_id);
}

fn set_length(out: &mut [u8], body_len: usize) {
    out[2..4].copy_from_slice(&(body_len as u16).to_be_bytes());
}

/// Appends a TLV attribute, padded to 4 bytes, and updates the header length.
pub fn write_attribute(out: &mut Vec<u8>, kind: u16, value: &[u8]) {
    out.extend_from_slice(&kind.to_be_bytes());
    out.extend_from_slice(&(value.len() as u16).to_be_bytes());
    out.extend_from_slice(value);
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
    let body = out.len() - HEADER_LEN;
    set_length(out, body);
}

/// Appends MESSAGE-INTEGRITY keyed with `key`, then FINGERPRINT.
pub fn add_integrity_and_fingerprint(out: &mut Vec<u8>, key: &[u8]) {
    // The length field covers MESSAGE-INTEGRITY itself when the HMAC is taken.
    let body = out.len() - HEADER_LEN + 24;
    set_length(out, body);
    let mut mac = HmacSha1::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(out);
    let tag = mac.finalize().into_bytes();
    write_attribute(out, ATTR_MESSAGE_INTEGRITY, &tag);
    // FINGERPRINT: CRC-32 over everything before it, with the length field
    // already counting the FINGERPRINT attribute.
    let body = out.len() - HEADER_LEN + 8;
    set_length(out, body);
    let crc = crc32fast::hash(out) ^ FINGERPRINT_XOR;
    write_attribute(out, ATTR_FINGERPRINT, &crc.to_be_bytes());
}

/// Whether a datagram is STUN (RFC 7983: first byte 0..=3 and the cookie).
pub fn is_stun(pkt: &[u8]) -> bool {
    pkt.len() >= HEADER_LEN
        && pkt[0] < 4
        && u32::from_be_bytes([pkt[4], pkt[5], pkt[6], pkt[7]]) == MAGIC_COOKIE
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StunError {
    Truncated,
    NotStun,
    BadAttribute,
    BadFingerprint,
    BadIntegrity,
    MissingIntegrity,
}

impl std::fmt::Display for StunError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self {
            StunError::Truncated => "truncated STUN message",
            StunError::NotStun => "not a STUN message",
            StunError::BadAttribute => "malformed STUN attribute",
            StunError::BadFingerprint => "FINGERPRINT does not match",
            StunError::BadIntegrity => "MESSAGE-INTEGRITY does not verify",
            StunError::MissingIntegrity => "no MESSAGE-INTEGRITY",
        };
        f.write_str(s)
    }
}

impl std::error::Error for StunError {}

/// A parsed STUN message (any class), trailers checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    pub message_type: u16,
    pub transaction_id: [u8; 12],
    pub username: Option<String>,
    pub priority: Option<u32>,
    pub use_candidate: bool,
    pub ice_controlling: Option<u64>,
    pub mapped: Option<SocketAddr>,
    pub error: Option<(u16, String)>,
    /// `None`: no MESSAGE-INTEGRITY; `Some(ok)`: verified with the key given.
    pub integrity: Option<bool>,
    pub fingerprint: bool,
}

/// Parses a STUN message. A FINGERPRINT that does not match is an error; the
/// MESSAGE-INTEGRITY, if present, is checked with `key` when one is given.
pub fn parse(pkt: &[u8], key: Option<&[u8]>) -> Result<Parsed, StunError> {
    if pkt.len() < HEADER_LEN {
        return Err(StunError::Truncated);
    }
    if !is_stun(pkt) {
        return Err(StunError::NotStun);
    }
    let body_len = u16::from_be_bytes([pkt[2], pkt[3]]) as usize;
    if !body_len.is_multiple_of(4) || HEADER_LEN + body_len != pkt.len() {
        return Err(StunError::Truncated);
    }
    let mut transaction_id = [0u8; 12];
    transaction_id.copy_from_slice(&pkt[8..20]);
    let mut p = Parsed {
        message_type: u16::from_be_bytes([pkt[0], pkt[1]]),
        transaction_id,
        username: None,
        priority: None,
        use_candidate: false,
        ice_controlling: None,
        mapped: None,
        error: None,
        integrity: None,
        fingerprint: false,
    };
    let mut at = HEADER_LEN;
    let mut integrity_seen = false;
    while at < pkt.len() {
        if pkt.len() - at < 4 {
            return Err(StunError::BadAttribute);
        }
        let kind = u16::from_be_bytes([pkt[at], pkt[at + 1]]);
        let len = u16::from_be_bytes([pkt[at + 2], pkt[at + 3]]) as usize;
        let v_at = at + 4;
        let padded = (len + 3) & !3;
        if pkt.len() - v_at < padded {
            return Err(StunError::BadAttribute);
        }
        let value = &pkt[v_at..v_at + len];
        if kind == ATTR_FINGERPRINT {
            if len != 4 || v_at + 4 != pkt.len() {
                return Err(StunError::BadFingerprint);
            }
            let mut head = pkt[..at].to_vec();
            set_length(&mut head, at + 8 - HEADER_LEN);
            let want = crc32fast::hash(&head) ^ FINGERPRINT_XOR;
            if u32::from_be_bytes([value[0], value[1], value[2], value[3]]) != want {
                return Err(StunError::BadFingerprint);
            }
            p.fingerprint = true;
        } else if !integrity_seen {
            match kind {
                ATTR_USERNAME => p.username = Some(String::from_utf8_lossy(value).into_owned()),
                ATTR_PRIORITY if len == 4 => {
                    p.priority = Some(u32::from_be_bytes([value[0], value[1], value[2], value[3]]))
                }
                ATTR_USE_CANDIDATE => p.use_candidate = true,
                ATTR_ICE_CONTROLLING if len == 8 => {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(value);
                    p.ice_controlling = Some(u64::from_be_bytes(b));
                }
                ATTR_XOR_MAPPED_ADDRESS => p.mapped = decode_address(value, Some(&transaction_id)),
                ATTR_MAPPED_ADDRESS if p.mapped.is_none() => p.mapped = decode_address(value, None),
                ATTR_ERROR_CODE if len >= 4 => {
                    let code = u16::from(value[2] & 0x7) * 100 + u16::from(value[3]);
                    p.error = Some((code, String::from_utf8_lossy(&value[4..]).into_owned()));
                }
                ATTR_MESSAGE_INTEGRITY => {
                    if len != 20 {
                        return Err(StunError::BadAttribute);
                    }
                    integrity_seen = true;
                    if let Some(key) = key {
                        let mut head = pkt[..at].to_vec();
                        set_length(&mut head, at + 24 - HEADER_LEN);
                        let mut mac = HmacSha1::new_from_slice(key).expect("any key length");
                        mac.update(&head);
                        p.integrity = Some(mac.verify_slice(value).is_ok());
                    }
                }
                _ => {}
            }
        }
        at = v_at + padded;
    }
    Ok(p)
}

/// Decodes (XOR-)MAPPED-ADDRESS; `xor` carries the transaction id for the
/// XOR variant.
fn decode_address(v: &[u8], xor: Option<&[u8; 12]>) -> Option<SocketAddr> {
    if v.len() < 8 {
        return None;
    }
    let cookie = MAGIC_COOKIE.to_be_bytes();
    let mut port = u16::from_be_bytes([v[2], v[3]]);
    if xor.is_some() {
        port ^= (MAGIC_COOKIE >> 16) as u16;
    }
    match v[1] {
        1 => {
            let mut a = [v[4], v[5], v[6], v[7]];
            if xor.is_some() {
                for (b, c) in a.iter_mut().zip(cookie) {
                    *b ^= c;
                }
            }
            Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::from(a)), port))
        }
        2 if v.len() >= 20 => {
            let mut a = [0u8; 16];
            a.copy_from_slice(&v[4..20]);
            if let Some(tid) = xor {
                let mut mask = [0u8; 16];
                mask[..4].copy_from_slice(&cookie);
                mask[4..].copy_from_slice(tid);
                for (b, m) in a.iter_mut().zip(mask) {
                    *b ^= m;
                }
            }
            Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(a)), port))
        }
        _ => None,
    }
}

/// Encodes XOR-MAPPED-ADDRESS for an IPv4 or IPv6 address (used to build
/// responses in tests).
pub fn encode_xor_address(addr: SocketAddr, transaction_id: &[u8; 12]) -> Vec<u8> {
    let cookie = MAGIC_COOKIE.to_be_bytes();
    let port = addr.port() ^ (MAGIC_COOKIE >> 16) as u16;
    let mut v = vec![0u8];
    match addr.ip() {
        IpAddr::V4(ip) => {
            v.push(1);
            v.extend_from_slice(&port.to_be_bytes());
            v.extend(ip.octets().iter().zip(cookie).map(|(a, c)| a ^ c));
        }
        IpAddr::V6(ip) => {
            v.push(2);
            v.extend_from_slice(&port.to_be_bytes());
            let mut mask = [0u8; 16];
            mask[..4].copy_from_slice(&cookie);
            mask[4..].copy_from_slice(transaction_id);
            v.extend(ip.octets().iter().zip(mask).map(|(a, m)| a ^ m));
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(use_candidate: bool) -> Vec<u8> {
        BindingRequest {
            transaction_id: *b"0123456789ab",
            remote_ufrag: "SRVUFRAG",
            local_ufrag: "cli1",
            remote_pwd: "server-password-0123456789",
            priority: candidate_priority(110),
            tie_breaker: 0x0102_0304_0506_0708,
            use_candidate,
        }
        .encode()
    }

    #[test]
    fn request_layout() {
        let m = request(true);
        assert_eq!(&m[0..2], &[0x00, 0x01]);
        assert_eq!(u16::from_be_bytes([m[2], m[3]]) as usize, m.len() - 20);
        assert_eq!(&m[4..8], &MAGIC_COOKIE.to_be_bytes());
        assert_eq!(&m[8..20], b"0123456789ab");
        // USERNAME first: "SRVUFRAG:cli1" (13 bytes, padded to 16).
        assert_eq!(&m[20..24], &[0x00, 0x06, 0x00, 13]);
        assert_eq!(&m[24..37], b"SRVUFRAG:cli1");
        assert_eq!(&m[37..40], &[0, 0, 0]);
        // Ends with MESSAGE-INTEGRITY (24) then FINGERPRINT (8).
        let n = m.len();
        assert_eq!(&m[n - 8..n - 6], &ATTR_FINGERPRINT.to_be_bytes());
        assert_eq!(&m[n - 32..n - 30], &ATTR_MESSAGE_INTEGRITY.to_be_bytes());
        assert_eq!(n % 4, 0);
        assert!(is_stun(&m));
    }

    #[test]
    fn request_round_trips() {
        let m = request(true);
        let p = parse(&m, Some(b"server-password-0123456789")).unwrap();
        assert_eq!(p.message_type, BINDING_REQUEST);
        assert_eq!(p.username.as_deref(), Some("SRVUFRAG:cli1"));
        assert_eq!(p.priority, Some(candidate_priority(110)));
        assert_eq!(p.ice_controlling, Some(0x0102_0304_0506_0708));
        assert!(p.use_candidate);
        assert_eq!(p.integrity, Some(true));
        assert!(p.fingerprint);
        let p = parse(&m, Some(b"wrong")).unwrap();
        assert_eq!(p.integrity, Some(false));
        assert!(!parse(&request(false), None).unwrap().use_candidate);
    }

    #[test]
    fn fingerprint_and_truncation_detected() {
        let mut m = request(true);
        let n = m.len();
        m[n - 1] ^= 1;
        assert_eq!(parse(&m, None), Err(StunError::BadFingerprint));
        let m = request(true);
        assert_eq!(parse(&m[..m.len() - 4], None), Err(StunError::Truncated));
        assert_eq!(parse(&m[..10], None), Err(StunError::Truncated));
        let mut rtp = vec![0x80u8; 40];
        rtp[1] = 96;
        assert_eq!(parse(&rtp, None), Err(StunError::NotStun));
    }

    /// The data plane's independent STUN code accepts what this encoder writes.
    #[test]
    fn server_parser_accepts_request() {
        let m = request(true);
        let s = dataplane::stun::StunMessage::parse(&m).expect("server parses the request");
        assert_eq!(s.local_ufrag(), Some(&b"SRVUFRAG"[..]));
        assert!(s.use_candidate);
        assert!(s.has_fingerprint);
        s.verify_integrity(b"server-password-0123456789")
            .expect("integrity verifies");
        assert!(s.verify_integrity(b"other").is_err());
    }

    /// A response written by the data plane parses here, with its mapped address.
    #[test]
    fn parses_server_response() {
        let tid = *b"abcdefghijkl";
        let peer: SocketAddr = "127.0.0.61:40000".parse().unwrap();
        let mut out = Vec::new();
        dataplane::stun::write_binding_success(&mut out, &tid, peer, b"pwd-of-server");
        let p = parse(&out, Some(b"pwd-of-server")).unwrap();
        assert_eq!(p.message_type, BINDING_SUCCESS);
        assert_eq!(p.transaction_id, tid);
        assert_eq!(p.mapped, Some(peer));
        assert_eq!(p.integrity, Some(true));
        assert!(p.fingerprint);
    }

    #[test]
    fn xor_address_round_trip() {
        let tid = *b"abcdefghijkl";
        for a in ["10.1.2.3:5000", "[2001:db8::7]:65535"] {
            let addr: SocketAddr = a.parse().unwrap();
            let v = encode_xor_address(addr, &tid);
            assert_eq!(decode_address(&v, Some(&tid)), Some(addr));
        }
    }

    #[test]
    fn error_response() {
        let tid = [7u8; 12];
        let mut m = Vec::new();
        write_header(&mut m, BINDING_ERROR, &tid);
        let mut v = vec![0, 0, 4, 1];
        v.extend_from_slice(b"Unauthorized");
        write_attribute(&mut m, ATTR_ERROR_CODE, &v);
        add_integrity_and_fingerprint(&mut m, b"k");
        let p = parse(&m, Some(b"k")).unwrap();
        assert_eq!(p.error, Some((401, "Unauthorized".into())));
        assert_eq!(p.integrity, Some(true));
    }
}

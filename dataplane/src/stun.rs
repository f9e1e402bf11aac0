//! STUN as an ICE-lite agent needs it (RFC 8489, RFC 8445 §7.3): parse a Binding
//! request in place, verify MESSAGE-INTEGRITY (HMAC-SHA1, short-term
//! credentials) and FINGERPRINT, and write the Binding success response.
//!
//! Nothing here allocates: attributes are borrowed from the datagram and the
//! response is appended to a caller-owned buffer.

use std::net::SocketAddr;

use hmac::{Hmac, Mac};
use sha1::Sha1;

type HmacSha1 = Hmac<Sha1>;

pub const MAGIC_COOKIE: u32 = 0x2112_A442;
pub const HEADER_LEN: usize = 20;

pub const BINDING_REQUEST: u16 = 0x0001;
pub const BINDING_SUCCESS: u16 = 0x0101;
pub const BINDING_INDICATION: u16 = 0x0011;

const ATTR_USERNAME: u16 = 0x0006;
const ATTR_MESSAGE_INTEGRITY: u16 = 0x0008;
const ATTR_XOR_MAPPED_ADDRESS: u16 = 0x0020;
const ATTR_PRIORITY: u16 = 0x0024;
const ATTR_USE_CANDIDATE: u16 = 0x0025;
const ATTR_FINGERPRINT: u16 = 0x8028;
const ATTR_ICE_CONTROLLING: u16 = 0x802A;

const FINGERPRINT_XOR: u32 = 0x5354_554E;
const INTEGRITY_LEN: usize = 20;

/// Why a STUN message was not accepted.
#[derive(Copy, Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StunError {
    #[error("shorter than its header or its length field")]
    Truncated,
    #[error("not a STUN message (top bits, magic cookie or length)")]
    NotStun,
    #[error("attribute runs past the end of the message")]
    BadAttribute,
    #[error("FINGERPRINT missing, misplaced or wrong")]
    BadFingerprint,
    #[error("MESSAGE-INTEGRITY missing")]
    MissingIntegrity,
    #[error("MESSAGE-INTEGRITY does not match the password")]
    BadIntegrity,
    #[error("USERNAME missing")]
    MissingUsername,
}

/// A parsed STUN message whose FINGERPRINT (when present) has been checked.
/// MESSAGE-INTEGRITY is checked separately with [`StunMessage::verify_integrity`]
/// once the USERNAME has told which password to use.
#[derive(Debug, Clone, Copy)]
pub struct StunMessage<'a> {
    pub message_type: u16,
    pub transaction_id: [u8; 12],
    pub username: Option<&'a [u8]>,
    pub use_candidate: bool,
    pub has_fingerprint: bool,
    /// Offset of the MESSAGE-INTEGRITY attribute header, if present.
    integrity_at: Option<usize>,
    raw: &'a [u8],
}

/// Cheap check on the first bytes: could this be STUN at all (RFC 7983 range
/// 0..=3 plus the magic cookie)?
pub fn looks_like_stun(pkt: &[u8]) -> bool {
    pkt.len() >= HEADER_LEN
        && pkt[0] < 4
        && u32::from_be_bytes([pkt[4], pkt[5], pkt[6], pkt[7]]) == MAGIC_COOKIE
}

impl<'a> StunMessage<'a> {
    /// Parses the header and walks the attributes. Attributes after
    /// MESSAGE-INTEGRITY other than FINGERPRINT are ignored, as RFC 8489 §14.5
    /// requires; FINGERPRINT must be the last attribute and must match.
    pub fn parse(pkt: &'a [u8]) -> Result<Self, StunError> {
        if pkt.len() < HEADER_LEN {
            return Err(StunError::Truncated);
        }
        if pkt[0] & 0xC0 != 0
            || u32::from_be_bytes([pkt[4], pkt[5], pkt[6], pkt[7]]) != MAGIC_COOKIE
        {
            return Err(StunError::NotStun);
        }
        let body_len = u16::from_be_bytes([pkt[2], pkt[3]]) as usize;
        if body_len & 3 != 0 {
            return Err(StunError::NotStun);
        }
        if HEADER_LEN + body_len != pkt.len() {
            return Err(StunError::Truncated);
        }
        let message_type = u16::from_be_bytes([pkt[0], pkt[1]]);
        let mut transaction_id = [0u8; 12];
        transaction_id.copy_from_slice(&pkt[8..20]);

        let mut msg = StunMessage {
            message_type,
            transaction_id,
            username: None,
            use_candidate: false,
            has_fingerprint: false,
            integrity_at: None,
            raw: pkt,
        };
        let mut at = HEADER_LEN;
        while at < pkt.len() {
            if pkt.len() - at < 4 {
                return Err(StunError::BadAttribute);
            }
            let kind = u16::from_be_bytes([pkt[at], pkt[at + 1]]);
            let len = u16::from_be_bytes([pkt[at + 2], pkt[at + 3]]) as usize;
            let value_at = at + 4;
            let padded = (len + 3) & !3;
            if pkt.len() - value_at < padded {
                return Err(StunError::BadAttribute);
            }
            let value = &pkt[value_at..value_at + len];
            if kind == ATTR_FINGERPRINT {
                if len != 4 || value_at + 4 != pkt.len() {
                    return Err(StunError::BadFingerprint);
                }
                let expected = crc32fast::hash(&pkt[..at]) ^ FINGERPRINT_XOR;
                if u32::from_be_bytes([value[0], value[1], value[2], value[3]]) != expected {
                    return Err(StunError::BadFingerprint);
                }
                msg.has_fingerprint = true;
            } else if msg.integrity_at.is_none() {
                match kind {
                    ATTR_USERNAME => msg.username = Some(value),
                    ATTR_USE_CANDIDATE => msg.use_candidate = true,
                    ATTR_MESSAGE_INTEGRITY => {
                        if len != INTEGRITY_LEN {
                            return Err(StunError::BadAttribute);
                        }
                        msg.integrity_at = Some(at);
                    }
                    _ => {}
                }
            }
            at = value_at + padded;
        }
        Ok(msg)
    }

    /// The part of USERNAME before the colon: for a request we receive, our
    /// own (local) ufrag.
    pub fn local_ufrag(&self) -> Option<&'a [u8]> {
        let username = self.username?;
        let colon = username.iter().position(|&b| b == b':')?;
        Some(&username[..colon])
    }

    /// Checks MESSAGE-INTEGRITY with `key` (the short-term password).
    pub fn verify_integrity(&self, key: &[u8]) -> Result<(), StunError> {
        let at = self.integrity_at.ok_or(StunError::MissingIntegrity)?;
        let mut mac = HmacSha1::new_from_slice(key).expect("HMAC accepts keys of any length");
        // The length field covers the message up to the end of MESSAGE-INTEGRITY,
        // as if FINGERPRINT were not there.
        let mut header = [0u8; HEADER_LEN];
        header.copy_from_slice(&self.raw[..HEADER_LEN]);
        let len = (at + 4 + INTEGRITY_LEN - HEADER_LEN) as u16;
        header[2..4].copy_from_slice(&len.to_be_bytes());
        mac.update(&header);
        mac.update(&self.raw[HEADER_LEN..at]);
        mac.verify_slice(&self.raw[at + 4..at + 4 + INTEGRITY_LEN])
            .map_err(|_| StunError::BadIntegrity)
    }
}

/// Appends a Binding success response (XOR-MAPPED-ADDRESS, MESSAGE-INTEGRITY
/// keyed by `key`, FINGERPRINT) to `out`.
pub fn write_binding_success(
    out: &mut Vec<u8>,
    transaction_id: &[u8; 12],
    mapped: SocketAddr,
    key: &[u8],
) {
    let start = out.len();
    write_header(out, BINDING_SUCCESS, transaction_id);
    write_xor_mapped_address(out, transaction_id, mapped);
    finish_message(out, start, key);
}

/// Appends a Binding request as a controlling ICE agent would send it
/// (USERNAME, PRIORITY, ICE-CONTROLLING, optional USE-CANDIDATE,
/// MESSAGE-INTEGRITY, FINGERPRINT). Used by tests, benches and load tools.
pub fn write_binding_request(
    out: &mut Vec<u8>,
    transaction_id: &[u8; 12],
    username: &[u8],
    key: &[u8],
    use_candidate: bool,
) {
    let start = out.len();
    write_header(out, BINDING_REQUEST, transaction_id);
    write_attribute(out, ATTR_USERNAME, username);
    write_attribute(out, ATTR_PRIORITY, &0x6E00_1EFFu32.to_be_bytes());
    write_attribute(out, ATTR_ICE_CONTROLLING, &[0x5A; 8]);
    if use_candidate {
        write_attribute(out, ATTR_USE_CANDIDATE, &[]);
    }
    finish_message(out, start, key);
}

/// Decodes XOR-MAPPED-ADDRESS from a response (used by tests and tools).
pub fn xor_mapped_address(pkt: &[u8]) -> Option<SocketAddr> {
    StunMessage::parse(pkt).ok()?;
    let tid = &pkt[8..20];
    let mut at = HEADER_LEN;
    while at + 4 <= pkt.len() {
        let kind = u16::from_be_bytes([pkt[at], pkt[at + 1]]);
        let len = u16::from_be_bytes([pkt[at + 2], pkt[at + 3]]) as usize;
        let value = pkt.get(at + 4..at + 4 + len)?;
        if kind == ATTR_XOR_MAPPED_ADDRESS && len >= 8 {
            let port = u16::from_be_bytes([value[2], value[3]]) ^ (MAGIC_COOKIE >> 16) as u16;
            let mut mask = [0u8; 16];
            mask[..4].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
            mask[4..].copy_from_slice(tid);
            return match (value[1], len) {
                (1, 8) => {
                    let mut ip = [0u8; 4];
                    for (i, b) in ip.iter_mut().enumerate() {
                        *b = value[4 + i] ^ mask[i];
                    }
                    Some(SocketAddr::from((ip, port)))
                }
                (2, 20) => {
                    let mut ip = [0u8; 16];
                    for (i, b) in ip.iter_mut().enumerate() {
                        *b = value[4 + i] ^ mask[i];
                    }
                    Some(SocketAddr::from((ip, port)))
                }
                _ => None,
            };
        }
        at += 4 + ((len + 3) & !3);
    }
    None
}

fn write_header(out: &mut Vec<u8>, message_type: u16, transaction_id: &[u8; 12]) {
    out.extend_from_slice(&message_type.to_be_bytes());
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
    out.extend_from_slice(transaction_id);
}

fn write_attribute(out: &mut Vec<u8>, kind: u16, value: &[u8]) {
    out.extend_from_slice(&kind.to_be_bytes());
    out.extend_from_slice(&(value.len() as u16).to_be_bytes());
    out.extend_from_slice(value);
    let pad = (4 - value.len() % 4) % 4;
    out.extend_from_slice(&[0u8; 3][..pad]);
}

fn write_xor_mapped_address(out: &mut Vec<u8>, transaction_id: &[u8; 12], addr: SocketAddr) {
    let port = addr.port() ^ (MAGIC_COOKIE >> 16) as u16;
    let cookie = MAGIC_COOKIE.to_be_bytes();
    match addr {
        SocketAddr::V4(a) => {
            let mut v = [0u8; 8];
            v[1] = 1;
            v[2..4].copy_from_slice(&port.to_be_bytes());
            for (i, b) in a.ip().octets().iter().enumerate() {
                v[4 + i] = b ^ cookie[i];
            }
            write_attribute(out, ATTR_XOR_MAPPED_ADDRESS, &v);
        }
        SocketAddr::V6(a) => {
            let mut v = [0u8; 20];
            v[1] = 2;
            v[2..4].copy_from_slice(&port.to_be_bytes());
            let mut mask = [0u8; 16];
            mask[..4].copy_from_slice(&cookie);
            mask[4..].copy_from_slice(transaction_id);
            for (i, b) in a.ip().octets().iter().enumerate() {
                v[4 + i] = b ^ mask[i];
            }
            write_attribute(out, ATTR_XOR_MAPPED_ADDRESS, &v);
        }
    }
}

/// Appends MESSAGE-INTEGRITY and FINGERPRINT to the message that starts at
/// `start` in `out`, fixing up the length field for each.
fn finish_message(out: &mut Vec<u8>, start: usize, key: &[u8]) {
    let set_len = |out: &mut Vec<u8>, extra: usize| {
        let len = (out.len() + extra - start - HEADER_LEN) as u16;
        out[start + 2..start + 4].copy_from_slice(&len.to_be_bytes());
    };
    set_len(out, 4 + INTEGRITY_LEN);
    let mut mac = HmacSha1::new_from_slice(key).expect("HMAC accepts keys of any length");
    mac.update(&out[start..]);
    let tag = mac.finalize().into_bytes();
    write_attribute(out, ATTR_MESSAGE_INTEGRITY, &tag);
    set_len(out, 8);
    let crc = crc32fast::hash(&out[start..]) ^ FINGERPRINT_XOR;
    write_attribute(out, ATTR_FINGERPRINT, &crc.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    const TID: [u8; 12] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12];

    fn request(use_candidate: bool) -> Vec<u8> {
        let mut out = Vec::new();
        write_binding_request(
            &mut out,
            &TID,
            b"srvufrag:peer",
            b"serverpassword",
            use_candidate,
        );
        out
    }

    /// RFC 5769 §2.1 sample request, to check against an independent encoder.
    #[test]
    fn rfc5769_sample_request_verifies() {
        let hex = "000100582112a442b7e7a701bc34d686fa87dfae\
                   802200105354554e207465737420636c69656e7400240004\
                   6e0001ff80290008932ff9b151263b36000600096576746a\
                   3a68367659202020000800149aeaa70cbfd8cb56781ef2b5\
                   b2d3f249c1b571a280280004e57a3bcf";
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        let msg = StunMessage::parse(&bytes).expect("sample parses");
        assert_eq!(msg.message_type, BINDING_REQUEST);
        assert!(msg.has_fingerprint);
        assert_eq!(msg.username, Some(&b"evtj:h6vY"[..]));
        assert_eq!(msg.local_ufrag(), Some(&b"evtj"[..]));
        msg.verify_integrity(b"VOkJxbRl1RmTxUk/WvJxBt").unwrap();
        assert_eq!(msg.verify_integrity(b"wrong"), Err(StunError::BadIntegrity));
    }

    #[test]
    fn request_round_trip() {
        let req = request(true);
        let msg = StunMessage::parse(&req).unwrap();
        assert_eq!(msg.message_type, BINDING_REQUEST);
        assert!(msg.use_candidate);
        assert!(msg.has_fingerprint);
        assert_eq!(msg.local_ufrag(), Some(&b"srvufrag"[..]));
        assert_eq!(msg.transaction_id, TID);
        msg.verify_integrity(b"serverpassword").unwrap();
        assert!(!StunMessage::parse(&request(false)).unwrap().use_candidate);
    }

    #[test]
    fn bad_integrity_is_rejected() {
        let mut req = request(false);
        let msg = StunMessage::parse(&req).unwrap();
        assert_eq!(msg.verify_integrity(b"other"), Err(StunError::BadIntegrity));
        // Flip a byte of the USERNAME and fix the fingerprint: integrity fails.
        req[24] ^= 1;
        let fp_at = req.len() - 8;
        let crc = crc32fast::hash(&req[..fp_at]) ^ FINGERPRINT_XOR;
        req[fp_at + 4..].copy_from_slice(&crc.to_be_bytes());
        let msg = StunMessage::parse(&req).unwrap();
        assert_eq!(
            msg.verify_integrity(b"serverpassword"),
            Err(StunError::BadIntegrity)
        );
    }

    #[test]
    fn bad_fingerprint_is_rejected() {
        let mut req = request(false);
        let last = req.len() - 1;
        req[last] ^= 0xFF;
        assert_eq!(
            StunMessage::parse(&req).unwrap_err(),
            StunError::BadFingerprint
        );
        // Any change before the fingerprint breaks it as well.
        let mut req = request(false);
        req[30] ^= 0x40;
        assert_eq!(
            StunMessage::parse(&req).unwrap_err(),
            StunError::BadFingerprint
        );
    }

    #[test]
    fn missing_integrity_is_reported() {
        let mut out = Vec::new();
        write_header(&mut out, BINDING_REQUEST, &TID);
        write_attribute(&mut out, ATTR_USERNAME, b"a:b");
        let len = (out.len() - HEADER_LEN) as u16;
        out[2..4].copy_from_slice(&len.to_be_bytes());
        let msg = StunMessage::parse(&out).unwrap();
        assert_eq!(msg.verify_integrity(b"x"), Err(StunError::MissingIntegrity));
    }

    #[test]
    fn truncated_attributes_are_rejected() {
        let req = request(true);
        // Cut the message at every length, fixing the header length so only the
        // attribute walk can notice. A cut at an attribute boundary is a valid
        // message, but one without FINGERPRINT, which ICE does not accept.
        for cut in HEADER_LEN + 1..req.len() {
            let mut short = req[..cut].to_vec();
            let body = (cut - HEADER_LEN) as u16;
            short[2..4].copy_from_slice(&body.to_be_bytes());
            match StunMessage::parse(&short) {
                Err(_) => {}
                Ok(msg) => assert!(!msg.has_fingerprint && cut & 3 == 0, "cut at {cut}"),
            }
        }
        // An attribute whose length runs past the end.
        let mut req = request(false);
        req[HEADER_LEN + 2..HEADER_LEN + 4].copy_from_slice(&0x0400u16.to_be_bytes());
        assert_eq!(
            StunMessage::parse(&req).unwrap_err(),
            StunError::BadAttribute
        );
    }

    #[test]
    fn not_stun_is_rejected() {
        assert_eq!(
            StunMessage::parse(&[0; 4]).unwrap_err(),
            StunError::Truncated
        );
        let mut req = request(false);
        req[4] = 0;
        assert_eq!(StunMessage::parse(&req).unwrap_err(), StunError::NotStun);
        assert!(!looks_like_stun(&req));
    }

    #[test]
    fn success_response_carries_mapped_address() {
        for addr in ["192.0.2.7:40000", "[2001:db8::5]:1234"] {
            let addr: SocketAddr = addr.parse().unwrap();
            let mut out = vec![0xEE]; // appending after existing bytes works
            write_binding_success(&mut out, &TID, addr, b"pw");
            let resp = &out[1..];
            let msg = StunMessage::parse(resp).unwrap();
            assert_eq!(msg.message_type, BINDING_SUCCESS);
            assert!(msg.has_fingerprint);
            msg.verify_integrity(b"pw").unwrap();
            assert_eq!(xor_mapped_address(resp), Some(addr));
        }
    }
}

//! SRTP/SRTCP contexts of one connection, one per direction (RFC 3711, RFC 7714).
//!
//! Backed by `rtc-srtp` (the sans-IO SRTP of the webrtc-rs project), which
//! measured faster than `webrtc-srtp` on every AES-GCM path and on par for
//! AES-CM (docs/PERFORMANCE.md). Each protected or unprotected packet is one
//! freshly allocated `BytesMut`; the wrapper keeps the rest of the core
//! independent of the library so it can be swapped.

use std::sync::{Arc, OnceLock};

use bytes::BytesMut;
use rtc_srtp::context::Context;
use rtc_srtp::crypto::RTCCryptoProvider;
use rtc_srtp::option::{srtcp_replay_protection, srtp_replay_protection};
use rtc_srtp::protection_profile::ProtectionProfile;
use shared::SrtpProfile;

/// Replay window of the inbound context, in packets (libwebrtc uses a large
/// window for video because retransmissions arrive late).
const SRTP_REPLAY_WINDOW: usize = 1024;
const SRTCP_REPLAY_WINDOW: usize = 64;
/// The E flag and SRTCP index that precede the tag (RFC 3711 §3.4).
const SRTCP_INDEX_LEN: usize = 4;
/// RTCP header and sender SSRC.
const RTCP_HEADER_LEN: usize = 8;

/// The keys of a `SetSrtpKeys` command did not fit the profile (or no crypto
/// provider is available).
#[derive(Debug, thiserror::Error)]
#[error("SRTP keys rejected for {profile:?}: {reason}")]
pub struct SrtpKeyError {
    pub profile: SrtpProfile,
    pub reason: String,
}

fn library_profile(profile: SrtpProfile) -> ProtectionProfile {
    match profile {
        SrtpProfile::Aes128CmHmacSha1_80 => ProtectionProfile::Aes128CmHmacSha1_80,
        SrtpProfile::AeadAes128Gcm => ProtectionProfile::AeadAes128Gcm,
    }
}

/// The process-wide crypto provider (ring); only needed to build contexts.
fn crypto_provider() -> Result<&'static Arc<dyn RTCCryptoProvider>, String> {
    static PROVIDER: OnceLock<Result<Arc<dyn RTCCryptoProvider>, String>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| rtc_srtp::crypto::default_provider().map_err(|e| e.to_string()))
        .as_ref()
        .map_err(Clone::clone)
}

/// Outbound ("local") and inbound ("remote") contexts of a connection.
pub struct SrtpSession {
    outbound: Context,
    inbound: Context,
    /// Shortest SRTCP packet the profile can authenticate: header and sender
    /// SSRC, then the E flag and index, then the tag.
    min_srtcp_len: usize,
    /// AES-CM: where the tag starts, counted from the end (the E flag and
    /// index precede it).
    cm_tag_len: Option<usize>,
}

impl SrtpSession {
    pub fn new(
        profile: SrtpProfile,
        local_key: &[u8],
        local_salt: &[u8],
        remote_key: &[u8],
        remote_salt: &[u8],
    ) -> Result<Self, SrtpKeyError> {
        let pp = library_profile(profile);
        let err = |reason: String| SrtpKeyError { profile, reason };
        let crypto = crypto_provider().map_err(err)?.crypto();
        let outbound = Context::new(local_key, local_salt, pp, None, None, crypto)
            .map_err(|e| err(e.to_string()))?;
        let inbound = Context::new(
            remote_key,
            remote_salt,
            pp,
            Some(srtp_replay_protection(SRTP_REPLAY_WINDOW)),
            Some(srtcp_replay_protection(SRTCP_REPLAY_WINDOW)),
            crypto,
        )
        .map_err(|e| err(e.to_string()))?;
        let (min_srtcp_len, cm_tag_len) = match profile {
            SrtpProfile::Aes128CmHmacSha1_80 => (
                RTCP_HEADER_LEN + SRTCP_INDEX_LEN + pp.rtcp_auth_tag_len(),
                Some(pp.rtcp_auth_tag_len()),
            ),
            SrtpProfile::AeadAes128Gcm => (
                RTCP_HEADER_LEN + pp.aead_auth_tag_len() + SRTCP_INDEX_LEN,
                None,
            ),
        };
        Ok(SrtpSession {
            outbound,
            inbound,
            min_srtcp_len,
            cm_tag_len,
        })
    }

    /// Unprotects an SRTP packet; `None` if it fails authentication, is a
    /// replay or is malformed.
    pub fn unprotect_rtp(&mut self, pkt: &[u8]) -> Option<BytesMut> {
        self.inbound.decrypt_rtp(pkt).ok()
    }

    /// Unprotects an SRTCP packet. With AES-CM, `rtc-srtp` 0.21 returns a
    /// packet whose E flag is clear without checking its tag, so anyone could
    /// inject plain RTCP; browsers always encrypt SRTCP, so such packets are
    /// rejected here. The length check makes the flag's position valid (the
    /// library checks the length too).
    pub fn unprotect_rtcp(&mut self, pkt: &[u8]) -> Option<BytesMut> {
        if pkt.len() < self.min_srtcp_len {
            return None;
        }
        if let Some(tag) = self.cm_tag_len {
            if pkt[pkt.len() - tag - SRTCP_INDEX_LEN] & 0x80 == 0 {
                return None;
            }
        }
        self.inbound.decrypt_rtcp(pkt).ok()
    }

    pub fn protect_rtp(&mut self, pkt: &[u8]) -> Option<BytesMut> {
        self.outbound.encrypt_rtp(pkt).ok()
    }

    pub fn protect_rtcp(&mut self, pkt: &[u8]) -> Option<BytesMut> {
        self.outbound.encrypt_rtcp(pkt).ok()
    }
}

/// The profile as `webrtc-srtp` names it. The tests' peers protect and
/// unprotect with `webrtc-srtp`, an independent implementation, so every core
/// test also checks that the two interoperate.
#[cfg(test)]
pub(crate) fn protection_profile(
    profile: SrtpProfile,
) -> webrtc_srtp::protection_profile::ProtectionProfile {
    use webrtc_srtp::protection_profile::ProtectionProfile as P;
    match profile {
        SrtpProfile::Aes128CmHmacSha1_80 => P::Aes128CmHmacSha1_80,
        SrtpProfile::AeadAes128Gcm => P::AeadAes128Gcm,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use webrtc_srtp::context::Context as PeerContext;

    const PROFILES: [SrtpProfile; 2] =
        [SrtpProfile::Aes128CmHmacSha1_80, SrtpProfile::AeadAes128Gcm];

    fn salt_len(profile: SrtpProfile) -> usize {
        library_profile(profile).salt_len()
    }

    /// The session under test: it sends with key 1 and receives with key 3.
    fn session(profile: SrtpProfile) -> SrtpSession {
        let salt = salt_len(profile);
        SrtpSession::new(profile, &[1; 16], &vec![2; salt], &[3; 16], &vec![4; salt]).unwrap()
    }

    /// The remote end, in `webrtc-srtp`: `tx` sends to the session, `rx`
    /// receives from it.
    fn peer(profile: SrtpProfile) -> (PeerContext, PeerContext) {
        let (pp, salt) = (protection_profile(profile), salt_len(profile));
        (
            PeerContext::new(&[3; 16], &vec![4; salt], pp, None, None).unwrap(),
            PeerContext::new(&[1; 16], &vec![2; salt], pp, None, None).unwrap(),
        )
    }

    fn rtp(seq: u16, len: usize) -> Vec<u8> {
        let mut p = vec![0x80, 96];
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&(u32::from(seq) * 3000).to_be_bytes());
        p.extend_from_slice(&0x0102_0304u32.to_be_bytes());
        p.extend((0..len - 12).map(|i| i as u8));
        p
    }

    /// Receiver report with one report block.
    fn rtcp() -> Vec<u8> {
        let mut p = vec![0x81, 201, 0, 7, 0, 0, 0, 9, 0, 0, 0, 7];
        p.extend_from_slice(&[0x22; 20]);
        p
    }

    #[test]
    fn interoperates_with_webrtc_srtp_both_ways() {
        for profile in PROFILES {
            let mut s = session(profile);
            let (mut tx, mut rx) = peer(profile);
            for seq in 1..20u16 {
                let plain = rtp(seq, 1200);
                let wire = tx.encrypt_rtp(&plain).unwrap();
                assert_eq!(s.unprotect_rtp(&wire).as_deref(), Some(&plain[..]));
                let wire = s.protect_rtp(&plain).unwrap();
                assert_eq!(&rx.decrypt_rtp(&wire).unwrap()[..], &plain[..]);

                let plain = rtcp();
                let wire = tx.encrypt_rtcp(&plain).unwrap();
                assert_eq!(s.unprotect_rtcp(&wire).as_deref(), Some(&plain[..]));
                let wire = s.protect_rtcp(&plain).unwrap();
                assert_eq!(&rx.decrypt_rtcp(&wire).unwrap()[..], &plain[..]);
            }
        }
    }

    #[test]
    fn replays_are_rejected() {
        for profile in PROFILES {
            let mut s = session(profile);
            let (mut tx, _) = peer(profile);
            let first = tx.encrypt_rtp(&rtp(100, 200)).unwrap();
            let second = tx.encrypt_rtp(&rtp(101, 200)).unwrap();
            assert!(s.unprotect_rtp(&second).is_some());
            // Out of order but new: accepted once.
            assert!(s.unprotect_rtp(&first).is_some());
            assert!(s.unprotect_rtp(&first).is_none(), "{profile:?}");
            assert!(s.unprotect_rtp(&second).is_none(), "{profile:?}");

            let wire = tx.encrypt_rtcp(&rtcp()).unwrap();
            assert!(s.unprotect_rtcp(&wire).is_some());
            assert!(s.unprotect_rtcp(&wire).is_none(), "{profile:?}");
        }
    }

    #[test]
    fn wrong_key_and_tampering_are_rejected() {
        for profile in PROFILES {
            let mut s = session(profile);
            let salt = salt_len(profile);
            let pp = protection_profile(profile);
            let mut wrong = PeerContext::new(&[9; 16], &vec![4; salt], pp, None, None).unwrap();
            assert!(s
                .unprotect_rtp(&wrong.encrypt_rtp(&rtp(1, 300)).unwrap())
                .is_none());
            assert!(s
                .unprotect_rtcp(&wrong.encrypt_rtcp(&rtcp()).unwrap())
                .is_none());

            let (mut tx, _) = peer(profile);
            let mut wire = tx.encrypt_rtp(&rtp(2, 300)).unwrap().to_vec();
            wire[40] ^= 1;
            assert!(s.unprotect_rtp(&wire).is_none(), "{profile:?}");
            let mut wire = tx.encrypt_rtcp(&rtcp()).unwrap().to_vec();
            wire[12] ^= 1;
            assert!(s.unprotect_rtcp(&wire).is_none(), "{profile:?}");
            // The untouched packets still pass: the failures above did not
            // advance the replay windows.
            assert!(s
                .unprotect_rtp(&tx.encrypt_rtp(&rtp(2, 300)).unwrap())
                .is_some());
        }
    }

    #[test]
    fn short_srtcp_is_rejected_without_panic() {
        for profile in PROFILES {
            let mut s = session(profile);
            for len in 0..40 {
                let mut pkt = vec![0u8; len];
                if len >= 2 {
                    pkt[0] = 0x80;
                    pkt[1] = 200;
                }
                assert!(s.unprotect_rtcp(&pkt).is_none(), "{profile:?} {len}");
                // Straight into the library, without the wrapper's check: no
                // panic, and an error below the minimum (at and above it an
                // AES-CM packet with E=0 passes, see the next test).
                let lib = s.inbound.decrypt_rtcp(&pkt);
                assert!(len >= s.min_srtcp_len || lib.is_err(), "{profile:?} {len}");
            }
        }
    }

    #[test]
    fn malformed_srtp_is_rejected_without_panic() {
        for profile in PROFILES {
            let mut s = session(profile);
            for len in 0..64 {
                for first in [0x80u8, 0x90, 0x8F, 0x9F, 0xA0] {
                    // Extension bit, CSRC counts and padding bit with too
                    // little packet behind them.
                    let mut pkt = vec![0xFFu8; len];
                    if len > 0 {
                        pkt[0] = first;
                    }
                    assert!(s.unprotect_rtp(&pkt).is_none(), "{profile:?} {len}");
                }
            }
        }
    }

    #[test]
    fn unencrypted_srtcp_with_a_forged_tag_is_rejected() {
        // RR header, sender SSRC, E=0 with index 1, then a made-up tag.
        let mut pkt = vec![0x80, 201, 0, 1, 0, 0, 0, 9];
        pkt.extend_from_slice(&1u32.to_be_bytes());
        pkt.extend_from_slice(&[0xEE; 10]);
        let crypto = crypto_provider().unwrap().crypto();
        let mut raw = Context::new(
            &[3; 16],
            &[4; 14],
            ProtectionProfile::Aes128CmHmacSha1_80,
            None,
            None,
            crypto,
        )
        .unwrap();
        // The library alone accepts it: this is what the check guards against.
        assert!(raw.decrypt_rtcp(&pkt).is_ok());
        assert!(session(SrtpProfile::Aes128CmHmacSha1_80)
            .unprotect_rtcp(&pkt)
            .is_none());
        // AES-GCM authenticates regardless of the flag.
        let mut pkt = vec![0x80, 201, 0, 1, 0, 0, 0, 9];
        pkt.extend_from_slice(&[0xEE; 16]);
        pkt.extend_from_slice(&1u32.to_be_bytes());
        assert!(session(SrtpProfile::AeadAes128Gcm)
            .unprotect_rtcp(&pkt)
            .is_none());
    }

    #[test]
    fn wrong_key_lengths_are_an_error() {
        let err = SrtpSession::new(
            SrtpProfile::AeadAes128Gcm,
            &[1; 16],
            &[2; 14],
            &[3; 16],
            &[4; 12],
        );
        assert!(err.is_err());
        let err = SrtpSession::new(
            SrtpProfile::Aes128CmHmacSha1_80,
            &[1; 15],
            &[2; 14],
            &[3; 16],
            &[4; 14],
        );
        assert!(err.is_err());
    }
}

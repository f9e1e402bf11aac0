//! SRTP/SRTCP contexts of one connection, one per direction (RFC 3711, RFC 7714).
//!
//! `webrtc-srtp`'s `Context` returns every protected or unprotected packet as a
//! freshly allocated `Bytes`; that is one allocation per packet and direction
//! (two for AES-GCM, whose AEAD output is a `Vec` first). The wrapper keeps
//! the rest of the core independent of that API so it can be swapped.

use shared::SrtpProfile;
use webrtc_srtp::context::Context;
use webrtc_srtp::option::{srtcp_replay_protection, srtp_replay_protection};
use webrtc_srtp::protection_profile::ProtectionProfile;

/// Replay window of the inbound context, in packets (libwebrtc uses a large
/// window for video because retransmissions arrive late).
const SRTP_REPLAY_WINDOW: usize = 1024;
const SRTCP_REPLAY_WINDOW: usize = 64;

/// The keys of a `SetSrtpKeys` command did not fit the profile.
#[derive(Debug, thiserror::Error)]
#[error("SRTP keys rejected for {profile:?}: {source}")]
pub struct SrtpKeyError {
    pub profile: SrtpProfile,
    #[source]
    pub source: webrtc_srtp::Error,
}

pub fn protection_profile(profile: SrtpProfile) -> ProtectionProfile {
    match profile {
        SrtpProfile::Aes128CmHmacSha1_80 => ProtectionProfile::Aes128CmHmacSha1_80,
        SrtpProfile::AeadAes128Gcm => ProtectionProfile::AeadAes128Gcm,
    }
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
        let pp = protection_profile(profile);
        let err = |source| SrtpKeyError { profile, source };
        let outbound = Context::new(local_key, local_salt, pp, None, None).map_err(err)?;
        let inbound = Context::new(
            remote_key,
            remote_salt,
            pp,
            Some(srtp_replay_protection(SRTP_REPLAY_WINDOW)),
            Some(srtcp_replay_protection(SRTCP_REPLAY_WINDOW)),
        )
        .map_err(err)?;
        let (min_srtcp_len, cm_tag_len) = match profile {
            SrtpProfile::Aes128CmHmacSha1_80 => {
                (8 + 4 + pp.rtcp_auth_tag_len(), Some(pp.rtcp_auth_tag_len()))
            }
            SrtpProfile::AeadAes128Gcm => (8 + pp.aead_auth_tag_len() + 4, None),
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
    pub fn unprotect_rtp(&mut self, pkt: &[u8]) -> Option<bytes::Bytes> {
        self.inbound.decrypt_rtp(pkt).ok()
    }

    /// Unprotects an SRTCP packet. Two checks come first because
    /// `webrtc-srtp` 0.17 does not make them: a packet shorter than its
    /// trailer makes it panic (index underflow), and an AES-CM packet with the
    /// E flag clear is returned without checking its tag. Browsers always
    /// encrypt SRTCP, so such packets are rejected.
    pub fn unprotect_rtcp(&mut self, pkt: &[u8]) -> Option<bytes::Bytes> {
        if pkt.len() < self.min_srtcp_len {
            return None;
        }
        if let Some(tag) = self.cm_tag_len {
            if pkt[pkt.len() - tag - 4] & 0x80 == 0 {
                return None;
            }
        }
        self.inbound.decrypt_rtcp(pkt).ok()
    }

    pub fn protect_rtp(&mut self, pkt: &[u8]) -> Option<bytes::Bytes> {
        self.outbound.encrypt_rtp(pkt).ok()
    }

    pub fn protect_rtcp(&mut self, pkt: &[u8]) -> Option<bytes::Bytes> {
        self.outbound.encrypt_rtcp(pkt).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(profile: SrtpProfile) -> SrtpSession {
        let salt = protection_profile(profile).salt_len();
        SrtpSession::new(profile, &[1; 16], &vec![2; salt], &[3; 16], &vec![4; salt]).unwrap()
    }

    #[test]
    fn short_srtcp_is_rejected_without_panic() {
        for profile in [SrtpProfile::Aes128CmHmacSha1_80, SrtpProfile::AeadAes128Gcm] {
            let mut s = session(profile);
            for len in 0..40 {
                let mut pkt = vec![0u8; len];
                if len >= 2 {
                    pkt[0] = 0x80;
                    pkt[1] = 200;
                }
                assert!(s.unprotect_rtcp(&pkt).is_none(), "{profile:?} {len}");
            }
        }
    }

    #[test]
    fn unencrypted_srtcp_with_a_forged_tag_is_rejected() {
        // RR header, sender SSRC, E=0 with index 1, then a made-up tag.
        let mut pkt = vec![0x80, 201, 0, 1, 0, 0, 0, 9];
        pkt.extend_from_slice(&1u32.to_be_bytes());
        pkt.extend_from_slice(&[0xEE; 10]);
        let mut raw = Context::new(
            &[3; 16],
            &[4; 14],
            ProtectionProfile::Aes128CmHmacSha1_80,
            None,
            None,
        )
        .unwrap();
        // The library alone accepts it: this is what the check guards against.
        assert!(raw.decrypt_rtcp(&pkt).is_ok());
        assert!(session(SrtpProfile::Aes128CmHmacSha1_80)
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
    }
}

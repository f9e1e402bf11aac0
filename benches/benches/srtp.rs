//! SRTP/SRTCP protect and unprotect, `webrtc-srtp` and `rtc-srtp` side by side
//! in one run, for the two profiles browsers negotiate.
//!
//! Packets: a 1200-byte RTP packet (12-byte header) and a 32-byte RTCP
//! receiver report with one report block. The receiving contexts are set up as
//! the data plane sets them up (replay protection on, windows 1024 / 64), so
//! unprotect includes the replay check. Each unprotect gets a fresh packet
//! (prepared outside the timed part) because a repeated one is a replay.
//!
//! Before measuring, every combination is checked to interoperate: what one
//! library protects, the other unprotects to the same plaintext.

use std::hint::black_box;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};

const RTP_LEN: usize = 1200;
const SRTP_REPLAY_WINDOW: usize = 1024;
const SRTCP_REPLAY_WINDOW: usize = 64;
const SSRC: u32 = 0x1234_5678;

#[derive(Clone, Copy, Debug)]
enum Profile {
    Cm,
    Gcm,
}

impl Profile {
    fn name(self) -> &'static str {
        match self {
            Profile::Cm => "aes_cm_sha1_80",
            Profile::Gcm => "aes_gcm",
        }
    }
    fn salt_len(self) -> usize {
        match self {
            Profile::Cm => 14,
            Profile::Gcm => 12,
        }
    }
}

/// One direction of SRTP with either library, behind one interface so both
/// are driven by the same bench code.
trait Ctx {
    fn protect_rtp(&mut self, pkt: &[u8]) -> Vec<u8>;
    fn protect_rtcp(&mut self, pkt: &[u8]) -> Vec<u8>;
    fn unprotect_rtp(&mut self, pkt: &[u8]) -> Option<Vec<u8>>;
    fn unprotect_rtcp(&mut self, pkt: &[u8]) -> Option<Vec<u8>>;
    /// The timed operations: the library's own output type, dropped by the
    /// caller after `black_box`.
    fn bench_protect_rtp(&mut self, pkt: &[u8]) -> usize;
    fn bench_protect_rtcp(&mut self, pkt: &[u8]) -> usize;
    fn bench_unprotect_rtp(&mut self, pkt: &[u8]) -> usize;
    fn bench_unprotect_rtcp(&mut self, pkt: &[u8]) -> usize;
}

mod webrtc {
    use super::*;
    use webrtc_srtp::context::Context;
    use webrtc_srtp::option::{srtcp_replay_protection, srtp_replay_protection};
    use webrtc_srtp::protection_profile::ProtectionProfile;

    pub struct W(Context);

    fn pp(p: Profile) -> ProtectionProfile {
        match p {
            Profile::Cm => ProtectionProfile::Aes128CmHmacSha1_80,
            Profile::Gcm => ProtectionProfile::AeadAes128Gcm,
        }
    }

    pub fn new(p: Profile, key: &[u8], salt: &[u8], inbound: bool) -> W {
        let (rtp, rtcp) = if inbound {
            (
                Some(srtp_replay_protection(SRTP_REPLAY_WINDOW)),
                Some(srtcp_replay_protection(SRTCP_REPLAY_WINDOW)),
            )
        } else {
            (None, None)
        };
        W(Context::new(key, salt, pp(p), rtp, rtcp).expect("valid keys"))
    }

    impl Ctx for W {
        fn protect_rtp(&mut self, pkt: &[u8]) -> Vec<u8> {
            self.0.encrypt_rtp(pkt).expect("protects").to_vec()
        }
        fn protect_rtcp(&mut self, pkt: &[u8]) -> Vec<u8> {
            self.0.encrypt_rtcp(pkt).expect("protects").to_vec()
        }
        fn unprotect_rtp(&mut self, pkt: &[u8]) -> Option<Vec<u8>> {
            self.0.decrypt_rtp(pkt).ok().map(|b| b.to_vec())
        }
        fn unprotect_rtcp(&mut self, pkt: &[u8]) -> Option<Vec<u8>> {
            self.0.decrypt_rtcp(pkt).ok().map(|b| b.to_vec())
        }
        fn bench_protect_rtp(&mut self, pkt: &[u8]) -> usize {
            black_box(self.0.encrypt_rtp(pkt).expect("protects")).len()
        }
        fn bench_protect_rtcp(&mut self, pkt: &[u8]) -> usize {
            black_box(self.0.encrypt_rtcp(pkt).expect("protects")).len()
        }
        fn bench_unprotect_rtp(&mut self, pkt: &[u8]) -> usize {
            black_box(self.0.decrypt_rtp(pkt).expect("unprotects")).len()
        }
        fn bench_unprotect_rtcp(&mut self, pkt: &[u8]) -> usize {
            black_box(self.0.decrypt_rtcp(pkt).expect("unprotects")).len()
        }
    }
}

mod rtc {
    use super::*;
    use rtc_srtp::context::Context;
    use rtc_srtp::crypto::RTCCryptoProvider;
    use rtc_srtp::option::{srtcp_replay_protection, srtp_replay_protection};
    use rtc_srtp::protection_profile::ProtectionProfile;

    pub struct R(Context);

    fn pp(p: Profile) -> ProtectionProfile {
        match p {
            Profile::Cm => ProtectionProfile::Aes128CmHmacSha1_80,
            Profile::Gcm => ProtectionProfile::AeadAes128Gcm,
        }
    }

    fn provider() -> &'static Arc<dyn RTCCryptoProvider> {
        static PROVIDER: OnceLock<Arc<dyn RTCCryptoProvider>> = OnceLock::new();
        PROVIDER.get_or_init(|| rtc_srtp::crypto::default_provider().expect("ring provider"))
    }

    pub fn new(p: Profile, key: &[u8], salt: &[u8], inbound: bool) -> R {
        let (rtp, rtcp) = if inbound {
            (
                Some(srtp_replay_protection(SRTP_REPLAY_WINDOW)),
                Some(srtcp_replay_protection(SRTCP_REPLAY_WINDOW)),
            )
        } else {
            (None, None)
        };
        R(Context::new(key, salt, pp(p), rtp, rtcp, provider().crypto()).expect("valid keys"))
    }

    impl Ctx for R {
        fn protect_rtp(&mut self, pkt: &[u8]) -> Vec<u8> {
            self.0.encrypt_rtp(pkt).expect("protects").to_vec()
        }
        fn protect_rtcp(&mut self, pkt: &[u8]) -> Vec<u8> {
            self.0.encrypt_rtcp(pkt).expect("protects").to_vec()
        }
        fn unprotect_rtp(&mut self, pkt: &[u8]) -> Option<Vec<u8>> {
            self.0.decrypt_rtp(pkt).ok().map(|b| b.to_vec())
        }
        fn unprotect_rtcp(&mut self, pkt: &[u8]) -> Option<Vec<u8>> {
            self.0.decrypt_rtcp(pkt).ok().map(|b| b.to_vec())
        }
        fn bench_protect_rtp(&mut self, pkt: &[u8]) -> usize {
            black_box(self.0.encrypt_rtp(pkt).expect("protects")).len()
        }
        fn bench_protect_rtcp(&mut self, pkt: &[u8]) -> usize {
            black_box(self.0.encrypt_rtcp(pkt).expect("protects")).len()
        }
        fn bench_unprotect_rtp(&mut self, pkt: &[u8]) -> usize {
            black_box(self.0.decrypt_rtp(pkt).expect("unprotects")).len()
        }
        fn bench_unprotect_rtcp(&mut self, pkt: &[u8]) -> usize {
            black_box(self.0.decrypt_rtcp(pkt).expect("unprotects")).len()
        }
    }
}

const KEY: [u8; 16] = [7; 16];
const SALT: [u8; 14] = [9; 14];

type Factory = fn(Profile, &[u8], &[u8], bool) -> Box<dyn Ctx>;

fn libraries() -> [(&'static str, Factory); 2] {
    [
        ("webrtc-srtp", |p, k, s, i| {
            Box::new(webrtc::new(p, k, s, i))
        }),
        ("rtc-srtp", |p, k, s, i| Box::new(rtc::new(p, k, s, i))),
    ]
}

fn rtp_packet(seq: u16) -> Vec<u8> {
    let mut p = vec![0u8; RTP_LEN];
    p[0] = 0x80;
    p[1] = 96;
    p[2..4].copy_from_slice(&seq.to_be_bytes());
    p[4..8].copy_from_slice(&(u32::from(seq) * 3000).to_be_bytes());
    p[8..12].copy_from_slice(&SSRC.to_be_bytes());
    for (i, b) in p[12..].iter_mut().enumerate() {
        *b = i as u8;
    }
    p
}

/// Receiver report, one report block: 32 bytes.
fn rtcp_packet() -> Vec<u8> {
    let mut p = vec![0x81, 201, 0, 7];
    p.extend_from_slice(&SSRC.to_be_bytes());
    p.extend_from_slice(&0xABCDu32.to_be_bytes());
    p.extend_from_slice(&[0x11; 20]);
    p
}

/// What one library protects the other unprotects, both profiles, both
/// directions, RTP and RTCP.
fn check_interop() {
    for profile in [Profile::Cm, Profile::Gcm] {
        let salt = &SALT[..profile.salt_len()];
        for (from_name, from) in libraries() {
            for (to_name, to) in libraries() {
                let mut tx = from(profile, &KEY, salt, false);
                let mut rx = to(profile, &KEY, salt, true);
                for seq in 1..50u16 {
                    let plain = rtp_packet(seq);
                    let wire = tx.protect_rtp(&plain);
                    assert_eq!(
                        rx.unprotect_rtp(&wire).as_deref(),
                        Some(&plain[..]),
                        "RTP {profile:?} {from_name} -> {to_name}"
                    );
                    let plain = rtcp_packet();
                    let wire = tx.protect_rtcp(&plain);
                    assert_eq!(
                        rx.unprotect_rtcp(&wire).as_deref(),
                        Some(&plain[..]),
                        "RTCP {profile:?} {from_name} -> {to_name}"
                    );
                }
            }
        }
    }
}

fn srtp(c: &mut Criterion) {
    check_interop();
    for profile in [Profile::Cm, Profile::Gcm] {
        let salt = &SALT[..profile.salt_len()];
        let mut group = c.benchmark_group(format!("srtp_rtp_{}", profile.name()));
        group
            .throughput(Throughput::Bytes(RTP_LEN as u64))
            .measurement_time(Duration::from_secs(3))
            .warm_up_time(Duration::from_secs(1))
            .sample_size(40);
        for (name, lib) in libraries() {
            let mut tx = lib(profile, &KEY, salt, false);
            let mut pkt = rtp_packet(0);
            let mut seq = 0u16;
            group.bench_function(BenchmarkId::new("protect", name), |b| {
                b.iter(|| {
                    seq = seq.wrapping_add(1);
                    pkt[2..4].copy_from_slice(&seq.to_be_bytes());
                    tx.bench_protect_rtp(&pkt)
                })
            });
            let mut sender = lib(profile, &KEY, salt, false);
            let mut rx = lib(profile, &KEY, salt, true);
            let mut seq = 0u16;
            group.bench_function(BenchmarkId::new("unprotect", name), |b| {
                b.iter_batched(
                    || {
                        seq = seq.wrapping_add(1);
                        sender.protect_rtp(&rtp_packet(seq))
                    },
                    |wire| rx.bench_unprotect_rtp(&wire),
                    BatchSize::SmallInput,
                )
            });
        }
        group.finish();

        let mut group = c.benchmark_group(format!("srtp_rtcp_{}", profile.name()));
        group
            .throughput(Throughput::Elements(1))
            .measurement_time(Duration::from_secs(3))
            .warm_up_time(Duration::from_secs(1))
            .sample_size(40);
        let plain = rtcp_packet();
        for (name, lib) in libraries() {
            let mut tx = lib(profile, &KEY, salt, false);
            group.bench_function(BenchmarkId::new("protect", name), |b| {
                b.iter(|| tx.bench_protect_rtcp(&plain))
            });
            let mut sender = lib(profile, &KEY, salt, false);
            let mut rx = lib(profile, &KEY, salt, true);
            group.bench_function(BenchmarkId::new("unprotect", name), |b| {
                b.iter_batched(
                    || sender.protect_rtcp(&plain),
                    |wire| rx.bench_unprotect_rtcp(&wire),
                    BatchSize::SmallInput,
                )
            });
        }
        group.finish();
    }
}

criterion_group!(benches, srtp);
criterion_main!(benches);

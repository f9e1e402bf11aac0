//! Packets per second through one data-plane core: one publisher to N
//! subscribers (N = 1, 10, 50), through `Core::handle_datagram` and the drain
//! of its transmits, with real SRTP both ways (unprotect once, protect per
//! subscriber). Throughput counts packets in; the per-subscriber cost is the
//! slope between N = 10 and N = 50.

use std::hint::black_box;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use dataplane::stun;
use dataplane::{Core, CoreConfig};
use shared::{ChannelKey, Command, ConnId, MediaKind, SrtpProfile};
use webrtc_srtp::context::Context;
use webrtc_srtp::protection_profile::ProtectionProfile;

const PAYLOAD: usize = 1100;
const PUBLISHER: ConnId = ConnId(0);

fn addr(i: u32) -> SocketAddr {
    SocketAddr::from(([10, 0, (i >> 8) as u8, i as u8], 40_000))
}

fn profile_parts(profile: SrtpProfile) -> (ProtectionProfile, usize) {
    match profile {
        SrtpProfile::Aes128CmHmacSha1_80 => (ProtectionProfile::Aes128CmHmacSha1_80, 14),
        SrtpProfile::AeadAes128Gcm => (ProtectionProfile::AeadAes128Gcm, 12),
    }
}

/// A core with a publisher (one video track) and `n` subscribers, all past
/// ICE and keyed; returns it with the publisher's protecting context.
fn setup(profile: SrtpProfile, n: u32) -> (Core, Context, Instant) {
    let now = Instant::now();
    let mut core = Core::new(0, CoreConfig::default());
    let (pp, salt_len) = profile_parts(profile);
    for i in 0..=n {
        let conn = ConnId(i);
        let ufrag = format!("u{i}");
        let pwd = format!("password-{i}-0123456789");
        core.handle_command(
            now,
            Command::AddConnection {
                conn,
                channel: ChannelKey(1),
                local_ufrag: ufrag.clone(),
                local_pwd: pwd.clone(),
                send: i == 0,
                recv: i != 0,
            },
        );
        let mut req = Vec::new();
        let user = format!("{ufrag}:r");
        stun::write_binding_request(&mut req, &[1; 12], user.as_bytes(), pwd.as_bytes(), true);
        core.handle_datagram(now, addr(i), &mut req);
        core.handle_command(
            now,
            Command::SetSrtpKeys {
                conn,
                profile,
                local_key: vec![i as u8; 16],
                local_salt: vec![1; salt_len],
                remote_key: vec![0x80 | i as u8; 16],
                remote_salt: vec![2; salt_len],
            },
        );
    }
    core.handle_command(
        now,
        Command::AddPublisherTrack {
            conn: PUBLISHER,
            kind: MediaKind::Video,
            payload_type: 96,
            clock_rate: 90_000,
            out_ssrc: 0xABCD,
        },
    );
    for i in 1..=n {
        core.handle_command(
            now,
            Command::Subscribe {
                subscriber: ConnId(i),
                publisher: PUBLISHER,
            },
        );
    }
    while core.poll_transmit().is_some() {}
    while core.poll_event().is_some() {}
    let publisher_tx =
        Context::new(&[0x80; 16], &vec![2; salt_len], pp, None, None).expect("valid key sizes");
    (core, publisher_tx, now)
}

fn forward(c: &mut Criterion) {
    let mut group = c.benchmark_group("forward");
    group
        .throughput(Throughput::Elements(1))
        .measurement_time(Duration::from_secs(4))
        .sample_size(30);
    for (name, profile) in [
        ("aes_gcm", SrtpProfile::AeadAes128Gcm),
        ("aes_cm_sha1_80", SrtpProfile::Aes128CmHmacSha1_80),
    ] {
        for n in [1u32, 10, 50] {
            let (mut core, mut publisher_tx, now) = setup(profile, n);
            let mut seq = 0u16;
            let mut plain = vec![0u8; 12 + PAYLOAD];
            plain[0] = 0x80;
            plain[1] = 96;
            plain[8..12].copy_from_slice(&0x1234_5678u32.to_be_bytes());
            group.bench_function(BenchmarkId::new(name, n), |b| {
                b.iter_batched(
                    || {
                        seq = seq.wrapping_add(1);
                        plain[2..4].copy_from_slice(&seq.to_be_bytes());
                        plain[4..8].copy_from_slice(&(seq as u32 * 3000).to_be_bytes());
                        publisher_tx.encrypt_rtp(&plain).expect("encrypts").to_vec()
                    },
                    |mut pkt| {
                        core.handle_datagram(now, addr(0), &mut pkt);
                        let mut sent = 0usize;
                        while let Some(t) = core.poll_transmit() {
                            sent += black_box(t.contents).len();
                        }
                        sent
                    },
                    BatchSize::SmallInput,
                )
            });
            let stats = core.stats();
            assert_eq!(stats.dropped_srtp, 0, "every packet authenticates");
            assert_eq!(stats.rtp_forwarded, stats.rtp_received * n as u64);
        }
    }
    group.finish();
}

criterion_group!(benches, forward);
criterion_main!(benches);

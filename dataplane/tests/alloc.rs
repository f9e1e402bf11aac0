//! Heap allocations per forwarded packet, counted with a global allocator
//! (own test binary, so nothing else shares the counter).
//!
//! The core's own path allocates nothing per packet; the count is what
//! `rtc-srtp`'s `BytesMut`-returning API costs: one output buffer for the
//! unprotect, and one per subscriber for the protect. (The packets here carry
//! no RTP header extensions; the RTP header parser of both SRTP libraries
//! allocates once more per packet with extensions, plus once per extension.)

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use dataplane::{stun, Core, CoreConfig};
use shared::{ChannelKey, Command, ConnId, MediaKind, SrtpProfile};
use webrtc_srtp::context::Context;
use webrtc_srtp::protection_profile::ProtectionProfile;

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn addr(i: u32) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, i as u8], 40_000))
}

/// Allocations per packet forwarded from one publisher to `n` subscribers.
fn allocations_per_packet(profile: SrtpProfile, n: u32) -> f64 {
    let (pp, salt_len) = match profile {
        SrtpProfile::Aes128CmHmacSha1_80 => (ProtectionProfile::Aes128CmHmacSha1_80, 14),
        SrtpProfile::AeadAes128Gcm => (ProtectionProfile::AeadAes128Gcm, 12),
    };
    let now = Instant::now();
    let mut core = Core::new(0, CoreConfig::default());
    for i in 0..=n {
        let (ufrag, pwd) = (format!("u{i}"), format!("pw{i}-0123456789abcdef"));
        core.handle_command(
            now,
            Command::AddConnection {
                conn: ConnId(i),
                channel: ChannelKey(1),
                local_ufrag: ufrag.clone(),
                local_pwd: pwd.clone(),
                send: true,
                recv: true,
            },
        );
        let mut req = Vec::new();
        stun::write_binding_request(
            &mut req,
            &[1; 12],
            format!("{ufrag}:r").as_bytes(),
            pwd.as_bytes(),
            true,
        );
        core.handle_datagram(now, addr(i), &mut req);
        core.handle_command(
            now,
            Command::SetSrtpKeys {
                conn: ConnId(i),
                profile,
                local_key: vec![1; 16],
                local_salt: vec![1; salt_len],
                remote_key: vec![2; 16],
                remote_salt: vec![2; salt_len],
            },
        );
    }
    core.handle_command(
        now,
        Command::AddPublisherTrack {
            conn: ConnId(0),
            kind: MediaKind::Audio,
            payload_type: 111,
            clock_rate: 48_000,
            out_ssrc: 7,
        },
    );
    for i in 1..=n {
        core.handle_command(
            now,
            Command::Subscribe {
                subscriber: ConnId(i),
                publisher: ConnId(0),
            },
        );
    }
    let mut tx = Context::new(&[2; 16], &vec![2; salt_len], pp, None, None).unwrap();
    let packets: Vec<Vec<u8>> = (0..200u16)
        .map(|seq| {
            let mut p = vec![0x80, 111];
            p.extend_from_slice(&seq.to_be_bytes());
            p.extend_from_slice(&(seq as u32 * 960).to_be_bytes());
            p.extend_from_slice(&5u32.to_be_bytes());
            p.extend_from_slice(&[0xAB; 160]);
            tx.encrypt_rtp(&p).unwrap().to_vec()
        })
        .collect();
    // Warm up: first packets create per-SSRC state in the contexts.
    let mut it = packets.into_iter();
    for mut p in it.by_ref().take(100) {
        core.handle_datagram(now, addr(0), &mut p);
        while core.poll_transmit().is_some() {}
    }
    let mut rest: Vec<Vec<u8>> = it.collect();
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    for p in &mut rest {
        core.handle_datagram(now, addr(0), p);
        while core.poll_transmit().is_some() {}
    }
    let after = ALLOCATIONS.load(Ordering::Relaxed);
    assert_eq!(core.stats().rtp_forwarded, 200 * n as u64);
    (after - before) as f64 / rest.len() as f64
}

#[test]
fn allocations_come_from_srtp_only() {
    for profile in [SrtpProfile::Aes128CmHmacSha1_80, SrtpProfile::AeadAes128Gcm] {
        let one = allocations_per_packet(profile, 1);
        let ten = allocations_per_packet(profile, 10);
        let per_subscriber = (ten - one) / 9.0;
        println!("{profile:?}: {one} allocations/packet with 1 subscriber, {per_subscriber} per extra subscriber");
        // Protect: one output buffer, sized for the tag up front.
        assert!(per_subscriber <= 1.0, "{profile:?}: {per_subscriber}");
        // Unprotect: one output buffer; the replay detector is built once per
        // SSRC (during the warm-up), not per packet.
        assert!(one <= per_subscriber + 1.0, "{profile:?}: {one}");
    }
}

//! Packets per second through a real data plane on 127.0.0.1: one glommio
//! core, one publisher sending AES-GCM SRTP (1200-byte RTP) and `n`
//! subscribers, each on its own UDP socket. Compares the per-datagram socket
//! path (`recvfrom` / `sendto`) with the batched one (`recvmmsg` / `sendmmsg`)
//! in the same run.
//!
//! One client thread sends and receives: it keeps at most `WINDOW` forwarded
//! packets outstanding (sent × n − received), so the core stays busy without
//! overrunning the kernel's socket buffers. A packet lost anyway is written
//! off after `STALL` without progress; losses are printed. Throughput counts
//! packets in from the publisher (each forwarded `n` times).

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use dataplane::runtime::{self, DataPlane, DataPlaneConfig, UdpIo};
use dataplane::stun;
use rtc_srtp::context::Context;
use rtc_srtp::crypto::RTCCryptoProvider;
use rtc_srtp::protection_profile::ProtectionProfile;
use shared::ring::{core_link, ControlEnd};
use shared::{ChannelKey, Command, ConnId, MediaKind, SrtpProfile};

const WINDOW: u64 = 48;
const STALL: Duration = Duration::from_millis(20);
const RTP_LEN: usize = 1200;

struct Setup {
    dp: Option<DataPlane>,
    control: ControlEnd,
    publisher: UdpSocket,
    subscribers: Vec<UdpSocket>,
    tx: Context,
    seq: u16,
    lost: u64,
}

fn wait_for<T>(mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < end, "timed out");
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn setup(io: UdpIo, n: u32) -> Setup {
    let (mut control, core) = core_link(1 << 20).expect("ring");
    let config = DataPlaneConfig {
        listen_address: "127.0.0.1".parse().unwrap(),
        base_port: 0,
        cores: 1,
        pin: false,
        consent_timeout: Duration::from_secs(600),
    };
    let dp = runtime::start_with_io(config, vec![core], io).expect("data plane starts");
    let server = SocketAddr::from(([127, 0, 0, 1], dp.ports()[0]));
    let mut sockets = Vec::new();
    for i in 0..=n {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.connect(server).unwrap();
        let (ufrag, pwd) = (format!("u{i}"), format!("password-{i}-0123456789"));
        control
            .send(&Command::AddConnection {
                conn: ConnId(i),
                channel: ChannelKey(1),
                local_ufrag: ufrag.clone(),
                local_pwd: pwd.clone(),
                send: i == 0,
                recv: i != 0,
            })
            .unwrap();
        let mut req = Vec::new();
        let user = format!("{ufrag}:r");
        stun::write_binding_request(&mut req, &[1; 12], user.as_bytes(), pwd.as_bytes(), true);
        sock.set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let mut buf = [0u8; 1500];
        wait_for(|| {
            sock.send(&req).unwrap();
            sock.recv(&mut buf).ok()
        });
        control
            .send(&Command::SetSrtpKeys {
                conn: ConnId(i),
                profile: SrtpProfile::AeadAes128Gcm,
                local_key: vec![i as u8; 16],
                local_salt: vec![1; 12],
                remote_key: vec![0x80 | i as u8; 16],
                remote_salt: vec![2; 12],
            })
            .unwrap();
        sockets.push(sock);
    }
    control
        .send(&Command::AddPublisherTrack {
            conn: ConnId(0),
            kind: MediaKind::Video,
            payload_type: 96,
            clock_rate: 90_000,
            out_ssrc: 0xABCD,
        })
        .unwrap();
    for i in 1..=n {
        control
            .send(&Command::Subscribe {
                subscriber: ConnId(i),
                publisher: ConnId(0),
            })
            .unwrap();
    }
    let provider: Arc<dyn RTCCryptoProvider> =
        rtc_srtp::crypto::default_provider().expect("ring provider");
    let tx = Context::new(
        &[0x80; 16],
        &[2; 12],
        ProtectionProfile::AeadAes128Gcm,
        None,
        None,
        provider.crypto(),
    )
    .unwrap();
    let publisher = sockets.remove(0);
    for s in &sockets {
        s.set_nonblocking(true).unwrap();
    }
    let mut setup = Setup {
        dp: Some(dp),
        control,
        publisher,
        subscribers: sockets,
        tx,
        seq: 0,
        lost: 0,
    };
    // Until the first packet comes through, the commands are still on their
    // way: send one at a time.
    wait_for(|| {
        setup.send_one();
        std::thread::sleep(Duration::from_millis(2));
        (setup.drain() > 0).then_some(())
    });
    while setup.drain() > 0 {}
    setup
}

impl Setup {
    fn send_one(&mut self) {
        self.seq = self.seq.wrapping_add(1);
        let mut p = vec![0u8; RTP_LEN];
        p[0] = 0x80;
        p[1] = 96;
        p[2..4].copy_from_slice(&self.seq.to_be_bytes());
        p[4..8].copy_from_slice(&(u32::from(self.seq) * 3000).to_be_bytes());
        p[8..12].copy_from_slice(&0x1234_5678u32.to_be_bytes());
        let wire = self.tx.encrypt_rtp(&p).unwrap();
        self.publisher.send(&wire).unwrap();
    }

    /// Forwarded RTP waiting on the subscriber sockets, read without
    /// blocking (the core's sender reports are read and not counted).
    fn drain(&mut self) -> u64 {
        let mut buf = [0u8; 2048];
        let mut got = 0;
        for s in &self.subscribers {
            while let Ok(len) = s.recv(&mut buf) {
                if len > 12 && buf[1] & 0x7F == 96 {
                    got += 1;
                }
            }
        }
        got
    }

    /// Sends `packets` and returns once every forward came back or was
    /// written off.
    fn run(&mut self, packets: u64) -> Duration {
        let n = self.subscribers.len() as u64;
        let (mut sent, mut received) = (0u64, 0u64);
        let mut progress = Instant::now();
        let start = Instant::now();
        while received < packets * n {
            if sent < packets && (sent * n).saturating_sub(received) < WINDOW {
                self.send_one();
                sent += 1;
                continue;
            }
            let got = self.drain();
            if got > 0 {
                received += got;
                progress = Instant::now();
            } else if progress.elapsed() > STALL {
                let missing = (sent * n).saturating_sub(received);
                self.lost += missing;
                received += missing;
                progress = Instant::now();
            }
        }
        start.elapsed()
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = self.control.send(&Command::Shutdown);
        if let Some(dp) = self.dp.take() {
            let _ = dp.join();
        }
    }
}

fn udp(c: &mut Criterion) {
    let mut group = c.benchmark_group("udp_forward");
    group
        .throughput(Throughput::Elements(1))
        .measurement_time(Duration::from_secs(4))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(20);
    for n in [1u32, 4] {
        for (name, io) in [
            ("per_datagram", UdpIo::PerDatagram),
            ("batched", UdpIo::Batched),
        ] {
            let mut s = setup(io, n);
            group.bench_function(BenchmarkId::new(name, n), |b| {
                b.iter_custom(|iters| s.run(iters))
            });
            println!("udp_forward/{name}/{n}: {} forwards written off", s.lost);
        }
    }
    group.finish();
}

criterion_group!(benches, udp);
criterion_main!(benches);

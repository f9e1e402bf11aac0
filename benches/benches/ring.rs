//! Messages per second through the control-plane -> core command ring:
//! encode, push, pop and decode, on one thread and across two threads.

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use shared::ring::{core_link, ControlEnd, CoreEnd};
use shared::{Command, ConnId};

/// Bytes per ring, the size a node would give each core.
const CAPACITY: usize = 1 << 20;

fn subscribe() -> Command {
    Command::Subscribe {
        subscriber: ConnId(1),
        publisher: ConnId(2),
    }
}

fn send_dtls_1200() -> Command {
    Command::SendDtls {
        conn: ConnId(1),
        data: vec![0x16; 1200],
    }
}

/// Waits a little; after a few spins, gives the core away, so that on a busy
/// machine a side waiting for the other does not burn the other's time slice.
fn backoff(spins: &mut u32) {
    *spins = spins.wrapping_add(1);
    if spins.is_multiple_of(64) {
        thread::yield_now();
    } else {
        std::hint::spin_loop();
    }
}

fn link() -> (ControlEnd, CoreEnd) {
    core_link(CAPACITY).expect("a 1 MiB shared mapping")
}

/// One thread sends a command and receives it straight back out of the ring.
fn single_thread(c: &mut Criterion) {
    let mut group = c.benchmark_group("ring/single_thread");
    group.throughput(Throughput::Elements(1));
    for (name, cmd) in [
        ("subscribe", subscribe()),
        ("send_dtls_1200", send_dtls_1200()),
    ] {
        let (mut control, mut core) = link();
        group.bench_function(name, |b| {
            b.iter(|| {
                control
                    .send(black_box(&cmd))
                    .expect("the ring is empty before each send");
                black_box(core.recv())
            })
        });
    }

    // The ring alone: the record is handed over raw, not decoded.
    let (mut control, mut core) = link();
    let cmd = subscribe();
    group.bench_function("subscribe_raw", |b| {
        b.iter(|| {
            control
                .send(black_box(&cmd))
                .expect("the ring is empty before each send");
            black_box(core.recv_with(|record| record.len()))
        })
    });

    // Send a batch, then drain it with one release of the ring space.
    const BATCH: usize = 64;
    let (mut control, mut core) = link();
    let cmd = subscribe();
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("subscribe_batch64", |b| {
        b.iter(|| {
            for _ in 0..BATCH {
                control
                    .send(black_box(&cmd))
                    .expect("64 small records fit the empty ring");
            }
            core.drain(BATCH, |c| {
                black_box(c).ok();
            })
        })
    });
    group.finish();
}

/// The bench thread sends; a second thread drains in batches, as a core's
/// loop would. Time runs until the last command of the run is received.
fn two_threads(c: &mut Criterion) {
    let mut group = c.benchmark_group("ring/two_threads");
    group.throughput(Throughput::Elements(1));
    for (name, cmd) in [
        ("subscribe", subscribe()),
        ("send_dtls_1200", send_dtls_1200()),
    ] {
        let (mut control, mut core) = link();
        let received = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let consumer = {
            let received = Arc::clone(&received);
            let stop = Arc::clone(&stop);
            thread::spawn(move || {
                let mut spins = 0;
                while !stop.load(Ordering::Relaxed) {
                    let n = core.drain(256, |c| {
                        black_box(c).ok();
                    });
                    if n == 0 {
                        backoff(&mut spins);
                    } else {
                        received.fetch_add(n as u64, Ordering::Release);
                    }
                }
            })
        };
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let target = received.load(Ordering::Acquire) + iters;
                let mut spins = 0;
                let start = Instant::now();
                for _ in 0..iters {
                    while control.send(black_box(&cmd)).is_err() {
                        backoff(&mut spins);
                    }
                }
                while received.load(Ordering::Acquire) < target {
                    backoff(&mut spins);
                }
                start.elapsed()
            })
        });
        stop.store(true, Ordering::Relaxed);
        consumer.join().expect("consumer thread");
    }
    group.finish();
}

criterion_group!(benches, single_thread, two_threads);
criterion_main!(benches);

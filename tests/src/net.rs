//! Addresses for one test: its own slice of 127.0.0.0/8.
//!
//! nextest runs every test in its own process, so an in-process counter
//! cannot keep tests apart. Instead each test name hashes to a block of
//! loopback addresses (`127.A.B.1`, `127.A.B.2`, …) and the node ports stay
//! fixed (API 3000, signaling 5000, media 20000). A block whose first
//! address already has its API port taken is skipped.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};

/// The loopback block of one test.
#[derive(Debug, Clone, Copy)]
pub struct TestNet {
    a: u8,
    b: u8,
}

pub const API_PORT: u16 = 3000;
pub const SIGNALING_PORT: u16 = 5000;
pub const MEDIA_PORT: u16 = 20000;

impl TestNet {
    /// The block for the test named `test_name` (use the function's name).
    pub fn new(test_name: &str) -> Self {
        // FNV-1a: stable across runs and platforms, unlike std's hasher.
        let mut h: u32 = 0x811c_9dc5;
        for byte in test_name.bytes() {
            h ^= u32::from(byte);
            h = h.wrapping_mul(0x0100_0193);
        }
        // 127.10.0.0 – 127.249.255.0: clear of 127.0.0.x, which people use by hand.
        let mut slot = h % (240 * 256);
        for _ in 0..64 {
            let net = TestNet {
                a: 10 + (slot / 256) as u8,
                b: (slot % 256) as u8,
            };
            if TcpListener::bind(SocketAddr::new(net.addr(1).into(), API_PORT)).is_ok() {
                return net;
            }
            slot = (slot + 1) % (240 * 256);
        }
        panic!("no free loopback block found for {test_name}");
    }

    /// The `n`-th address of the block, `n` in 1..=254 (node 1, node 2, …).
    pub fn addr(&self, n: u8) -> Ipv4Addr {
        assert!((1..=254).contains(&n), "address index {n} out of 1..=254");
        Ipv4Addr::new(127, self.a, self.b, n)
    }
}

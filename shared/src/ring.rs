//! Single-producer single-consumer byte-record rings in a shared memory mapping
//! (memfd + mmap), one pair (commands down, events up) per data-plane core.

use crate::msg::{Command, DecodeError, Event};

/// The ring has no room for the record now; retry later (nothing was written).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("ring full ({needed} bytes needed)")]
pub struct RingFull {
    pub needed: usize,
}

/// Creates one command ring and one event ring of `capacity` bytes each.
pub fn core_link(capacity: usize) -> std::io::Result<(ControlEnd, CoreEnd)> {
    let _ = capacity;
    todo!()
}

/// The control plane's end: sends commands, receives events. `Send`.
pub struct ControlEnd {}

/// A data-plane core's end: receives commands, sends events. `Send`.
pub struct CoreEnd {}

impl ControlEnd {
    pub fn send(&mut self, cmd: &Command) -> Result<(), RingFull> {
        let _ = cmd;
        todo!()
    }
    pub fn recv(&mut self) -> Option<Result<Event, DecodeError>> {
        todo!()
    }
}

impl CoreEnd {
    pub fn recv(&mut self) -> Option<Result<Command, DecodeError>> {
        todo!()
    }
    pub fn send(&mut self, ev: &Event) -> Result<(), RingFull> {
        let _ = ev;
        todo!()
    }
}

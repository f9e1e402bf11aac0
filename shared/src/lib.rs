//! Ids, the shared-memory SPSC ring and the binary message layout between the
//! control plane and the data plane.
//!
//! ```text
//!  control plane (tokio)                         data-plane core N (glommio)
//!  ControlEnd --Command ring (memfd mapping)-->  CoreEnd
//!  ControlEnd <--Event ring  (memfd mapping)---  CoreEnd
//! ```
//!
//! Invariants:
//! - This crate depends on neither tokio nor glommio.
//! - The layout in the mapping contains no pointers: only offsets and bytes, so the
//!   data plane could run as a separate process.
//! - A command is never silently lost: `ControlEnd::send` returns `RingFull` and the
//!   caller retries; the data plane may drop an *event* only where the event's doc
//!   says so (counted).

pub mod msg;
pub mod ring;
#[cfg(test)]
mod test_rng;

pub use msg::*;

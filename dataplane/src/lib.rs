//! The data plane: one glommio executor pinned per data-plane core, each owning a
//! UDP socket and a sans-IO [`core::Core`] that does ICE-lite, SRTP and forwarding.
//!
//! ```text
//!  UDP port base+i ──► runtime (glommio, core i) ──► Core::handle_datagram
//!                          │   ▲                          │ poll_transmit ──► UDP
//!        CoreEnd::recv ────┘   └──── CoreEnd::send ◄──────┘ poll_event
//! ```
//!
//! Contract with the control plane (through `shared::ring`):
//! - commands arrive on the core's `CoreEnd`; events (DTLS records, ICE state,
//!   counters) leave on it; a full event ring drops the event (counted), it
//!   never blocks the packet path;
//! - a channel lives on exactly one core: forwarding never crosses cores;
//! - network input never panics: it is dropped and counted in `CoreStats`.
//!
//! Invariants: only this crate uses glommio; `core` and the protocol modules
//! never touch a socket or a clock.

pub mod core;
pub mod rtcp;
pub mod runtime;
pub mod srtp;
pub mod stun;
pub mod track;

pub use crate::core::{Core, CoreConfig, Transmit};

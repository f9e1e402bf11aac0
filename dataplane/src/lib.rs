//! The data plane: one glommio executor pinned per data-plane core, each owning a
//! UDP socket and a sans-IO [`core::Core`] that does ICE-lite, SRTP and forwarding.
//!
//! Contract with the control plane (through `shared::ring`):
//! - commands arrive on the core's `CoreEnd`; events (DTLS records, ICE state,
//!   counters) leave on it;
//! - a channel lives on exactly one core: forwarding never crosses cores;
//! - network input never panics: it is dropped and counted in `CoreStats`.

pub mod core;
pub mod runtime;

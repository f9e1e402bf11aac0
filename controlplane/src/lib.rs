//! The control plane of a node: everything slow and stateful.
//!
//! Invariants:
//! - Only this crate speaks HTTP, WebSocket, JSON and Raft.
//! - It never touches media packets on the hot path: it installs connections,
//!   keys and subscriptions in the data plane through `shared::ring`.

pub mod api;
pub mod channels;
pub mod cluster;
pub mod config;
pub mod dtls;
pub mod ids;
pub mod license;
pub mod media;
pub mod negotiation;
pub mod node;
pub mod sdp;
pub mod signaling;
pub mod webhook;

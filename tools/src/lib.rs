//! Measurement tools: a Sora-compatible WebRTC client ([`client`]) for tests
//! and load generation, a minimal client of the node's HTTP API ([`api`]) and
//! CPU accounting of a process ([`procstat`]).

pub mod api;
pub mod client;
pub mod procstat;

pub use client::{Client, ClientOptions, CloseInfo, Role, SendPlan, SrtpProfile, State};

//! Cluster: membership and channel ownership replicated with openraft.
//!
//! ```text
//!   Cluster (handle, Clone) ──► service::Inner ──► openraft::Raft
//!        │                          │  ▲                 │
//!        │ API calls                │  │ rpc::Request     ├─ store::LogStore (redb, fsync)
//!        ▼                          ▼  │                 └─ store::StateMachineStore
//!   leader ops (forwarded)     TCP HOST:cluster_listen_port      └─ state::ClusterState
//! ```
//!
//! Contract:
//! - Members are openraft's membership: each member is a [`types::MemberNode`]
//!   (name, cluster address, URLs, license, version, member_since); the Raft id
//!   is the FNV-1a hash of the node name ([`types::node_id_of`]).
//! - Channel ownership (channel → one owner) and member modes are the state
//!   machine ([`state::ClusterState`]). Every change goes through the leader
//!   and an API call returns only after its entry is committed, so a crash of
//!   a minority never undoes it.
//! - All cluster traffic (Raft, heartbeats, forwarded operations) is one TCP
//!   port, `cluster_listen_port`, at the host part of each node name
//!   ([`rpc`] describes the framing).
//! - `connected` is observed liveness: every node sends a heartbeat carrying
//!   its connection count to every member every `heartbeat_interval`; a member
//!   not heard from for `down_after` shows `connected: false`. After a node
//!   dies it shows disconnected within `down_after + heartbeat_interval`.
//! - The leader releases the channels of an owner it has seen disconnected for
//!   `channel_owner_down_release` (so within that plus `down_after +
//!   heartbeat_interval` of the owner's death), and those of non-members at once.
//! - A member whose own config changed (version after an upgrade, URLs,
//!   license) updates its membership entry itself once it has a quorum; the
//!   license rule is checked again then. `block_new_connection` members
//!   ([`Cluster::set_mode`]) get no new channels.
//! - Raft timing is derived from `heartbeat_interval`: the Raft heartbeat is
//!   the same interval and the election timeout is 5–10 × it (the defaults,
//!   300 ms, give 1.5–3 s elections; tests use 100 ms).
//!
//! Reads: `list_nodes` and the fast path of `acquire_channel` read this
//! node's applied state. `list_channels` first asks the leader for a
//! linearizable read point and waits until it is applied here, so every
//! member answers alike; without a reachable majority it answers from the
//! applied state.

mod rpc;
mod service;
mod state;
mod store;
mod types;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod testutil;

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::api::ApiError;

pub use types::Mode;

/// Sora's default cluster port.
pub const DEFAULT_CLUSTER_LISTEN_PORT: u16 = 5890;
/// Default interval of liveness heartbeats and Raft heartbeats.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_millis(300);
/// Default time without a heartbeat after which a member shows `connected: false`.
pub const DEFAULT_DOWN_AFTER: Duration = Duration::from_secs(3);
/// Default time an owner stays disconnected before its channels are released.
pub const DEFAULT_CHANNEL_OWNER_DOWN_RELEASE: Duration = Duration::from_secs(10);

/// How a node takes part in the cluster.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// `NAME@HOST`; HOST is where the other nodes reach this one.
    pub node_name: String,
    /// The address the cluster port binds to.
    pub listen_ip: IpAddr,
    /// `cluster_listen_port`, the same on every node.
    pub port: u16,
    /// Where the Raft store lives (`<data_dir>/cluster.redb`).
    pub data_dir: PathBuf,
    pub contact_node_name_list: Vec<String>,
    /// What this node tells the others about itself.
    pub me: NodeInfo,
    pub heartbeat_interval: Duration,
    pub down_after: Duration,
    pub channel_owner_down_release: Duration,
}

impl ClusterConfig {
    /// A config with the default port and timings.
    pub fn new(
        node_name: impl Into<String>,
        listen_ip: IpAddr,
        data_dir: PathBuf,
        me: NodeInfo,
    ) -> Self {
        ClusterConfig {
            node_name: node_name.into(),
            listen_ip,
            port: DEFAULT_CLUSTER_LISTEN_PORT,
            data_dir,
            contact_node_name_list: Vec::new(),
            me,
            heartbeat_interval: DEFAULT_HEARTBEAT_INTERVAL,
            down_after: DEFAULT_DOWN_AFTER,
            channel_owner_down_release: DEFAULT_CHANNEL_OWNER_DOWN_RELEASE,
        }
    }

    /// Checks the values once at start; errors name the field.
    pub fn validate(&self) -> Result<(), ClusterError> {
        types::host_of(&self.node_name)?;
        let invalid = |field: &str, reason: &str| ClusterError::InvalidConfig {
            field: field.to_string(),
            reason: reason.to_string(),
        };
        if self.port == 0 {
            return Err(invalid("cluster_listen_port", "must not be 0"));
        }
        if self.heartbeat_interval < Duration::from_millis(10) {
            return Err(invalid("heartbeat_interval", "must be at least 10 ms"));
        }
        if self.down_after <= self.heartbeat_interval {
            return Err(invalid(
                "down_after",
                "must be longer than heartbeat_interval",
            ));
        }
        for name in &self.contact_node_name_list {
            types::host_of(name)?;
        }
        Ok(())
    }
}

/// A node's license as the cluster sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LicenseInfo {
    pub license_type: String,
    pub serial_code: String,
    pub max_connections: u64,
    /// `Some(N)`: a license that up to N nodes may share.
    pub max_nodes: Option<u64>,
}

/// What a node tells the cluster about itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub external_signaling_url: String,
    pub external_api_url: String,
    pub license: LicenseInfo,
    pub version: String,
}

/// One member in `ListClusterNodes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeView {
    pub connected: bool,
    pub external_api_url: String,
    pub external_signaling_url: String,
    pub license_max_connections: u64,
    pub license_max_nodes: u64,
    pub license_serial_code: String,
    pub license_type: String,
    pub mode: String,
    pub node_name: String,
    pub version: String,
}

/// One channel in `ListClusterChannels`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChannelView {
    pub channel_id: String,
    pub owners: Vec<OwnerView>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OwnerView {
    pub node_name: String,
    pub connected: bool,
}

/// Where a channel lives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChannelOwner {
    pub node_name: String,
    pub external_signaling_url: String,
    pub is_me: bool,
}

/// The `cluster` part of `GetStatsReport`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RaftStatus {
    /// `leader`, `follower`, `candidate`, `learner` or `uninitialized`.
    pub raft_state: &'static str,
    pub raft_term: u64,
    /// The last applied log index (openraft 0.9 does not publish the
    /// committed index; applied trails it by at most the entries in flight).
    pub raft_commit_index: u64,
}

/// Why a cluster operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum ClusterError {
    #[error("contact node {node} is not initialized: run InitCluster or JoinCluster on it first")]
    ContactNodeNotInitialized { node: String },
    #[error("{node} already belongs to a cluster; delete its data directory to reuse it")]
    AlreadyInitialized { node: String },
    #[error("this node does not belong to a cluster yet: run InitCluster or JoinCluster")]
    NotInitialized,
    #[error("license violation: {first} and {second} use the same license serial code")]
    LicenseViolation { first: String, second: String },
    #[error("no Raft majority is reachable; retry when more nodes are up")]
    NoQuorum,
    #[error("{node} is not a member of the cluster")]
    UnknownNode { node: String },
    #[error("{node} is alive; stop it before purging it")]
    NodeIsAlive { node: String },
    #[error("{node} is unreachable on its cluster port: {reason}")]
    Unreachable { node: String, reason: String },
    #[error("invalid node name {node_name:?}: {reason}")]
    InvalidNodeName { node_name: String, reason: String },
    #[error("invalid cluster setting {field}: {reason}")]
    InvalidConfig { field: String, reason: String },
    #[error("cannot listen on cluster address {addr}: {reason}")]
    Bind { addr: String, reason: String },
    #[error("cluster store in {path}: {reason}")]
    Storage { path: String, reason: String },
    #[error("raft: {reason}")]
    Raft { reason: String },
}

impl From<ClusterError> for ApiError {
    fn from(e: ClusterError) -> Self {
        use ClusterError as E;
        let (status, error_type) = match &e {
            E::ContactNodeNotInitialized { .. } => {
                (StatusCode::BAD_REQUEST, "contact_node_not_initialized")
            }
            E::AlreadyInitialized { .. } => (StatusCode::CONFLICT, "already_initialized"),
            E::NotInitialized => (StatusCode::CONFLICT, "not_initialized"),
            E::LicenseViolation { .. } => (StatusCode::BAD_REQUEST, "license_violation"),
            E::NoQuorum => (StatusCode::SERVICE_UNAVAILABLE, "no_quorum"),
            E::UnknownNode { .. } => (StatusCode::BAD_REQUEST, "unknown_node"),
            E::NodeIsAlive { .. } => (StatusCode::CONFLICT, "node_is_alive"),
            E::Unreachable { .. } => (StatusCode::SERVICE_UNAVAILABLE, "node_unreachable"),
            E::InvalidNodeName { .. } => (StatusCode::BAD_REQUEST, "invalid_node_name"),
            E::InvalidConfig { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "invalid_config"),
            E::Bind { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "cluster_bind_error"),
            E::Storage { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "cluster_storage_error"),
            E::Raft { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "raft_error"),
        };
        ApiError::new(status, error_type, e.to_string())
    }
}

/// A running cluster node. Cheap to clone; call [`Cluster::shutdown`] to stop it.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<service::Inner>,
}

impl Cluster {
    /// Binds the cluster port, opens the store and starts Raft. A node whose
    /// `data_dir` holds cluster state rejoins its cluster by itself.
    pub async fn start(cfg: ClusterConfig) -> Result<Cluster, ClusterError> {
        Ok(Cluster {
            inner: service::Inner::start(cfg).await?,
        })
    }

    /// Forms a new cluster of `node_name_list` (which must include this node).
    /// Every listed node must be running, reachable and uninitialised.
    pub async fn init_cluster(&self, node_name_list: Vec<String>) -> Result<(), ClusterError> {
        self.inner.init_cluster(node_name_list).await
    }

    /// Joins the cluster that `contact_node_name` belongs to; returns the members.
    pub async fn join_cluster(
        &self,
        contact_node_name: String,
    ) -> Result<Vec<String>, ClusterError> {
        self.inner.join_cluster(contact_node_name).await
    }

    /// Removes a stopped member and releases its channels.
    pub async fn purge_node(&self, target: String) -> Result<(), ClusterError> {
        self.inner.purge_node(target).await
    }

    /// Sets a member's mode; `block_new_connection` members get no new channels.
    pub async fn set_mode(&self, node_name: String, mode: Mode) -> Result<(), ClusterError> {
        self.inner.set_mode(node_name, mode).await
    }

    pub async fn list_nodes(&self) -> Result<Vec<NodeView>, ClusterError> {
        self.inner.list_nodes()
    }

    pub async fn list_channels(&self) -> Result<Vec<ChannelView>, ClusterError> {
        self.inner.list_channels().await
    }

    /// The owner of `channel_id`, assigning one through Raft if it has none.
    pub async fn acquire_channel(
        &self,
        channel_id: &str,
        local_connections: u64,
    ) -> Result<ChannelOwner, ClusterError> {
        self.inner.set_local_connections(local_connections);
        self.inner.acquire_channel(channel_id).await
    }

    /// Gives up this node's ownership of `channel_id` (no-op if it owns it not).
    pub async fn release_channel(&self, channel_id: &str) -> Result<(), ClusterError> {
        self.inner.release_channel(channel_id).await
    }

    /// This node's connection count, sent to the others in heartbeats.
    pub fn set_local_connections(&self, n: u64) {
        self.inner.set_local_connections(n);
    }

    pub fn status(&self) -> RaftStatus {
        self.inner.status()
    }

    /// Whether this node recently had contact with a majority: a leader whose
    /// heartbeats a quorum acknowledged, or a follower that heard from its
    /// leader, within the maximum election timeout.
    pub fn has_quorum(&self) -> bool {
        self.inner.has_quorum()
    }

    /// The channels this node owns, updated as the state machine applies.
    pub fn owned_channels(&self) -> watch::Receiver<BTreeSet<String>> {
        self.inner.owned_channels()
    }

    pub fn node_name(&self) -> &str {
        self.inner.node_name()
    }

    /// Stops Raft, the cluster port and the background tasks, and closes the store.
    pub async fn shutdown(&self) {
        self.inner.shutdown().await
    }
}

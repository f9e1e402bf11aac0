//! Raft type configuration, the replicated command set and node naming.
//!
//! Node ids: a node's Raft id is the 64-bit FNV-1a hash of its `node_name`
//! (`NAME@HOST`). It is stable across restarts and needs no mapping table; the
//! full name travels in [`MemberNode`], and `init_cluster`/`join_cluster` refuse a
//! name whose hash collides with another member's.

use std::io::Cursor;

use serde::{Deserialize, Serialize};

use super::{ClusterError, NodeInfo};

openraft::declare_raft_types!(
    /// openraft's type bundle for the cluster.
    pub TypeConfig:
        D = Command,
        R = CommandResponse,
        NodeId = u64,
        Node = MemberNode,
        SnapshotData = Cursor<Vec<u8>>,
);

pub type NodeId = u64;
pub type Raft = openraft::Raft<TypeConfig>;

/// What openraft's membership carries for each member: everything that
/// `ListClusterNodes` shows except liveness and mode.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberNode {
    pub node_name: String,
    /// `HOST:cluster_listen_port`, where the cluster RPC of this node listens.
    pub addr: String,
    pub info: NodeInfo,
    /// Unix seconds when the node was added to the cluster.
    pub member_since: u64,
}

/// A node's mode: whether it accepts new connections.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    #[default]
    Normal,
    BlockNewConnection,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Normal => "normal",
            Mode::BlockNewConnection => "block_new_connection",
        }
    }
}

/// A command applied by the replicated state machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Give `channel_id` to `owner` unless it already has an owner.
    AssignChannel { channel_id: String, owner: String },
    /// Release `channel_id` if (and only if) `owner` owns it.
    ReleaseChannel { channel_id: String, owner: String },
    /// Release every channel owned by `node_name`.
    ReleaseOwner { node_name: String },
    /// Set a member's mode.
    SetMode { node_name: String, mode: Mode },
    /// Forget everything the state machine keeps about a purged member.
    ForgetNode { node_name: String },
}

/// The state machine's answer to a [`Command`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandResponse {
    /// For `AssignChannel`: the owner after applying (the existing one if there was one).
    pub owner: Option<String>,
    /// Channels that the command released.
    pub released: Vec<String>,
}

/// The stable Raft id of a node name (64-bit FNV-1a).
pub fn node_id_of(node_name: &str) -> NodeId {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    node_name
        .bytes()
        .fold(OFFSET, |h, b| (h ^ u64::from(b)).wrapping_mul(PRIME))
}

/// The host part of `NAME@HOST`.
pub fn host_of(node_name: &str) -> Result<&str, ClusterError> {
    let invalid = || ClusterError::InvalidNodeName {
        node_name: node_name.to_string(),
        reason: "expected NAME@HOST".to_string(),
    };
    let (name, host) = node_name.split_once('@').ok_or_else(invalid)?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if name.is_empty()
        || host.is_empty()
        || host.contains('@')
        || host.contains(char::is_whitespace)
    {
        return Err(invalid());
    }
    Ok(host)
}

/// `HOST:port` for a node name (IPv6 hosts in brackets).
pub fn cluster_addr(node_name: &str, port: u16) -> Result<String, ClusterError> {
    let host = host_of(node_name)?;
    Ok(if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_are_stable_and_distinct() {
        assert_eq!(node_id_of("sora1@127.0.0.1"), node_id_of("sora1@127.0.0.1"));
        assert_ne!(node_id_of("sora1@127.0.0.1"), node_id_of("sora2@127.0.0.1"));
        // FNV-1a reference value for the empty input.
        assert_eq!(node_id_of(""), 0xcbf2_9ce4_8422_2325);
    }

    #[test]
    fn node_names_parse() {
        assert_eq!(host_of("sora1@192.0.2.101").unwrap(), "192.0.2.101");
        assert_eq!(cluster_addr("a@::1", 5890).unwrap(), "[::1]:5890");
        assert_eq!(cluster_addr("a@[::1]", 5890).unwrap(), "[::1]:5890");
        assert_eq!(cluster_addr("a@host.example", 1).unwrap(), "host.example:1");
        for bad in ["sora1", "@127.0.0.1", "sora1@", "a@b@c", "a@b c"] {
            assert!(
                matches!(host_of(bad), Err(ClusterError::InvalidNodeName { .. })),
                "{bad}"
            );
        }
    }
}

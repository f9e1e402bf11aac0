//! The cluster wire protocol: one TCP port per node, request/response frames.
//!
//! A frame is a 4-byte big-endian length followed by that many bytes of JSON.
//! A connection carries one request at a time: the client writes a
//! [`Request`] frame and reads one [`Reply`] frame. Raft RPCs, heartbeats and
//! the operations that must run on the leader ([`LeaderOp`]) share the format.

use std::io;
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{RaftNetwork, RaftNetworkFactory};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

use super::types::{MemberNode, NodeId, TypeConfig};
use super::ClusterError;

/// Frames larger than this are refused (snapshots are sent in chunks).
pub const MAX_FRAME: usize = 64 << 20;

pub async fn write_frame<W, T>(w: &mut W, msg: &T) -> io::Result<()>
where
    W: AsyncWrite + Unpin,
    T: Serialize,
{
    let body = serde_json::to_vec(msg).map_err(io::Error::other)?;
    if body.len() > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "frame too large",
        ));
    }
    let mut buf = Vec::with_capacity(4 + body.len());
    buf.extend_from_slice(&(body.len() as u32).to_be_bytes());
    buf.extend_from_slice(&body);
    w.write_all(&buf).await?;
    w.flush().await
}

pub async fn read_frame<R, T>(r: &mut R) -> io::Result<T>
where
    R: AsyncRead + Unpin,
    T: DeserializeOwned,
{
    let mut len = [0u8; 4];
    r.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "frame too large",
        ));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    serde_json::from_slice(&body).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// A request from one node to another.
#[derive(Debug, Serialize, Deserialize)]
pub enum Request {
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<NodeId>),
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
    /// Who are you, and are you part of a cluster already?
    Hello,
    /// Liveness and load, sent to every member every `heartbeat_interval`.
    Heartbeat {
        from: String,
        connections: u64,
    },
    /// Sent by a node that stops gracefully: show it disconnected at once.
    Leaving {
        from: String,
    },
    /// Run `op` on the leader; a follower forwards it while `hops` allows.
    Leader {
        op: LeaderOp,
        hops: u8,
    },
}

/// Operations that only the leader performs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum LeaderOp {
    Join {
        node: MemberNode,
    },
    Acquire {
        channel_id: String,
        requester: String,
        requester_connections: u64,
    },
    Release {
        channel_id: String,
        owner: String,
    },
    Purge {
        target: String,
    },
    /// Replace a member's information (URLs, license, version) with `node`'s.
    UpdateNode {
        node: MemberNode,
    },
    SetMode {
        node_name: String,
        mode: super::Mode,
    },
    /// A linearizable read point: the leader's committed index, confirmed by a quorum.
    ReadIndex,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LeaderReply {
    Members(Vec<String>),
    Owner(String),
    Done,
    ReadIndex(Option<u64>),
}

#[derive(Debug, Serialize, Deserialize)]
pub enum Reply {
    AppendEntries(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    InstallSnapshot(
        Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>,
    ),
    Hello {
        node: MemberNode,
        initialized: bool,
    },
    Heartbeat {
        connections: u64,
    },
    Leader(Result<LeaderReply, ClusterError>),
    /// The request did not fit this node (e.g. a frame it could not decode).
    Refused(String),
}

/// A lazily connected, reused connection to one peer.
pub struct PeerClient {
    addr: String,
    conn: Mutex<Option<TcpStream>>,
}

impl PeerClient {
    pub fn new(addr: String) -> Self {
        PeerClient {
            addr,
            conn: Mutex::new(None),
        }
    }

    /// Sends `req` and waits for the reply, all within `timeout`. A reused
    /// connection that fails is replaced once (the peer may have restarted).
    pub async fn call(&self, req: &Request, timeout: Duration) -> io::Result<Reply> {
        let mut conn = self.conn.lock().await;
        let deadline = tokio::time::Instant::now() + timeout;
        for attempt in 0..2 {
            let reused = conn.is_some();
            if conn.is_none() {
                *conn = Some(connect(&self.addr, deadline).await?);
            }
            // Just set above when it was None.
            let stream = conn.as_mut().expect("connection present");
            match tokio::time::timeout_at(deadline, exchange(stream, req)).await {
                Ok(Ok(reply)) => return Ok(reply),
                Ok(Err(e)) => {
                    *conn = None;
                    if !reused || attempt == 1 {
                        return Err(e);
                    }
                }
                Err(_) => {
                    *conn = None;
                    return Err(io::Error::new(io::ErrorKind::TimedOut, "request timed out"));
                }
            }
        }
        Err(io::Error::other("unreachable retry state"))
    }

    /// Try the call only if no other call to this peer is in flight.
    pub async fn try_call(&self, req: &Request, timeout: Duration) -> Option<io::Result<Reply>> {
        if self.conn.try_lock().is_err() {
            return None;
        }
        Some(self.call(req, timeout).await)
    }
}

async fn connect(addr: &str, deadline: tokio::time::Instant) -> io::Result<TcpStream> {
    let stream = tokio::time::timeout_at(deadline, TcpStream::connect(addr))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    stream.set_nodelay(true)?;
    Ok(stream)
}

async fn exchange(stream: &mut TcpStream, req: &Request) -> io::Result<Reply> {
    write_frame(stream, req).await?;
    read_frame(stream).await
}

/// One request on a fresh connection (for rare calls: init, join, forwarding).
pub async fn call_once(addr: &str, req: &Request, timeout: Duration) -> io::Result<Reply> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut stream = connect(addr, deadline).await?;
    tokio::time::timeout_at(deadline, exchange(&mut stream, req))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "request timed out"))?
}

/// openraft's view of the network: a [`PeerClient`] per target.
pub struct Network;

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = RaftPeer;

    async fn new_client(&mut self, target: NodeId, node: &MemberNode) -> RaftPeer {
        RaftPeer {
            target,
            client: PeerClient::new(node.addr.clone()),
        }
    }
}

pub struct RaftPeer {
    target: NodeId,
    client: PeerClient,
}

type RpcResult<T, E = openraft::error::Infallible> =
    Result<T, RPCError<NodeId, MemberNode, RaftError<NodeId, E>>>;

impl RaftPeer {
    async fn send<E: std::error::Error>(
        &self,
        req: Request,
        option: &RPCOption,
    ) -> Result<Reply, RPCError<NodeId, MemberNode, RaftError<NodeId, E>>> {
        match self.client.call(&req, option.hard_ttl()).await {
            Ok(Reply::Refused(reason)) => Err(RPCError::Network(NetworkError::new(
                &io::Error::other(reason),
            ))),
            Ok(reply) => Ok(reply),
            Err(e) => Err(RPCError::Unreachable(Unreachable::new(&e))),
        }
    }

    // The error type is the one openraft's `RaftNetwork` prescribes.
    #[allow(clippy::result_large_err)]
    fn unexpected<T, E: std::error::Error>(
        reply: Reply,
    ) -> Result<T, RPCError<NodeId, MemberNode, RaftError<NodeId, E>>> {
        let e = io::Error::other(format!("unexpected reply {reply:?}"));
        Err(RPCError::Network(NetworkError::new(&e)))
    }
}

impl RaftNetwork<TypeConfig> for RaftPeer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>> {
        match self.send(Request::AppendEntries(rpc), &option).await? {
            Reply::AppendEntries(r) => {
                r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            other => Self::unexpected(other),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        match self.send(Request::InstallSnapshot(rpc), &option).await? {
            Reply::InstallSnapshot(r) => {
                r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            other => Self::unexpected(other),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>> {
        match self.send(Request::Vote(rpc), &option).await? {
            Reply::Vote(r) => {
                r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            other => Self::unexpected(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_reject_oversize() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        write_frame(
            &mut a,
            &Request::Heartbeat {
                from: "a@127.0.0.1".into(),
                connections: 7,
            },
        )
        .await
        .unwrap();
        match read_frame::<_, Request>(&mut b).await.unwrap() {
            Request::Heartbeat { from, connections } => {
                assert_eq!((from.as_str(), connections), ("a@127.0.0.1", 7));
            }
            other => panic!("unexpected {other:?}"),
        }
        a.write_all(&(u32::MAX).to_be_bytes()).await.unwrap();
        let err = read_frame::<_, Request>(&mut b).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }
}

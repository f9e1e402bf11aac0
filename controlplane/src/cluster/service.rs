//! The IO shell around Raft: the cluster port, heartbeats, leader operations
//! and the loop that releases the channels of dead owners.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use openraft::error::{ClientWriteError, RaftError};
use openraft::{ChangeMembers, Config, ServerState, SnapshotPolicy};
use redb::Database;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::rpc::{self, LeaderOp, LeaderReply, PeerClient, Reply, Request};
use super::state::{check_licenses, pick_owner, Candidate};
use super::store::{self, LogStore, SmShared, StateMachineStore};
use super::types::{cluster_addr, node_id_of, Command, MemberNode, Mode, NodeId, Raft};
use super::{
    ChannelOwner, ChannelView, ClusterConfig, ClusterError, NodeView, OwnerView, RaftStatus,
};

/// How long forwarded operations and admin calls may take end to end.
const OP_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy)]
struct PeerSeen {
    at: Instant,
    connections: u64,
}

pub struct Inner {
    cfg: ClusterConfig,
    me: MemberNode,
    my_id: NodeId,
    raft: Raft,
    sm: Arc<SmShared>,
    /// Held so that shutdown can close the store once Raft has let go of it.
    db: Mutex<Option<Arc<Database>>>,
    election_max: Duration,
    local_connections: AtomicU64,
    /// Liveness observed through heartbeats, by node name.
    seen: Mutex<HashMap<String, PeerSeen>>,
    /// Heartbeat connections, by cluster address.
    hb_clients: Mutex<HashMap<String, Arc<PeerClient>>>,
    /// When this node last received AppendEntries (from a leader).
    leader_contact: Mutex<Option<Instant>>,
    /// Serialises init/join on this node.
    admin: tokio::sync::Mutex<()>,
    shutdown_tx: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn raft_err<E: std::fmt::Display>(e: E) -> ClusterError {
    ClusterError::Raft {
        reason: e.to_string(),
    }
}

/// Write errors that mean "not the leader (any more)" are worth a retry.
fn write_err(e: RaftError<NodeId, ClientWriteError<NodeId, MemberNode>>) -> ClusterError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => ClusterError::NoQuorum,
        other => raft_err(other),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // No code panics while holding these locks, so poisoning cannot happen;
    // recover the guard anyway rather than propagate a panic.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Inner {
    pub async fn start(cfg: ClusterConfig) -> Result<Arc<Inner>, ClusterError> {
        cfg.validate()?;
        let bind_addr = SocketAddr::new(cfg.listen_ip, cfg.port);
        let listener = bind(bind_addr).map_err(|e| ClusterError::Bind {
            addr: bind_addr.to_string(),
            reason: e.to_string(),
        })?;

        let storage_err = |e: anyhow::Error| ClusterError::Storage {
            path: cfg.data_dir.display().to_string(),
            reason: format!("{e:#}"),
        };
        let db = store::open_db(&cfg.data_dir).map_err(storage_err)?;
        let rejoining = store::has_state(&db).map_err(storage_err)?;
        let sm = SmShared::new(cfg.node_name.clone());
        let sm_store = StateMachineStore::new(db.clone(), sm.clone()).map_err(storage_err)?;
        let log_store = LogStore::new(db.clone());

        let hb = cfg.heartbeat_interval.as_millis().max(1) as u64;
        let raft_config = Config {
            cluster_name: "sora".to_string(),
            heartbeat_interval: hb,
            election_timeout_min: hb * 5,
            election_timeout_max: hb * 10,
            install_snapshot_timeout: (hb * 10).max(1000),
            // Unit tests snapshot and purge the log almost constantly, so that
            // snapshot building, storing, sending and installing all get exercised.
            snapshot_policy: SnapshotPolicy::LogsSinceLast(if cfg!(test) { 3 } else { 5000 }),
            max_in_snapshot_log_to_keep: if cfg!(test) { 0 } else { 1000 },
            ..Default::default()
        };
        let raft_config = Arc::new(raft_config.validate().map_err(raft_err)?);
        let my_id = node_id_of(&cfg.node_name);
        let raft = Raft::new(my_id, raft_config, rpc::Network, log_store, sm_store)
            .await
            .map_err(raft_err)?;

        let me = MemberNode {
            node_name: cfg.node_name.clone(),
            addr: cluster_addr(&cfg.node_name, cfg.port)?,
            info: cfg.me.clone(),
            member_since: 0,
        };
        let inner = Arc::new(Inner {
            election_max: cfg.heartbeat_interval * 10,
            cfg,
            me,
            my_id,
            raft,
            sm,
            db: Mutex::new(Some(db)),
            local_connections: AtomicU64::new(0),
            seen: Mutex::new(HashMap::new()),
            hb_clients: Mutex::new(HashMap::new()),
            leader_contact: Mutex::new(None),
            admin: tokio::sync::Mutex::new(()),
            shutdown_tx: watch::channel(false).0,
            tasks: Mutex::new(Vec::new()),
        });
        let tasks = vec![
            tokio::spawn(inner.clone().serve(listener)),
            tokio::spawn(inner.clone().heartbeat_loop()),
            tokio::spawn(inner.clone().release_loop()),
            tokio::spawn(inner.clone().refresh_self_loop()),
        ];
        lock(&inner.tasks).extend(tasks);
        info!(
            node_name = %inner.me.node_name,
            node_id = inner.my_id,
            addr = %bind_addr,
            rejoining,
            "cluster node started"
        );
        Ok(inner)
    }

    pub fn node_name(&self) -> &str {
        &self.me.node_name
    }

    // ---- the cluster port --------------------------------------------------

    async fn serve(self: Arc<Self>, listener: TcpListener) {
        let mut stop = self.shutdown_tx.subscribe();
        loop {
            tokio::select! {
                _ = stop.changed() => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        let task = tokio::spawn(self.clone().serve_conn(stream));
                        let mut tasks = lock(&self.tasks);
                        tasks.retain(|t| !t.is_finished());
                        tasks.push(task);
                    }
                    Err(e) => {
                        warn!(error = %e, "cluster accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
            }
        }
    }

    async fn serve_conn(self: Arc<Self>, mut stream: TcpStream) {
        let _ = stream.set_nodelay(true);
        let mut stop = self.shutdown_tx.subscribe();
        loop {
            let req: Request = tokio::select! {
                _ = stop.changed() => return,
                r = rpc::read_frame(&mut stream) => match r {
                    Ok(req) => req,
                    Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                        debug!(error = %e, "undecodable cluster frame");
                        let refused = Reply::Refused(e.to_string());
                        if rpc::write_frame(&mut stream, &refused).await.is_err() {
                            return;
                        }
                        continue;
                    }
                    Err(_) => return,
                },
            };
            let reply = tokio::select! {
                _ = stop.changed() => return,
                reply = self.handle(req) => reply,
            };
            if rpc::write_frame(&mut stream, &reply).await.is_err() {
                return;
            }
        }
    }

    async fn handle(&self, req: Request) -> Reply {
        match req {
            Request::AppendEntries(rpc) => {
                *lock(&self.leader_contact) = Some(Instant::now());
                Reply::AppendEntries(self.raft.append_entries(rpc).await)
            }
            Request::Vote(rpc) => Reply::Vote(self.raft.vote(rpc).await),
            Request::InstallSnapshot(rpc) => {
                *lock(&self.leader_contact) = Some(Instant::now());
                Reply::InstallSnapshot(self.raft.install_snapshot(rpc).await)
            }
            Request::Hello => Reply::Hello {
                node: MemberNode {
                    member_since: unix_now(),
                    ..self.me.clone()
                },
                initialized: self.is_initialized(),
            },
            Request::Heartbeat { from, connections } => {
                self.saw(&from, connections);
                Reply::Heartbeat {
                    connections: self.local_connections.load(Ordering::Relaxed),
                }
            }
            Request::Leaving { from } => {
                info!(node_name = %from, "member is stopping");
                lock(&self.seen).remove(&from);
                Reply::Heartbeat {
                    connections: self.local_connections.load(Ordering::Relaxed),
                }
            }
            Request::Leader { op, hops } => Reply::Leader(self.leader_op(op, hops).await),
        }
    }

    // ---- liveness ----------------------------------------------------------

    fn saw(&self, node_name: &str, connections: u64) {
        lock(&self.seen).insert(
            node_name.to_string(),
            PeerSeen {
                at: Instant::now(),
                connections,
            },
        );
    }

    fn connected(&self, node_name: &str) -> bool {
        node_name == self.me.node_name
            || lock(&self.seen)
                .get(node_name)
                .is_some_and(|s| s.at.elapsed() < self.cfg.down_after)
    }

    fn connections_of(&self, node_name: &str) -> u64 {
        if node_name == self.me.node_name {
            return self.local_connections.load(Ordering::Relaxed);
        }
        lock(&self.seen).get(node_name).map_or(0, |s| s.connections)
    }

    async fn heartbeat_loop(self: Arc<Self>) {
        let mut stop = self.shutdown_tx.subscribe();
        let mut tick = tokio::time::interval(self.cfg.heartbeat_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let timeout = (self.cfg.heartbeat_interval * 3).min(self.cfg.down_after);
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                _ = tick.tick() => {}
            }
            let req = Arc::new(Request::Heartbeat {
                from: self.me.node_name.clone(),
                connections: self.local_connections.load(Ordering::Relaxed),
            });
            for peer in self.members().into_values() {
                if peer.node_name == self.me.node_name {
                    continue;
                }
                let client = lock(&self.hb_clients)
                    .entry(peer.addr.clone())
                    .or_insert_with(|| Arc::new(PeerClient::new(peer.addr.clone())))
                    .clone();
                let (this, req) = (self.clone(), req.clone());
                tokio::spawn(async move {
                    if let Some(Ok(Reply::Heartbeat { connections })) =
                        client.try_call(&req, timeout).await
                    {
                        this.saw(&peer.node_name, connections);
                    }
                });
            }
        }
    }

    /// On the leader: release the channels of owners that stay disconnected.
    async fn release_loop(self: Arc<Self>) {
        let mut stop = self.shutdown_tx.subscribe();
        let mut tick = tokio::time::interval(self.cfg.heartbeat_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut down_since: HashMap<String, Instant> = HashMap::new();
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                _ = tick.tick() => {}
            }
            if !self.is_leader() {
                down_since.clear();
                continue;
            }
            let members = self.members();
            let owners: BTreeSet<String> =
                self.read_applied(|a| a.state.channels.values().cloned().collect());
            let now = Instant::now();
            down_since.retain(|owner, _| owners.contains(owner));
            for owner in owners {
                let is_member = members.values().any(|m| m.node_name == owner);
                let release = if !is_member {
                    true
                } else if self.connected(&owner) {
                    down_since.remove(&owner);
                    false
                } else {
                    let since = *down_since.entry(owner.clone()).or_insert(now);
                    now.duration_since(since) >= self.cfg.channel_owner_down_release
                };
                if release {
                    let cmd = Command::ReleaseOwner {
                        node_name: owner.clone(),
                    };
                    match self.raft.client_write(cmd).await {
                        Ok(r) => {
                            info!(owner = %owner, released = ?r.data.released, "released channels of a disconnected owner")
                        }
                        Err(e) => debug!(owner = %owner, error = %e, "could not release channels"),
                    }
                    down_since.remove(&owner);
                }
            }
        }
    }

    // ---- local views -------------------------------------------------------

    fn read_applied<T>(&self, f: impl FnOnce(&store::Applied) -> T) -> T {
        // The lock is only held for plain reads and writes, never across a panic.
        let applied = self.sm.applied.read().unwrap_or_else(|p| p.into_inner());
        f(&applied)
    }

    /// Members from the applied membership, by Raft id.
    fn members(&self) -> BTreeMap<NodeId, MemberNode> {
        self.read_applied(|a| {
            a.last_membership
                .membership()
                .nodes()
                .map(|(id, n)| (*id, n.clone()))
                .collect()
        })
    }

    fn is_initialized(&self) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow();
        m.membership_config
            .membership()
            .voter_ids()
            .next()
            .is_some()
            || m.vote.leader_id().term > 0
    }

    fn is_leader(&self) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow();
        m.state == ServerState::Leader && m.current_leader == Some(self.my_id)
    }

    fn applied_index(&self) -> Option<u64> {
        self.read_applied(|a| a.last_applied.map(|l| l.index))
    }

    pub fn set_local_connections(&self, n: u64) {
        self.local_connections.store(n, Ordering::Relaxed);
    }

    pub fn owned_channels(&self) -> watch::Receiver<BTreeSet<String>> {
        self.sm.owned.subscribe()
    }

    pub fn status(&self) -> RaftStatus {
        let m = self.raft.metrics();
        let m = m.borrow();
        let initialized = m
            .membership_config
            .membership()
            .voter_ids()
            .next()
            .is_some();
        let raft_state = match m.state {
            _ if !initialized => "uninitialized",
            ServerState::Leader => "leader",
            ServerState::Follower => "follower",
            ServerState::Candidate => "candidate",
            ServerState::Learner => "learner",
            ServerState::Shutdown => "shutdown",
        };
        RaftStatus {
            raft_state,
            raft_term: m.current_term,
            raft_commit_index: m.last_applied.map_or(0, |l| l.index),
        }
    }

    pub fn has_quorum(&self) -> bool {
        let (state, leader, quorum_ack) = {
            let m = self.raft.metrics();
            let m = m.borrow();
            (m.state, m.current_leader, m.millis_since_quorum_ack)
        };
        let window = self.election_max;
        match state {
            ServerState::Leader => quorum_ack.is_some_and(|ms| Duration::from_millis(ms) < window),
            ServerState::Follower | ServerState::Learner => {
                leader.is_some() && lock(&self.leader_contact).is_some_and(|t| t.elapsed() < window)
            }
            _ => false,
        }
    }

    // ---- operations run by the leader ---------------------------------------

    /// Runs `op` here if this node leads, else forwards it to the leader while
    /// `hops` allows. Transient failures come back as `NoQuorum`.
    async fn leader_op(&self, op: LeaderOp, hops: u8) -> Result<LeaderReply, ClusterError> {
        if self.is_leader() {
            // A leader that lost its majority is not told so by openraft: its
            // writes would wait forever. Bound them; the caller sees NoQuorum.
            return tokio::time::timeout(self.election_max * 2, self.run_on_leader(op))
                .await
                .unwrap_or(Err(ClusterError::NoQuorum));
        }
        if hops == 0 {
            return Err(ClusterError::NoQuorum);
        }
        let leader = self.raft.metrics().borrow().current_leader;
        let Some(leader) = leader.filter(|l| *l != self.my_id) else {
            return Err(ClusterError::NoQuorum);
        };
        let addr = {
            let m = self.raft.metrics();
            let m = m.borrow();
            m.membership_config
                .membership()
                .get_node(&leader)
                .map(|n| n.addr.clone())
        };
        let Some(addr) = addr else {
            return Err(ClusterError::NoQuorum);
        };
        let req = Request::Leader { op, hops: hops - 1 };
        match rpc::call_once(&addr, &req, OP_TIMEOUT).await {
            Ok(Reply::Leader(r)) => r,
            Ok(other) => Err(raft_err(format!("unexpected reply {other:?}"))),
            Err(_) => Err(ClusterError::NoQuorum),
        }
    }

    /// [`Self::leader_op`] retried while the failure is transient, for up to
    /// three maximum election timeouts (time for a new leader to emerge).
    async fn leader_call(&self, op: LeaderOp) -> Result<LeaderReply, ClusterError> {
        self.leader_call_within(op, self.election_max * 3).await
    }

    async fn leader_call_within(
        &self,
        op: LeaderOp,
        patience: Duration,
    ) -> Result<LeaderReply, ClusterError> {
        let deadline = Instant::now() + patience;
        loop {
            match self.leader_op(op.clone(), 2).await {
                Err(ClusterError::NoQuorum) if Instant::now() < deadline => {
                    tokio::time::sleep(self.cfg.heartbeat_interval / 2).await;
                }
                other => return other,
            }
        }
    }

    async fn run_on_leader(&self, op: LeaderOp) -> Result<LeaderReply, ClusterError> {
        match op {
            LeaderOp::Join { node } => self.add_member(node).await,
            LeaderOp::Acquire {
                channel_id,
                requester,
                requester_connections,
            } => {
                if let Some(owner) =
                    self.read_applied(|a| a.state.channels.get(&channel_id).cloned())
                {
                    return Ok(LeaderReply::Owner(owner));
                }
                let owner = self.place(&requester, requester_connections);
                let cmd = Command::AssignChannel { channel_id, owner };
                let r = self.raft.client_write(cmd).await.map_err(write_err)?;
                let owner = r
                    .data
                    .owner
                    .ok_or_else(|| raft_err("assignment without an owner"))?;
                Ok(LeaderReply::Owner(owner))
            }
            LeaderOp::Release { channel_id, owner } => {
                let cmd = Command::ReleaseChannel { channel_id, owner };
                self.raft.client_write(cmd).await.map_err(write_err)?;
                Ok(LeaderReply::Done)
            }
            LeaderOp::Purge { target } => self.remove_member(target).await,
            LeaderOp::UpdateNode { node } => self.update_member(node).await,
            LeaderOp::SetMode { node_name, mode } => {
                let known = self.members().values().any(|m| m.node_name == node_name);
                if !known {
                    return Err(ClusterError::UnknownNode { node: node_name });
                }
                let cmd = Command::SetMode { node_name, mode };
                self.raft.client_write(cmd).await.map_err(write_err)?;
                Ok(LeaderReply::Done)
            }
            LeaderOp::ReadIndex => {
                let read = self.raft.ensure_linearizable().await.map_err(|e| match e {
                    RaftError::APIError(_) => ClusterError::NoQuorum,
                    other => raft_err(other),
                })?;
                Ok(LeaderReply::ReadIndex(read.map(|l| l.index)))
            }
        }
    }

    /// The connected, normal-mode member with the lowest load ratio.
    fn place(&self, requester: &str, requester_connections: u64) -> String {
        let modes = self.read_applied(|a| a.state.modes.clone());
        let candidates: Vec<Candidate> = self
            .members()
            .into_values()
            .filter(|m| m.node_name == requester || self.connected(&m.node_name))
            .filter(|m| !modes.contains_key(&m.node_name))
            .map(|m| Candidate {
                connections: if m.node_name == requester {
                    requester_connections
                } else {
                    self.connections_of(&m.node_name)
                },
                max_connections: m.info.license.max_connections,
                node_name: m.node_name,
            })
            .collect();
        pick_owner(&candidates, requester).unwrap_or_else(|| requester.to_string())
    }

    async fn add_member(&self, mut node: MemberNode) -> Result<LeaderReply, ClusterError> {
        let id = node_id_of(&node.node_name);
        let members = self.members();
        if let Some(existing) = members.get(&id) {
            if existing.node_name != node.node_name {
                return Err(ClusterError::InvalidNodeName {
                    node_name: node.node_name,
                    reason: format!("its id collides with member {}", existing.node_name),
                });
            }
        }
        let mut licenses: Vec<(&str, &super::LicenseInfo)> = members
            .iter()
            .filter(|(mid, _)| **mid != id)
            .map(|(_, m)| (m.node_name.as_str(), &m.info.license))
            .collect();
        licenses.push((node.node_name.as_str(), &node.info.license));
        check_licenses(licenses)
            .map_err(|(first, second)| ClusterError::LicenseViolation { first, second })?;

        let is_voter =
            self.read_applied(|a| a.last_membership.membership().voter_ids().any(|v| v == id));
        if !is_voter {
            node.member_since = unix_now();
            info!(node_name = %node.node_name, "adding a member");
            self.raft
                .add_learner(id, node, true)
                .await
                .map_err(write_err)?;
            self.raft
                .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
                .await
                .map_err(write_err)?;
        }
        Ok(LeaderReply::Members(self.member_names()))
    }

    async fn update_member(&self, mut node: MemberNode) -> Result<LeaderReply, ClusterError> {
        let id = node_id_of(&node.node_name);
        let members = self.members();
        let Some(current) = members.get(&id).filter(|m| m.node_name == node.node_name) else {
            return Err(ClusterError::UnknownNode {
                node: node.node_name,
            });
        };
        node.member_since = current.member_since;
        if *current == node {
            return Ok(LeaderReply::Done);
        }
        let licenses = members
            .iter()
            .filter(|(mid, _)| **mid != id)
            .map(|(_, m)| (m.node_name.as_str(), &m.info.license))
            .chain([(node.node_name.as_str(), &node.info.license)]);
        check_licenses(licenses)
            .map_err(|(first, second)| ClusterError::LicenseViolation { first, second })?;
        info!(node_name = %node.node_name, "updating a member's information");
        let change = ChangeMembers::SetNodes(BTreeMap::from([(id, node)]));
        self.raft
            .change_membership(change, true)
            .await
            .map_err(write_err)?;
        Ok(LeaderReply::Done)
    }

    /// Keeps this node's entry in the membership in line with its config
    /// (after an upgrade, a new license or new URLs).
    async fn refresh_self_loop(self: Arc<Self>) {
        let mut stop = self.shutdown_tx.subscribe();
        let mut tick = tokio::time::interval(self.cfg.heartbeat_interval * 10);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                _ = tick.tick() => {}
            }
            let stale = self
                .members()
                .get(&self.my_id)
                .is_some_and(|m| m.info != self.me.info || m.addr != self.me.addr);
            if !stale || !self.has_quorum() {
                continue;
            }
            let op = LeaderOp::UpdateNode {
                node: self.me.clone(),
            };
            if let Err(e) = self.leader_call_within(op, self.election_max).await {
                warn!(error = %e, "could not update this node's cluster information");
            }
        }
    }

    async fn remove_member(&self, target: String) -> Result<LeaderReply, ClusterError> {
        let id = node_id_of(&target);
        let members = self.members();
        if members.get(&id).is_none_or(|m| m.node_name != target) {
            return Err(ClusterError::UnknownNode { node: target });
        }
        if self.connected(&target) {
            return Err(ClusterError::NodeIsAlive { node: target });
        }
        let is_voter =
            self.read_applied(|a| a.last_membership.membership().voter_ids().any(|v| v == id));
        let change = if is_voter {
            ChangeMembers::RemoveVoters(BTreeSet::from([id]))
        } else {
            ChangeMembers::RemoveNodes(BTreeSet::from([id]))
        };
        info!(node_name = %target, "purging a member");
        self.raft
            .change_membership(change, false)
            .await
            .map_err(write_err)?;
        self.raft
            .client_write(Command::ForgetNode { node_name: target })
            .await
            .map_err(write_err)?;
        Ok(LeaderReply::Done)
    }

    fn member_names(&self) -> Vec<String> {
        let m = self.raft.metrics();
        let m = m.borrow();
        let mut names: Vec<String> = m
            .membership_config
            .membership()
            .nodes()
            .map(|(_, n)| n.node_name.clone())
            .collect();
        names.sort();
        names
    }

    // ---- API operations ------------------------------------------------------

    fn require_initialized(&self) -> Result<(), ClusterError> {
        if self.is_initialized() {
            Ok(())
        } else {
            Err(ClusterError::NotInitialized)
        }
    }

    async fn hello(&self, node_name: &str) -> Result<(MemberNode, bool), ClusterError> {
        let addr = cluster_addr(node_name, self.cfg.port)?;
        let unreachable = |reason: String| ClusterError::Unreachable {
            node: node_name.to_string(),
            reason,
        };
        match rpc::call_once(&addr, &Request::Hello, self.cfg.down_after).await {
            Ok(Reply::Hello { node, initialized }) => {
                if node.node_name != node_name {
                    return Err(ClusterError::InvalidNodeName {
                        node_name: node_name.to_string(),
                        reason: format!("the node at {addr} is named {}", node.node_name),
                    });
                }
                Ok((node, initialized))
            }
            Ok(other) => Err(unreachable(format!("unexpected reply {other:?}"))),
            Err(e) => Err(unreachable(e.to_string())),
        }
    }

    pub async fn init_cluster(&self, node_name_list: Vec<String>) -> Result<(), ClusterError> {
        let _admin = self.admin.lock().await;
        if self.is_initialized() {
            return Err(ClusterError::AlreadyInitialized {
                node: self.me.node_name.clone(),
            });
        }
        let names: BTreeSet<String> = node_name_list
            .into_iter()
            .map(|n| n.trim().to_string())
            .collect();
        if !names.contains(&self.me.node_name) {
            return Err(ClusterError::InvalidNodeName {
                node_name: self.me.node_name.clone(),
                reason: "node_name_list must include the node that runs InitCluster".into(),
            });
        }
        let mut nodes: BTreeMap<NodeId, MemberNode> = BTreeMap::new();
        let since = unix_now();
        for name in &names {
            let node = if *name == self.me.node_name {
                self.me.clone()
            } else {
                let (node, initialized) = self.hello(name).await?;
                if initialized {
                    return Err(ClusterError::AlreadyInitialized { node: name.clone() });
                }
                node
            };
            let id = node_id_of(name);
            if let Some(other) = nodes.get(&id) {
                return Err(ClusterError::InvalidNodeName {
                    node_name: name.clone(),
                    reason: format!("its id collides with {}", other.node_name),
                });
            }
            nodes.insert(
                id,
                MemberNode {
                    member_since: since,
                    ..node
                },
            );
        }
        check_licenses(
            nodes
                .values()
                .map(|n| (n.node_name.as_str(), &n.info.license)),
        )
        .map_err(|(first, second)| ClusterError::LicenseViolation { first, second })?;

        info!(members = ?names, "initialising the cluster");
        self.raft.initialize(nodes).await.map_err(|e| match e {
            RaftError::APIError(_) => ClusterError::AlreadyInitialized {
                node: self.me.node_name.clone(),
            },
            other => raft_err(other),
        })?;
        // Return only once a leader has committed the membership.
        self.linearizable_read(OP_TIMEOUT).await
    }

    /// Waits until a leader confirms its read point and it is applied here.
    async fn linearizable_read(&self, patience: Duration) -> Result<(), ClusterError> {
        let started = Instant::now();
        let index = match self
            .leader_call_within(LeaderOp::ReadIndex, patience)
            .await?
        {
            LeaderReply::ReadIndex(index) => index,
            other => return Err(raft_err(format!("unexpected reply {other:?}"))),
        };
        let Some(index) = index else {
            return Ok(());
        };
        let left = patience
            .saturating_sub(started.elapsed())
            .max(self.election_max);
        self.raft
            .wait(Some(left))
            .applied_index_at_least(Some(index), "linearizable read")
            .await
            .map_err(|_| ClusterError::NoQuorum)?;
        // The state machine store updates the shared view before reporting the
        // apply, so it is current now; wait for it anyway in case of a race.
        let deadline = Instant::now() + self.election_max;
        while self.applied_index().is_none_or(|i| i < index) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(())
    }

    pub async fn join_cluster(&self, contact: String) -> Result<Vec<String>, ClusterError> {
        let _admin = self.admin.lock().await;
        if self.is_initialized() {
            return Err(ClusterError::AlreadyInitialized {
                node: self.me.node_name.clone(),
            });
        }
        let contact = contact.trim().to_string();
        let (_, initialized) = self.hello(&contact).await?;
        if !initialized {
            return Err(ClusterError::ContactNodeNotInitialized { node: contact });
        }
        let addr = cluster_addr(&contact, self.cfg.port)?;
        let req = Request::Leader {
            op: LeaderOp::Join {
                node: self.me.clone(),
            },
            hops: 2,
        };
        let deadline = Instant::now() + OP_TIMEOUT;
        let names = loop {
            let reply = rpc::call_once(&addr, &req, OP_TIMEOUT).await;
            match reply {
                Ok(Reply::Leader(Ok(LeaderReply::Members(names)))) => break names,
                Ok(Reply::Leader(Err(ClusterError::NoQuorum))) if Instant::now() < deadline => {
                    tokio::time::sleep(self.cfg.heartbeat_interval).await;
                }
                Ok(Reply::Leader(Err(e))) => return Err(e),
                Ok(other) => return Err(raft_err(format!("unexpected reply {other:?}"))),
                Err(e) => {
                    return Err(ClusterError::Unreachable {
                        node: contact,
                        reason: e.to_string(),
                    })
                }
            }
        };
        // The leader has committed the change; wait until it is applied here
        // so this node's own views include itself.
        while Instant::now() < deadline {
            if self.members().contains_key(&self.my_id) {
                break;
            }
            tokio::time::sleep(self.cfg.heartbeat_interval / 2).await;
        }
        Ok(names)
    }

    pub async fn purge_node(&self, target: String) -> Result<(), ClusterError> {
        self.require_initialized()?;
        cluster_addr(&target, self.cfg.port)?;
        if target == self.me.node_name {
            return Err(ClusterError::NodeIsAlive { node: target });
        }
        match self.leader_call(LeaderOp::Purge { target }).await? {
            LeaderReply::Done => Ok(()),
            other => Err(raft_err(format!("unexpected reply {other:?}"))),
        }
    }

    pub async fn set_mode(&self, node_name: String, mode: Mode) -> Result<(), ClusterError> {
        self.require_initialized()?;
        cluster_addr(&node_name, self.cfg.port)?;
        match self
            .leader_call(LeaderOp::SetMode { node_name, mode })
            .await?
        {
            LeaderReply::Done => Ok(()),
            other => Err(raft_err(format!("unexpected reply {other:?}"))),
        }
    }

    pub fn list_nodes(&self) -> Result<Vec<NodeView>, ClusterError> {
        self.require_initialized()?;
        let modes = self.read_applied(|a| a.state.modes.clone());
        let mut nodes: Vec<NodeView> = self
            .members()
            .into_values()
            .map(|m| NodeView {
                connected: self.connected(&m.node_name),
                external_api_url: m.info.external_api_url,
                external_signaling_url: m.info.external_signaling_url,
                license_max_connections: m.info.license.max_connections,
                license_max_nodes: m.info.license.max_nodes.unwrap_or(1),
                license_serial_code: m.info.license.serial_code,
                license_type: m.info.license.license_type,
                mode: modes
                    .get(&m.node_name)
                    .copied()
                    .unwrap_or_default()
                    .as_str()
                    .to_string(),
                node_name: m.node_name,
                version: m.info.version,
            })
            .collect();
        nodes.sort_by(|a, b| a.node_name.cmp(&b.node_name));
        Ok(nodes)
    }

    pub async fn list_channels(&self) -> Result<Vec<ChannelView>, ClusterError> {
        self.require_initialized()?;
        if let Err(e) = self.linearizable_read(self.election_max * 2).await {
            debug!(error = %e, "list_channels answers from the applied state");
        }
        let channels = self.read_applied(|a| a.state.channels.clone());
        Ok(channels
            .into_iter()
            .map(|(channel_id, owner)| ChannelView {
                channel_id,
                owners: vec![OwnerView {
                    connected: self.connected(&owner),
                    node_name: owner,
                }],
            })
            .collect())
    }

    fn owner_view(&self, node_name: String) -> ChannelOwner {
        let url = self
            .members()
            .get(&node_id_of(&node_name))
            .map(|m| m.info.external_signaling_url.clone())
            .unwrap_or_default();
        ChannelOwner {
            is_me: node_name == self.me.node_name,
            external_signaling_url: url,
            node_name,
        }
    }

    pub async fn acquire_channel(&self, channel_id: &str) -> Result<ChannelOwner, ClusterError> {
        self.require_initialized()?;
        if self.has_quorum() {
            let owner = self.read_applied(|a| a.state.channels.get(channel_id).cloned());
            if let Some(owner) = owner.filter(|o| self.connected(o)) {
                return Ok(self.owner_view(owner));
            }
        }
        let op = LeaderOp::Acquire {
            channel_id: channel_id.to_string(),
            requester: self.me.node_name.clone(),
            requester_connections: self.local_connections.load(Ordering::Relaxed),
        };
        match self.leader_call(op).await? {
            LeaderReply::Owner(owner) => Ok(self.owner_view(owner)),
            other => Err(raft_err(format!("unexpected reply {other:?}"))),
        }
    }

    pub async fn release_channel(&self, channel_id: &str) -> Result<(), ClusterError> {
        self.require_initialized()?;
        let op = LeaderOp::Release {
            channel_id: channel_id.to_string(),
            owner: self.me.node_name.clone(),
        };
        match self.leader_call(op).await? {
            LeaderReply::Done => Ok(()),
            other => Err(raft_err(format!("unexpected reply {other:?}"))),
        }
    }

    /// Tells every other member that this node is stopping, so that it shows
    /// `connected: false` (and can be purged) at once rather than after
    /// `down_after`. Best effort: a member that does not answer soon learns it
    /// from the missing heartbeats.
    async fn announce_leaving(&self) {
        let req = Request::Leaving {
            from: self.me.node_name.clone(),
        };
        let calls = self
            .members()
            .into_values()
            .filter(|peer| peer.node_name != self.me.node_name)
            .map(|peer| {
                let req = &req;
                async move {
                    let _ = rpc::call_once(&peer.addr, req, Duration::from_millis(500)).await;
                }
            });
        futures_util::future::join_all(calls).await;
    }

    pub async fn shutdown(&self) {
        if self.shutdown_tx.send_replace(true) {
            return;
        }
        self.announce_leaving().await;
        if let Err(e) = self.raft.shutdown().await {
            warn!(error = %e, "raft shutdown");
        }
        let tasks: Vec<JoinHandle<()>> = lock(&self.tasks).drain(..).collect();
        for task in &tasks {
            task.abort();
        }
        for task in tasks {
            let _ = task.await;
        }
        lock(&self.hb_clients).clear();
        // Close the store once Raft's tasks have let go of it, so that a
        // restart in the same process can open it again.
        let Some(mut db) = lock(&self.db).take() else {
            return;
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match Arc::try_unwrap(db) {
                Ok(db) => {
                    let closed = tokio::task::spawn_blocking(move || db.close()).await;
                    if !matches!(closed, Ok(Ok(()))) {
                        warn!(?closed, "closing the cluster store");
                    }
                    break;
                }
                Err(shared) if Instant::now() < deadline => {
                    db = shared;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(_) => {
                    warn!("cluster store still in use after shutdown");
                    break;
                }
            }
        }
        info!(node_name = %self.me.node_name, "cluster node stopped");
    }
}

/// A listener with SO_REUSEADDR, so a restarted node can bind at once.
fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

//! A running node: the shared state every session and API call works on, and
//! [`run`], which starts the planes and serves until SIGTERM/SIGINT.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use anyhow::Context as _;
use serde_json::{json, Value};
use shared::{ChannelKey, Command, ConnId};
use tokio::sync::watch;

use crate::channels::{Left, Member, PublishedTrack, Registry, SessionMsg};
use crate::cluster::{Cluster, ClusterConfig, LicenseInfo, NodeInfo};
use crate::config::Config;
use crate::dtls::DtlsIdentity;
use crate::license::License;
use crate::media::MediaLink;
use crate::sdp::Codec;
use crate::signaling::{close, Admission, Closing, ConnectRequest};
use crate::webhook::Webhooks;

/// Bytes of each ring (commands down, events up) per data-plane core.
const RING_CAPACITY: usize = 1 << 20;

/// How long `admit` waits for the cluster to name a channel's owner. Longer
/// than a failover (the cluster retries for three election timeouts), shorter
/// than the SDKs' own connection timeouts (30 s for the C++ SDK).
const CLUSTER_ADMIT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// Signaling counters for `GetStatsReport`.
#[derive(Default)]
pub struct SignalingCounters {
    pub opened: AtomicU64,
    pub failed: AtomicU64,
    pub established: AtomicU64,
}

impl SignalingCounters {
    pub fn signaling_opened(&self) {
        self.opened.fetch_add(1, Ordering::Relaxed);
    }
    pub fn signaling_failed(&self) {
        self.failed.fetch_add(1, Ordering::Relaxed);
    }
}

pub struct Node {
    pub config: Config,
    pub license: License,
    pub identity: DtlsIdentity,
    pub media: MediaLink,
    pub registry: Mutex<Registry>,
    pub counters: SignalingCounters,
    /// Present when `cluster = true`.
    pub cluster: Option<Cluster>,
    pub webhooks: Webhooks,
    pub started_at: SystemTime,
    /// The address in ICE candidates, resolved once (it may scan interfaces).
    candidate_ip: IpAddr,
    next_conn: AtomicU32,
    stopping: AtomicBool,
    shutdown: watch::Sender<bool>,
}

impl Node {
    pub fn new(
        config: Config,
        license: License,
        identity: DtlsIdentity,
        media: MediaLink,
        cluster: Option<Cluster>,
        webhooks: Webhooks,
    ) -> Node {
        let cores = media.cores();
        Node {
            candidate_ip: config.candidate_ip(),
            config,
            license,
            identity,
            media,
            registry: Mutex::new(Registry::new(cores)),
            counters: SignalingCounters::default(),
            cluster,
            webhooks,
            started_at: SystemTime::now(),
            next_conn: AtomicU32::new(1),
            stopping: AtomicBool::new(false),
            shutdown: watch::channel(false).0,
        }
    }

    pub fn registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry.lock().expect("registry lock poisoned")
    }

    pub fn new_conn_id(&self) -> ConnId {
        ConnId(self.next_conn.fetch_add(1, Ordering::Relaxed))
    }

    pub fn default_video_codec(&self) -> Codec {
        self.config.default_video_codec_type
    }

    /// The ICE host candidate of data-plane core `core`.
    pub fn candidate(&self, core: usize) -> (IpAddr, u16) {
        (self.candidate_ip, self.config.media_port_of(core))
    }

    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// Decides whether a `connect` is served here.
    pub async fn admit(&self, req: &ConnectRequest) -> Result<Admission, Closing> {
        if self.stopping.load(Ordering::Relaxed) {
            return Err(Closing::new(
                close::UNAVAILABLE,
                "NODE-STOPPING: the node is shutting down",
            ));
        }
        if let Some(cluster) = &self.cluster {
            if !cluster.has_quorum() {
                return Err(Closing::new(
                    close::UNAVAILABLE,
                    "NO-QUORUM: this node cannot reach a majority of the cluster",
                ));
            }
            let local = self.registry().connection_count() as u64;
            // A leader that has just lost its majority still believes it has
            // one for a while, and its write would wait for a commit that
            // never comes: answer the client instead of leaving it silent.
            let owner = tokio::time::timeout(
                CLUSTER_ADMIT_TIMEOUT,
                cluster.acquire_channel(&req.channel_id, local),
            )
            .await
            .map_err(|_| {
                Closing::new(
                    close::UNAVAILABLE,
                    format!(
                        "NO-QUORUM: the cluster assigned no owner within {} s",
                        CLUSTER_ADMIT_TIMEOUT.as_secs()
                    ),
                )
            })?
            .map_err(|e| Closing::new(close::UNAVAILABLE, format!("CLUSTER-UNAVAILABLE: {e}")))?;
            if !owner.is_me {
                return Ok(Admission::Redirect(owner.external_signaling_url));
            }
        }
        let max = self.license.max_connections;
        if self.registry().connection_count() as u64 >= max {
            return Err(Closing::new(
                close::FORBIDDEN,
                format!("LICENSE-MAX-CONNECTIONS: the license allows {max} connections"),
            ));
        }
        Ok(Admission::Here)
    }

    /// Adds a member to its channel; returns the channel's key and core.
    pub fn join_channel(&self, channel_id: &str, member: Member) -> (ChannelKey, usize) {
        let mut reg = self.registry();
        let (key, core, created) = reg.join(channel_id, member);
        if let Some(cluster) = &self.cluster {
            cluster.set_local_connections(reg.connection_count() as u64);
        }
        let session_id = reg.channels.get(channel_id).map(|c| c.session_id.clone());
        drop(reg);
        if created {
            self.webhooks.session(
                "session.created",
                json!({"channel_id": channel_id, "session_id": session_id}),
            );
            self.media.sender(core).send(Command::SetChannelOwned {
                channel: key,
                owned: true,
            });
        }
        (key, core)
    }

    /// Established publishers of the channel other than `me`, with their tracks.
    pub fn publishers(
        &self,
        me: ConnId,
        channel_id: &str,
    ) -> Vec<(ConnId, String, Vec<PublishedTrack>)> {
        let reg = self.registry();
        let Some(ch) = reg.channels.get(channel_id) else {
            return Vec::new();
        };
        ch.publishers(me)
            .into_iter()
            .map(|(c, m)| {
                let tracks = m.audio.iter().chain(m.video.iter()).cloned().collect();
                (c, m.connection_id.clone(), tracks)
            })
            .collect()
    }

    /// Marks `conn` established, tells the others (notify, re-offer) and returns
    /// the `connection.created` notify for the connection itself.
    pub fn mark_established(&self, conn: ConnId, channel_id: &str) -> Option<Value> {
        self.counters.established.fetch_add(1, Ordering::Relaxed);
        let mut reg = self.registry();
        let member = reg.member_mut(conn)?;
        member.established = true;
        let ch = reg.channels.get(channel_id)?;
        let me = ch.members.get(&conn)?;
        let counts = ch.counts();
        let mut about_me = notify("connection.created", me, &counts);
        self.webhooks.event(
            "connection.created",
            event_body(channel_id, &ch.session_id, me),
        );
        for other in ch.members.values().filter(|m| m.conn != conn) {
            if other.role.receives() && me.role.sends() {
                let _ = other.tx.send(SessionMsg::PublishersChanged);
            }
            if other.established && self.config.signaling_notify {
                let _ = other.tx.send(SessionMsg::Send(about_me.clone()));
            }
        }
        if !self.config.signaling_notify {
            return None;
        }
        about_me["data"] = Value::Array(ch.established().map(Member::notify_entry).collect());
        Some(about_me)
    }

    /// Removes `conn` from its channel; tells the others.
    pub fn leave_channel(self: &Arc<Self>, conn: ConnId, was_established: bool) {
        let mut reg = self.registry();
        let Some(left) = reg.leave(conn) else {
            return;
        };
        let Left {
            channel_id,
            session_id,
            member,
            empty,
        } = left;
        if let Some(cluster) = &self.cluster {
            cluster.set_local_connections(reg.connection_count() as u64);
        }
        if was_established {
            let body = event_body(&channel_id, &session_id, &member);
            self.webhooks.event("connection.destroyed", body);
        }
        if empty {
            drop(reg);
            self.webhooks.session(
                "session.destroyed",
                json!({"channel_id": channel_id, "session_id": session_id}),
            );
            self.release_later(channel_id);
            return;
        }
        let Some(ch) = reg.channels.get(&channel_id) else {
            return;
        };
        let counts = ch.counts();
        let destroyed = notify("connection.destroyed", &member, &counts);
        for other in ch.members.values() {
            if member.role.sends() && other.role.receives() {
                let _ = other.tx.send(SessionMsg::PublishersChanged);
            }
            if was_established && other.established && self.config.signaling_notify {
                let _ = other.tx.send(SessionMsg::Send(destroyed.clone()));
            }
        }
    }

    /// In a cluster, gives the channel up once it has stayed empty for
    /// `channel_release_grace`.
    fn release_later(self: &Arc<Self>, channel_id: String) {
        if self.cluster.is_none() {
            return;
        }
        let node = Arc::downgrade(self);
        let grace = self.config.channel_release_grace;
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            let Some(node) = node.upgrade() else { return };
            if node.registry().channels.contains_key(&channel_id) {
                return;
            }
            if let Some(cluster) = &node.cluster {
                if let Err(e) = cluster.release_channel(&channel_id).await {
                    tracing::info!(%channel_id, error = %e, "releasing an empty channel failed");
                }
            }
        });
    }

    /// The cluster gave `channel_id` to another node (this node was taken for
    /// dead): stop forwarding it and close its connections so that the clients
    /// reconnect and are redirected to the new owner.
    fn channel_lost(&self, channel_id: &str) {
        let reg = self.registry();
        let Some(ch) = reg.channels.get(channel_id) else {
            return;
        };
        tracing::info!(%channel_id, "channel no longer owned by this node: closing its connections");
        self.media.sender(ch.core).send(Command::SetChannelOwned {
            channel: ch.key,
            owned: false,
        });
        for m in ch.members.values() {
            let _ = m.tx.send(SessionMsg::Close {
                code: close::UNAVAILABLE,
                reason: "CHANNEL-MOVED: the cluster gave this channel to another node".to_owned(),
            });
        }
    }

    /// Closes every session of the channel (or one connection) with a reason.
    pub fn close_connections(
        &self,
        channel_id: &str,
        connection_id: Option<&str>,
        code: u16,
        reason: &str,
    ) -> usize {
        let reg = self.registry();
        let Some(ch) = reg.channels.get(channel_id) else {
            return 0;
        };
        let mut n = 0;
        for m in ch.members.values() {
            if connection_id.is_none_or(|id| id == m.connection_id) {
                let _ = m.tx.send(SessionMsg::Close {
                    code,
                    reason: reason.to_owned(),
                });
                n += 1;
            }
        }
        n
    }

    /// Starts a graceful stop: sessions close with a reason, new ones are refused.
    pub fn begin_shutdown(&self) {
        self.stopping.store(true, Ordering::Relaxed);
        let _ = self.shutdown.send(true);
    }
}

/// The body of an event webhook about `m`.
fn event_body(channel_id: &str, session_id: &str, m: &Member) -> Value {
    let mut v = m.describe(channel_id);
    v["session_id"] = json!(session_id);
    v["minutes"] = json!(m
        .created_at
        .elapsed()
        .map(|d| d.as_secs() / 60)
        .unwrap_or(0));
    if let Some(md) = &m.metadata {
        v["signaling_notify_metadata"] = md.clone();
    }
    v
}

fn notify(event_type: &str, m: &Member, counts: &Value) -> Value {
    let minutes = m
        .created_at
        .elapsed()
        .map(|d| d.as_secs() / 60)
        .unwrap_or(0);
    let mut v = json!({
        "type": "notify",
        "event_type": event_type,
        "role": m.role.as_str(),
        "client_id": m.client_id,
        "bundle_id": m.bundle_id,
        "connection_id": m.connection_id,
        "audio": m.audio.is_some() || m.role.receives(),
        "video": m.video.is_some() || m.role.receives(),
        "minutes": minutes,
        "turn_transport_type": "udp",
    });
    if let (Some(o), Some(c)) = (v.as_object_mut(), counts.as_object()) {
        for (k, val) in c {
            o.insert(k.clone(), val.clone());
        }
    }
    if let Some(md) = &m.metadata {
        v["metadata"] = md.clone();
    }
    v
}

async fn bind_tcp(ip: IpAddr, port: u16, what: &str) -> anyhow::Result<tokio::net::TcpListener> {
    let addr = SocketAddr::new(ip, port);
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen for {what} on {addr}"))
}

/// Runs a node until SIGTERM or SIGINT, then stops it gracefully.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let license = License::for_node(config.license_file.as_deref(), SystemTime::now())?;
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data_dir {}", config.data_dir.display()))?;
    // The cluster port first: once the API answers (what `sora daemon` and
    // operators wait for), the other nodes can already reach this one.
    let cluster = if config.cluster {
        Some(start_cluster(&config, &license).await?)
    } else {
        None
    };
    let api_listener = bind_tcp(
        config.api_bind_address(),
        config.api_port,
        "the API (api_port)",
    )
    .await?;
    let sig_listener = bind_tcp(
        config.listen_address,
        config.signaling_port,
        "signaling (signaling_port)",
    )
    .await?;

    let mut control_ends = Vec::new();
    let mut core_ends = Vec::new();
    for _ in 0..config.dataplane_cores.max(1) {
        let (c, d) =
            shared::ring::core_link(RING_CAPACITY).context("cannot create the data-plane rings")?;
        control_ends.push(c);
        core_ends.push(d);
    }
    let dataplane = dataplane::runtime::start(
        dataplane::runtime::DataPlaneConfig {
            listen_address: config.listen_address,
            base_port: config.media_port,
            cores: config.dataplane_cores.max(1),
            pin: config.dataplane_pin,
            consent_timeout: config.ice_consent_timeout,
        },
        core_ends,
    )
    .map_err(|e| {
        anyhow::anyhow!(
            "{e} (media_port {}, dataplane_cores {})",
            config.media_port,
            config.dataplane_cores
        )
    })?;
    let media = MediaLink::start(control_ends);
    let identity = DtlsIdentity::generate()?;
    let webhooks = Webhooks::new(&config)?;
    let node = Arc::new(Node::new(
        config, license, identity, media, cluster, webhooks,
    ));
    watch_ownership(&node);

    let api = crate::api::app(node.clone());
    let sig = crate::api::signaling_app(node.clone());
    let mut sd1 = node.shutdown_signal();
    let mut sd2 = node.shutdown_signal();
    let api_task = tokio::spawn(async move {
        axum::serve(api_listener, api)
            .with_graceful_shutdown(async move {
                let _ = sd1.changed().await;
            })
            .await
    });
    let sig_task = tokio::spawn(async move {
        axum::serve(sig_listener, sig)
            .with_graceful_shutdown(async move {
                let _ = sd2.changed().await;
            })
            .await
    });
    tracing::info!(
        node_name = %node.config.node_name,
        api = %SocketAddr::new(node.config.api_bind_address(), node.config.api_port),
        signaling = %SocketAddr::new(node.config.listen_address, node.config.signaling_port),
        media = ?dataplane.ports(),
        "node started"
    );

    wait_for_stop_signal().await;
    tracing::info!("stopping: closing connections");
    let started = Instant::now();
    node.begin_shutdown();
    // Sessions close their sockets with a reason; wait (bounded) for them to go.
    while node.registry().connection_count() > 0 && started.elapsed().as_secs() < 5 {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        let _ = api_task.await;
        let _ = sig_task.await;
    })
    .await;
    if let Some(cluster) = &node.cluster {
        cluster.shutdown().await;
    }
    node.media.broadcast(Command::Shutdown);
    let _ = tokio::task::spawn_blocking(move || dataplane.join()).await;
    tracing::info!("stopped");
    Ok(())
}

/// Follows the channels this node owns in the cluster. Only a channel that
/// leaves the owned set matters: one that joins it was acquired by `admit`.
fn watch_ownership(node: &Arc<Node>) {
    let Some(cluster) = node.cluster.clone() else {
        return;
    };
    let node = Arc::downgrade(node);
    let mut rx = cluster.owned_channels();
    tokio::spawn(async move {
        let mut prev = rx.borrow_and_update().clone();
        while rx.changed().await.is_ok() {
            let cur = rx.borrow_and_update().clone();
            let Some(node) = node.upgrade() else { return };
            for lost in prev.difference(&cur) {
                node.channel_lost(lost);
            }
            prev = cur;
        }
    });
}

async fn start_cluster(config: &Config, license: &License) -> anyhow::Result<Cluster> {
    let me = NodeInfo {
        external_signaling_url: config.signaling_url(),
        external_api_url: config.api_url(),
        license: LicenseInfo {
            license_type: license.license_type.clone(),
            serial_code: license.serial_code.clone(),
            max_connections: license.max_connections,
            max_nodes: (license.max_nodes > 1).then_some(license.max_nodes),
        },
        version: env!("CARGO_PKG_VERSION").to_owned(),
    };
    let mut cc = ClusterConfig::new(
        config.node_name.clone(),
        config.listen_address,
        config.data_dir.clone(),
        me,
    );
    cc.port = config.cluster_listen_port;
    cc.contact_node_name_list = config.contact_node_name_list.clone();
    cc.heartbeat_interval = config.cluster_heartbeat_interval;
    cc.down_after = config.cluster_heartbeat_timeout;
    Cluster::start(cc)
        .await
        .map_err(|e| anyhow::anyhow!("cluster: {e}"))
}

async fn wait_for_stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

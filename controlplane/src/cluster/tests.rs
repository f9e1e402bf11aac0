//! Multi-node tests over real TCP: each node on its own loopback address
//! (127.0.0.x), every test on its own port, state in temp dirs.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use axum::http::StatusCode;

use super::testutil::TempDir;
use super::*;

const HEARTBEAT: Duration = Duration::from_millis(100);
const DOWN_AFTER: Duration = Duration::from_secs(1);
const OWNER_DOWN_RELEASE: Duration = Duration::from_secs(2);
/// Generous bound for anything that needs an election on a busy machine.
const PATIENCE: Duration = Duration::from_secs(20);

/// A port that is free on 127.0.0.1 right now; the test uses it on every
/// loopback address it needs.
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr").port()
}

fn name(i: u8) -> String {
    format!("sora{i}@127.0.0.{i}")
}

fn license(serial: &str) -> LicenseInfo {
    LicenseInfo {
        license_type: "Experimental".into(),
        serial_code: serial.into(),
        max_connections: 100,
        max_nodes: None,
    }
}

fn config(i: u8, port: u16, dir: &TempDir, license: LicenseInfo) -> ClusterConfig {
    let me = NodeInfo {
        external_signaling_url: format!("wss://node{i}.example/signaling"),
        external_api_url: format!("https://node{i}.example/api"),
        license,
        version: "test".into(),
    };
    let mut cfg = ClusterConfig::new(
        name(i),
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, i)),
        dir.path().join(format!("node{i}")),
        me,
    );
    cfg.port = port;
    cfg.heartbeat_interval = HEARTBEAT;
    cfg.down_after = DOWN_AFTER;
    cfg.channel_owner_down_release = OWNER_DOWN_RELEASE;
    cfg.contact_node_name_list = (1..=3).map(name).collect();
    cfg
}

async fn start(cfg: ClusterConfig) -> Cluster {
    Cluster::start(cfg).await.expect("start cluster node")
}

/// Polls `cond` until it holds, failing the test after `timeout`.
async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if cond().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn connected_names(node: &Cluster) -> Vec<(String, bool)> {
    node.list_nodes()
        .await
        .map(|v| v.into_iter().map(|n| (n.node_name, n.connected)).collect())
        .unwrap_or_default()
}

async fn three_nodes(dir: &TempDir, port: u16) -> Vec<Cluster> {
    let mut nodes = Vec::new();
    for i in 1..=3 {
        nodes.push(start(config(i, port, dir, license(&format!("S{i}")))).await);
    }
    nodes[0]
        .init_cluster((1..=3).map(name).collect())
        .await
        .expect("init cluster");
    for node in &nodes {
        wait_for("three connected members", PATIENCE, || async {
            let v = connected_names(node).await;
            v.len() == 3 && v.iter().all(|(_, c)| *c)
        })
        .await;
    }
    nodes
}

fn leader_index(nodes: &[Option<Cluster>]) -> Option<usize> {
    nodes.iter().position(|n| {
        n.as_ref()
            .is_some_and(|n| n.status().raft_state == "leader" && n.has_quorum())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_list_and_acquire_from_two_nodes() {
    let dir = TempDir::new("init");
    let port = free_port();
    let nodes = three_nodes(&dir, port).await;

    let views = nodes[1].list_nodes().await.expect("list nodes");
    let names: Vec<&str> = views.iter().map(|v| v.node_name.as_str()).collect();
    assert_eq!(names, vec![name(1), name(2), name(3)]);
    assert_eq!(
        views[2].external_signaling_url,
        "wss://node3.example/signaling"
    );
    assert_eq!(views[2].license_serial_code, "S3");
    assert_eq!(views[2].mode, "normal");
    let json = serde_json::to_value(&views[0]).expect("serialize");
    let mut keys: Vec<&str> = json
        .as_object()
        .expect("object")
        .keys()
        .map(|k| k.as_str())
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "connected",
            "external_api_url",
            "external_signaling_url",
            "license_max_connections",
            "license_max_nodes",
            "license_serial_code",
            "license_type",
            "mode",
            "node_name",
            "version"
        ]
    );

    // Initialised already, on this node and on another member.
    assert!(matches!(
        nodes[0].init_cluster((1..=3).map(name).collect()).await,
        Err(ClusterError::AlreadyInitialized { .. })
    ));
    assert!(matches!(
        nodes[1].init_cluster((1..=3).map(name).collect()).await,
        Err(ClusterError::AlreadyInitialized { .. })
    ));

    // Two nodes ask for the same new channel at once: one owner.
    let (a, b) = tokio::join!(
        nodes[1].acquire_channel("room", 0),
        nodes[2].acquire_channel("room", 0)
    );
    let (a, b) = (a.expect("acquire on node 2"), b.expect("acquire on node 3"));
    assert_eq!(a.node_name, b.node_name);
    assert!(a.node_name == name(2) || a.node_name == name(3), "{a:?}");
    assert_eq!(a.is_me, a.node_name == name(2));
    assert_eq!(b.is_me, b.node_name == name(3));

    // The owner learns it through its watch; every member lists the same.
    let owner_idx = if a.node_name == name(2) { 1 } else { 2 };
    let mut owned = nodes[owner_idx].owned_channels();
    tokio::time::timeout(PATIENCE, owned.wait_for(|s| s.contains("room")))
        .await
        .expect("owned_channels in time")
        .expect("watch open");
    let first = nodes[0].list_channels().await.expect("list channels");
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].channel_id, "room");
    assert_eq!(
        first[0].owners,
        vec![OwnerView {
            node_name: a.node_name.clone(),
            connected: true
        }]
    );
    for node in &nodes[1..] {
        assert_eq!(node.list_channels().await.expect("list channels"), first);
    }

    // Placement prefers the least loaded node.
    nodes[0].set_local_connections(90);
    nodes[1].set_local_connections(50);
    nodes[2].set_local_connections(1);
    wait_for("heartbeats to carry the load", PATIENCE, || async {
        let Ok(c) = nodes[0].acquire_channel("probe-load", 90).await else {
            return false;
        };
        let owner = nodes
            .iter()
            .find(|n| n.node_name() == c.node_name)
            .expect("a member owns it");
        owner
            .release_channel("probe-load")
            .await
            .expect("release the probe");
        c.node_name == name(3)
    })
    .await;

    // Release by the owner; afterwards the channel can be placed anew.
    nodes[owner_idx]
        .release_channel("room")
        .await
        .expect("release");
    wait_for("release to apply", PATIENCE, || async {
        nodes[0]
            .list_channels()
            .await
            .is_ok_and(|c| c.iter().all(|c| c.channel_id != "room"))
    })
    .await;

    let status = nodes[0].status();
    assert!(status.raft_term >= 1);
    assert!(status.raft_commit_index >= 1);
    for node in &nodes {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_failover_release_and_restart() {
    let dir = TempDir::new("failover");
    let port = free_port();
    let mut nodes: Vec<Option<Cluster>> = three_nodes(&dir, port)
        .await
        .into_iter()
        .map(Some)
        .collect();

    wait_for("a leader with quorum", PATIENCE, || async {
        leader_index(&nodes).is_some()
    })
    .await;
    let leader = leader_index(&nodes).expect("leader found");
    let leader_node = nodes[leader].clone().expect("leader running");
    // With equal load the requester gets the channel: the leader owns it.
    let owner = leader_node
        .acquire_channel("on-leader", 0)
        .await
        .expect("acquire");
    assert!(owner.is_me);
    let before = leader_node.list_channels().await.expect("list channels");

    let killed_at = Instant::now();
    leader_node.shutdown().await;
    nodes[leader] = None;
    let survivors: Vec<Cluster> = nodes.iter().flatten().cloned().collect();

    // The other two elect a leader and keep answering.
    wait_for("a new leader", PATIENCE, || async {
        leader_index(&nodes).is_some()
    })
    .await;
    let dead = name(leader as u8 + 1);
    for node in &survivors {
        wait_for("the old leader to show disconnected", PATIENCE, || async {
            connected_names(node)
                .await
                .iter()
                .any(|(n, c)| *n == dead && !*c)
        })
        .await;
    }
    // Seen from the test, which adds election time on a busy machine; the
    // liveness bound itself is down_after + heartbeat_interval.
    assert!(killed_at.elapsed() < DOWN_AFTER + PATIENCE);
    let placed = survivors[0]
        .acquire_channel("after-failover", 0)
        .await
        .expect("acquire");
    assert_ne!(placed.node_name, dead);

    // Its channel is released once it stayed down long enough, then placed on a live node.
    wait_for(
        "the dead owner's channel to be released",
        PATIENCE,
        || async {
            survivors[1]
                .list_channels()
                .await
                .is_ok_and(|c| c.iter().all(|c| c.channel_id != "on-leader"))
        },
    )
    .await;
    let moved = survivors[1]
        .acquire_channel("on-leader", 0)
        .await
        .expect("re-acquire");
    assert_ne!(moved.node_name, dead);

    // Restart it from its data dir: it rejoins with its state.
    let restarted = start(config(
        leader as u8 + 1,
        port,
        &dir,
        license(&format!("S{}", leader + 1)),
    ))
    .await;
    for node in survivors.iter().chain([&restarted]) {
        wait_for("the restarted node to show connected", PATIENCE, || async {
            let v = connected_names(node).await;
            v.len() == 3 && v.iter().all(|(_, c)| *c)
        })
        .await;
    }
    wait_for("the restarted node to catch up", PATIENCE, || async {
        restarted
            .list_channels()
            .await
            .is_ok_and(|c| c.iter().any(|c| c.channel_id == "after-failover"))
    })
    .await;
    let now = restarted.list_channels().await.expect("list channels");
    assert_eq!(
        now,
        survivors[0].list_channels().await.expect("list channels")
    );
    assert!(before.iter().all(|c| c.channel_id == "on-leader"));
    assert!(now
        .iter()
        .any(|c| c.channel_id == "on-leader" && c.owners[0].node_name != dead));

    restarted.shutdown().await;
    for node in &survivors {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_and_join() {
    let dir = TempDir::new("purge");
    let port = free_port();
    let nodes = three_nodes(&dir, port).await;

    let assigned = nodes[2].acquire_channel("on-3", 0).await.expect("acquire");
    assert_eq!(assigned.node_name, name(3));

    // A live member and an unknown one cannot be purged.
    assert!(matches!(
        nodes[0].purge_node(name(2)).await,
        Err(ClusterError::NodeIsAlive { .. })
    ));
    assert!(matches!(
        nodes[0].purge_node(name(9)).await,
        Err(ClusterError::UnknownNode { .. })
    ));
    assert!(matches!(
        nodes[0].purge_node("nonsense".into()).await,
        Err(ClusterError::InvalidNodeName { .. })
    ));

    nodes[2].shutdown().await;
    wait_for("node 3 to show disconnected", PATIENCE, || async {
        connected_names(&nodes[0])
            .await
            .iter()
            .any(|(n, c)| *n == name(3) && !*c)
    })
    .await;
    nodes[1].purge_node(name(3)).await.expect("purge node 3");
    for node in &nodes[..2] {
        wait_for("two members", PATIENCE, || async {
            connected_names(node).await.len() == 2
        })
        .await;
        wait_for("its channel released", PATIENCE, || async {
            node.list_channels().await.is_ok_and(|c| c.is_empty())
        })
        .await;
    }

    // A fourth node joins through a member (not necessarily the leader).
    let n4 = start(config(4, port, &dir, license("S4"))).await;
    let members = n4.join_cluster(name(2)).await.expect("join");
    assert_eq!(members, vec![name(1), name(2), name(4)]);
    for node in [&nodes[0], &nodes[1], &n4] {
        wait_for("three members after the join", PATIENCE, || async {
            let v = connected_names(node).await;
            v.len() == 3 && v.iter().all(|(_, c)| *c)
        })
        .await;
    }
    assert!(matches!(
        n4.join_cluster(name(1)).await,
        Err(ClusterError::AlreadyInitialized { .. })
    ));
    let owner = n4
        .acquire_channel("on-4", 0)
        .await
        .expect("acquire on the new node");
    assert!(owner.is_me);

    n4.shutdown().await;
    for node in &nodes[..2] {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_errors() {
    let dir = TempDir::new("join-errors");
    let port = free_port();
    let n1 = start(config(1, port, &dir, license("S1"))).await;
    let n2 = start(config(2, port, &dir, license("S2"))).await;

    let e = n2
        .join_cluster(name(1))
        .await
        .expect_err("contact is uninitialised");
    assert_eq!(e, ClusterError::ContactNodeNotInitialized { node: name(1) });
    let api = ApiError::from(e);
    assert_eq!(api.status, StatusCode::BAD_REQUEST);
    assert_eq!(api.error_type, "contact_node_not_initialized");

    let e = n2.join_cluster(name(9)).await.expect_err("contact is down");
    assert!(
        matches!(&e, ClusterError::Unreachable { node, .. } if *node == name(9)),
        "{e:?}"
    );
    assert!(e.to_string().contains(&name(9)));

    assert_eq!(n1.list_nodes().await, Err(ClusterError::NotInitialized));
    assert_eq!(n1.status().raft_state, "uninitialized");
    assert!(!n1.has_quorum());

    // Binding a port in use fails with an error naming the address.
    let e = Cluster::start(config(1, port, &dir, license("S1")))
        .await
        .err()
        .expect("port in use");
    assert!(
        matches!(&e, ClusterError::Bind { addr, .. } if addr.contains(&port.to_string())),
        "{e:?}"
    );

    n1.shutdown().await;
    n2.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn license_violation_then_valid_init() {
    let dir = TempDir::new("license");
    let port = free_port();
    let n1 = start(config(1, port, &dir, license("SAME"))).await;
    let n2 = start(config(2, port, &dir, license("SAME"))).await;
    let n3 = start(config(3, port, &dir, license("OTHER"))).await;

    let e = n1
        .init_cluster(vec![name(1), name(2), name(3)])
        .await
        .expect_err("two nodes share an ordinary license");
    assert_eq!(
        e,
        ClusterError::LicenseViolation {
            first: name(1),
            second: name(2)
        }
    );
    assert_eq!(ApiError::from(e).error_type, "license_violation");

    // Nothing was initialised: a valid pair still can be.
    n1.init_cluster(vec![name(1), name(3)])
        .await
        .expect("init without the duplicate");
    wait_for("two members", PATIENCE, || async {
        connected_names(&n3).await.len() == 2
    })
    .await;
    // Joining with the duplicate license is refused too.
    let e = n2
        .join_cluster(name(3))
        .await
        .expect_err("duplicate license on join");
    assert!(matches!(e, ClusterError::LicenseViolation { .. }), "{e:?}");

    for n in [n1, n2, n3] {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_license_within_max_nodes() {
    let dir = TempDir::new("shared-license");
    let port = free_port();
    let shared = LicenseInfo {
        max_nodes: Some(2),
        ..license("MULTI")
    };
    let n1 = start(config(1, port, &dir, shared.clone())).await;
    let n2 = start(config(2, port, &dir, shared)).await;
    n1.init_cluster(vec![name(1), name(2)])
        .await
        .expect("shared license for 2 nodes");
    let views = n2.list_nodes().await.expect("list nodes");
    assert!(views.iter().all(|v| v.license_max_nodes == 2));
    n1.shutdown().await;
    n2.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_cluster_restart_keeps_state_and_modes() {
    let dir = TempDir::new("restart-all");
    let port = free_port();
    let nodes = three_nodes(&dir, port).await;
    nodes[0]
        .set_mode(name(1), Mode::BlockNewConnection)
        .await
        .expect("set mode");
    assert!(matches!(
        nodes[0].set_mode(name(9), Mode::Normal).await,
        Err(ClusterError::UnknownNode { .. })
    ));
    // A blocked node gets no new channel even when it asks with no load.
    let owner = nodes[0].acquire_channel("kept", 0).await.expect("acquire");
    assert_ne!(owner.node_name, name(1));
    for node in &nodes {
        node.shutdown().await;
    }

    // Node 3 comes back upgraded: the others learn its new version.
    let mut nodes = Vec::new();
    for i in 1..=3 {
        let mut cfg = config(i, port, &dir, license(&format!("S{i}")));
        if i == 3 {
            cfg.me.version = "upgraded".into();
        }
        nodes.push(start(cfg).await);
    }
    for node in &nodes {
        wait_for("the restarted cluster to agree", PATIENCE, || async {
            let channels = node.list_channels().await.unwrap_or_default();
            let views = node.list_nodes().await.unwrap_or_default();
            channels.len() == 1
                && channels[0].channel_id == "kept"
                && channels[0].owners[0].node_name == owner.node_name
                && views.len() == 3
                && views.iter().all(|v| v.connected)
                && views[0].mode == "block_new_connection"
                && views[1].mode == "normal"
                && views[2].version == "upgraded"
        })
        .await;
    }
    for node in &nodes {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_node_cluster() {
    let dir = TempDir::new("single");
    let port = free_port();
    let n1 = start(config(1, port, &dir, license("S1"))).await;
    n1.init_cluster(vec![name(1)])
        .await
        .expect("init a cluster of one");
    wait_for("leadership with quorum", PATIENCE, || async {
        n1.status().raft_state == "leader" && n1.has_quorum()
    })
    .await;
    let mut owned = n1.owned_channels();
    let owner = n1.acquire_channel("solo", 3).await.expect("acquire");
    assert!(owner.is_me);
    assert_eq!(
        owner.external_signaling_url,
        "wss://node1.example/signaling"
    );
    tokio::time::timeout(PATIENCE, owned.wait_for(|s| s.contains("solo")))
        .await
        .expect("owned in time")
        .expect("watch open");
    n1.release_channel("solo").await.expect("release");
    tokio::time::timeout(PATIENCE, owned.wait_for(|s| s.is_empty()))
        .await
        .expect("released in time")
        .expect("watch open");
    assert!(matches!(
        n1.purge_node(name(1)).await,
        Err(ClusterError::NodeIsAlive { .. })
    ));
    n1.shutdown().await;

    // Restarted, it leads again by itself and keeps its membership.
    let n1 = start(config(1, port, &dir, license("S1"))).await;
    wait_for("leadership after restart", PATIENCE, || async {
        n1.status().raft_state == "leader" && n1.has_quorum()
    })
    .await;
    assert_eq!(connected_names(&n1).await, vec![(name(1), true)]);
    n1.shutdown().await;
}

#[test]
fn api_error_mapping() {
    let cases = [
        (
            ClusterError::AlreadyInitialized { node: "a@h".into() },
            StatusCode::CONFLICT,
            "already_initialized",
        ),
        (
            ClusterError::NotInitialized,
            StatusCode::CONFLICT,
            "not_initialized",
        ),
        (
            ClusterError::NoQuorum,
            StatusCode::SERVICE_UNAVAILABLE,
            "no_quorum",
        ),
        (
            ClusterError::UnknownNode { node: "a@h".into() },
            StatusCode::BAD_REQUEST,
            "unknown_node",
        ),
        (
            ClusterError::NodeIsAlive { node: "a@h".into() },
            StatusCode::CONFLICT,
            "node_is_alive",
        ),
        (
            ClusterError::Unreachable {
                node: "a@h".into(),
                reason: "refused".into(),
            },
            StatusCode::SERVICE_UNAVAILABLE,
            "node_unreachable",
        ),
        (
            ClusterError::InvalidNodeName {
                node_name: "x".into(),
                reason: "r".into(),
            },
            StatusCode::BAD_REQUEST,
            "invalid_node_name",
        ),
    ];
    for (e, status, error_type) in cases {
        let reason = e.to_string();
        let api = ApiError::from(e);
        assert_eq!((api.status, api.error_type), (status, error_type));
        assert_eq!(api.error_reason, reason);
    }
    let api = ApiError::from(ClusterError::Unreachable {
        node: "sora9@h".into(),
        reason: "refused".into(),
    });
    assert!(api.error_reason.contains("sora9@h"));
}

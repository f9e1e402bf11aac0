//! The cluster, end to end with the real binary: Sora's cluster tutorial step
//! by step (`sora daemon`, InitCluster, ListClusterNodes, channels and
//! redirects, `sora stop` + PurgeClusterNode, JoinCluster), a redirect followed
//! by Sora's Python SDK with media judged by a subscriber on a third node,
//! faults (leader SIGKILL, loss of quorum, a member restarted over and over)
//! and the API's errors.
//!
//! Every node of a test listens on its own loopback address of the test's
//! block with the same ports, as in the README's "A cluster, step by step";
//! the cluster port is 5890 on each address.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tests::{
    assert_colour_sequence, colour_changes, wait_until_async, Client, ClientKind, ClientOptions,
    RawSignaling, Received, SoraNode, SoraNodeOptions, TempDir, TestNet,
};

const INIT: &str = "Sora_20221221.InitCluster";
const LIST_NODES: &str = "Sora_20211215.ListClusterNodes";
const LIST_CHANNELS: &str = "Sora_20211215.ListClusterChannels";
const PURGE: &str = "Sora_20220629.PurgeClusterNode";
const JOIN: &str = "Sora_20211215.JoinCluster";
const STATS: &str = "Sora_20171010.GetStatsReport";

/// Generous bound for cluster state to settle (elections take 2.5–5 s with
/// the default 500 ms heartbeat; a loaded machine is slower).
const SETTLE: Duration = Duration::from_secs(30);
/// Longer than the node's own bound on waiting for the cluster (20 s).
const SIGNALING_WAIT: Duration = Duration::from_secs(25);
/// Cluster operations may wait three election timeouts for a leader.
const CLUSTER_OP_WAIT: Duration = Duration::from_secs(40);

/// The version every node reports: the workspace's.
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// `sora<n>@<address n of the block>`.
fn name(net: &TestNet, n: u8) -> String {
    format!("sora{n}@{}", net.addr(n))
}

fn signaling_url_of(net: &TestNet, n: u8) -> String {
    format!("ws://{}:5000/signaling", net.addr(n))
}

fn api_url_of(net: &TestNet, n: u8) -> String {
    format!("http://{}:3000/", net.addr(n))
}

/// The tutorial's `sora.conf` for node `n`: its own address, `cluster = true`,
/// both external URLs and `contact` as the contact node list.
fn cluster_options(net: &TestNet, n: u8, contact: &[u8]) -> SoraNodeOptions {
    let mut o = SoraNodeOptions::new(net, n)
        .with("cluster", "true")
        .with("external_signaling_url", signaling_url_of(net, n))
        .with("external_api_url", api_url_of(net, n))
        .with(
            "contact_node_name_list",
            contact
                .iter()
                .map(|c| name(net, *c))
                .collect::<Vec<_>>()
                .join(", "),
        );
    o.node_name = Some(name(net, n));
    o
}

/// Starts nodes `ns` at once, as daemons (`sora daemon`) or in the foreground.
async fn start_nodes(opts: Vec<SoraNodeOptions>, daemon: bool) -> Vec<SoraNode> {
    let starts = opts.into_iter().map(|o| async move {
        if daemon {
            SoraNode::daemon(o).await
        } else {
            SoraNode::start(o).await
        }
    });
    futures_util::future::try_join_all(starts)
        .await
        .expect("every node starts")
}

/// Three foreground nodes of the block, each knowing the three as contacts,
/// with `extra` config lines, formed into a cluster by InitCluster on node 1.
async fn three_node_cluster(net: &TestNet, extra: &[(&str, &str)]) -> Vec<SoraNode> {
    let opts = (1..=3)
        .map(|n| {
            let mut o = cluster_options(net, n, &[1, 2, 3]);
            for (k, v) in extra {
                o = o.with(k, v);
            }
            o
        })
        .collect();
    let nodes = start_nodes(opts, false).await;
    init_cluster(&nodes[0], &[name(net, 1), name(net, 2), name(net, 3)]).await;
    for node in &nodes {
        wait_members(
            node,
            &[
                (name(net, 1), true),
                (name(net, 2), true),
                (name(net, 3), true),
            ],
        )
        .await;
    }
    nodes
}

async fn init_cluster(node: &SoraNode, names: &[String]) {
    let (status, body) = node
        .api_within(INIT, json!({ "node_name_list": names }), CLUSTER_OP_WAIT)
        .await
        .expect("InitCluster answered");
    assert_eq!(status, 200, "InitCluster on {}: {body}", node.node_name());
}

async fn list_nodes(node: &SoraNode) -> anyhow::Result<Vec<Value>> {
    let v = node.api_ok(LIST_NODES, Value::Null).await?;
    v.as_array()
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("ListClusterNodes is not an array: {v}"))
}

/// `(node_name, connected)` of each member, in the order listed.
fn membership(list: &[Value]) -> Vec<(String, bool)> {
    list.iter()
        .map(|n| {
            (
                n["node_name"].as_str().unwrap_or("?").to_string(),
                n["connected"].as_bool().unwrap_or(false),
            )
        })
        .collect()
}

/// Waits until `node` lists exactly `want` (sorted by name), returns the list.
async fn wait_members(node: &SoraNode, want: &[(String, bool)]) -> Vec<Value> {
    let mut want = want.to_vec();
    want.sort();
    let last = Arc::new(Mutex::new(String::new()));
    let r = wait_until_async("the expected members", SETTLE, || {
        let (want, last) = (want.clone(), last.clone());
        async move {
            let list = match list_nodes(node).await {
                Ok(l) => l,
                Err(e) => {
                    *last.lock().unwrap() = e.to_string();
                    return None;
                }
            };
            *last.lock().unwrap() = Value::Array(list.clone()).to_string();
            (membership(&list) == want).then_some(list)
        }
    })
    .await;
    match r {
        Ok(list) => list,
        Err(e) => panic!(
            "{e}: {} never listed {want:?}; last answer: {}",
            node.node_name(),
            last.lock().unwrap()
        ),
    }
}

/// The `cluster` object of GetStatsReport.
async fn raft_status(node: &SoraNode) -> anyhow::Result<Value> {
    let stats = node.api_ok(STATS, Value::Null).await?;
    Ok(stats["cluster"].clone())
}

/// Waits until exactly one of `nodes[i]` for `i` in `among` says it leads.
async fn wait_leader(nodes: &[SoraNode], among: &[usize]) -> usize {
    wait_until_async("exactly one Raft leader", SETTLE, || async {
        let mut leaders = Vec::new();
        for &i in among {
            let st = raft_status(&nodes[i]).await.ok()?;
            if st["raft_state"] == "leader" {
                leaders.push(i);
            }
        }
        (leaders.len() == 1).then(|| leaders[0])
    })
    .await
    .expect("a leader is elected")
}

/// ListClusterChannels as `channel_id → owner names`.
async fn channel_owners(
    node: &SoraNode,
    timeout: Duration,
) -> anyhow::Result<(Value, BTreeMap<String, Vec<String>>)> {
    let (status, v) = node.api_within(LIST_CHANNELS, Value::Null, timeout).await?;
    if status != 200 {
        anyhow::bail!(
            "ListClusterChannels on {} answered {status}: {v}",
            node.node_name()
        );
    }
    let arr = v
        .as_array()
        .ok_or_else(|| anyhow::anyhow!("ListClusterChannels is not an array: {v}"))?;
    let mut map = BTreeMap::new();
    let mut ids = Vec::new();
    for c in arr {
        let id = c["channel_id"]
            .as_str()
            .ok_or_else(|| anyhow::anyhow!("channel without channel_id: {c}"))?
            .to_string();
        let owners: Vec<String> = c["owners"]
            .as_array()
            .ok_or_else(|| anyhow::anyhow!("channel without owners: {c}"))?
            .iter()
            .map(|o| o["node_name"].as_str().unwrap_or("?").to_string())
            .collect();
        ids.push(id.clone());
        if map.insert(id.clone(), owners).is_some() {
            anyhow::bail!("channel {id} is listed twice: {v}");
        }
    }
    let mut sorted = ids.clone();
    sorted.sort();
    if sorted != ids {
        anyhow::bail!("ListClusterChannels is not sorted by channel_id: {v}");
    }
    Ok((v, map))
}

/// What a raw `connect` ended in.
enum Connect {
    /// An offer from the node at `served_by`, after a redirect when
    /// `redirected`. The socket is kept so the connection stays.
    Offer {
        served_by: String,
        redirected: bool,
        ws: Box<RawSignaling>,
    },
    /// The server closed the WebSocket instead.
    Closed { code: u16, reason: String },
}

fn connect_msg(channel: &str, redirect: bool) -> Value {
    let mut m = json!({
        "type": "connect",
        "role": "sendonly",
        "channel_id": channel,
        "sora_client": "raw cluster test client",
        "audio": true,
        "video": {"codec_type": "VP8"},
    });
    if redirect {
        m["redirect"] = json!(true);
    }
    m
}

/// Sends `connect` for `channel` to `url` and follows one redirect, as the
/// SDKs do (the server must close the first socket with 1000 after it).
async fn raw_connect(url: &str, channel: &str) -> anyhow::Result<Connect> {
    let mut ws = RawSignaling::connect(url).await?;
    ws.send_json(&connect_msg(channel, false)).await?;
    match ws.recv(SIGNALING_WAIT).await? {
        Received::Json(v) if v["type"] == "offer" => Ok(Connect::Offer {
            served_by: url.to_string(),
            redirected: false,
            ws: Box::new(ws),
        }),
        Received::Json(v) if v["type"] == "redirect" => {
            let location = v["location"]
                .as_str()
                .ok_or_else(|| anyhow::anyhow!("redirect without a location: {v}"))?
                .to_string();
            let (code, reason, _) = ws.expect_close(SIGNALING_WAIT).await?;
            anyhow::ensure!(
                code == 1000,
                "the redirecting node closed with {code} {reason:?}"
            );
            let mut ws = RawSignaling::connect(&location).await?;
            ws.send_json(&connect_msg(channel, true)).await?;
            match ws.recv(SIGNALING_WAIT).await? {
                Received::Json(v) if v["type"] == "offer" => Ok(Connect::Offer {
                    served_by: location,
                    redirected: true,
                    ws: Box::new(ws),
                }),
                Received::Close(code, reason) => Ok(Connect::Closed { code, reason }),
                other => anyhow::bail!("after the redirect to {location}: {other:?}"),
            }
        }
        Received::Close(code, reason) => Ok(Connect::Closed { code, reason }),
        other => anyhow::bail!("answer to connect from {url}: {other:?}"),
    }
}

/// Connects and expects an offer; returns the serving URL and whether it
/// came through a redirect. The socket is closed.
async fn connect_ok(url: &str, channel: &str) -> (String, bool) {
    match raw_connect(url, channel).await {
        Ok(Connect::Offer {
            served_by,
            redirected,
            ws,
        }) => {
            ws.close().await;
            (served_by, redirected)
        }
        Ok(Connect::Closed { code, reason }) => {
            panic!("connect {channel} via {url}: closed {code} {reason:?}")
        }
        Err(e) => panic!("connect {channel} via {url}: {e:#}"),
    }
}

/// The number (1-based) of the node whose signaling URL is `url`.
fn node_of_url(net: &TestNet, url: &str) -> u8 {
    (1..=9)
        .find(|n| signaling_url_of(net, *n) == url)
        .unwrap_or_else(|| panic!("{url} is no node of this test"))
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

// ---- 1. the tutorial ---------------------------------------------------------

/// Every field of a member in ListClusterNodes, for node `n` on the
/// development license.
fn check_member_entry(net: &TestNet, n: u8, entry: &Value) {
    let want = json!({
        "connected": true,
        "external_api_url": api_url_of(net, n),
        "external_signaling_url": signaling_url_of(net, n),
        "license_max_connections": 100,
        "license_max_nodes": 3,
        "license_serial_code": "DEVELOPMENT",
        "license_type": "Experimental",
        "mode": "normal",
        "node_name": name(net, n),
        "version": VERSION,
    });
    for (k, v) in want.as_object().unwrap() {
        assert_eq!(&entry[k], v, "field {k} of {} in {entry}", name(net, n));
    }
}

#[tokio::test]
async fn tutorial_init_list_channels_purge_and_join() {
    let net = TestNet::new("cluster_tutorial");
    let names: Vec<String> = (1..=3).map(|n| name(&net, n)).collect();

    // 1–2. One sora.conf per node, each started with `sora daemon`.
    let opts = (1..=3)
        .map(|n| cluster_options(&net, n, &[1, 2, 3]))
        .collect();
    let mut nodes = start_nodes(opts, true).await;
    for node in &nodes {
        let pid: u32 = std::fs::read_to_string(node.pid_path())
            .expect("sora.pid after `sora daemon`")
            .trim()
            .parse()
            .expect("sora.pid holds a pid");
        assert_eq!(Some(pid), node.pid(), "{}", node.node_name());
    }

    // Before InitCluster a node belongs to no cluster.
    let (status, body) = nodes[1].api(LIST_NODES, Value::Null).await.unwrap();
    assert_eq!(status, 409, "ListClusterNodes before InitCluster: {body}");
    assert_eq!(body["error_type"], "not_initialized", "{body}");

    // 3. InitCluster on node 1.
    let r = nodes[0]
        .api_raw(
            INIT,
            json!({ "node_name_list": names }).to_string().as_bytes(),
        )
        .await
        .expect("InitCluster answered");
    assert_eq!(r.status, 200, "InitCluster: {:?}", r.json());
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));

    // 4. ListClusterNodes on any node lists the three with every field.
    let all: Vec<(String, bool)> = names.iter().map(|n| (n.clone(), true)).collect();
    for node in &nodes {
        let list = wait_members(node, &all).await;
        for (i, entry) in list.iter().enumerate() {
            check_member_entry(&net, i as u8 + 1, entry);
        }
    }

    // 5. Four channels through node 1; non-owners redirect to the owner.
    let channels = ["tutorial-a", "tutorial-b", "tutorial-c", "tutorial-d"];
    let mut held = Vec::new();
    let mut served = BTreeMap::new();
    for ch in channels {
        match raw_connect(&nodes[0].signaling_url(), ch).await {
            Ok(Connect::Offer {
                served_by,
                redirected,
                ws,
            }) => {
                let n = node_of_url(&net, &served_by);
                assert_eq!(redirected, n != 1, "{ch} served by node {n}");
                served.insert(ch.to_string(), name(&net, n));
                held.push(ws);
            }
            Ok(Connect::Closed { code, reason }) => panic!("{ch}: closed {code} {reason:?}"),
            Err(e) => panic!("{ch}: {e:#}"),
        }
    }
    eprintln!("tutorial: channel owners {served:?}");
    assert!(
        served.values().any(|o| *o != names[0]),
        "some channel should have been placed on another node: {served:?}"
    );
    // ListClusterChannels: the four with their owners, the same on all nodes.
    let mut first: Option<Value> = None;
    for node in &nodes {
        let (raw, owners) = channel_owners(node, CLUSTER_OP_WAIT)
            .await
            .expect("ListClusterChannels");
        let want: BTreeMap<String, Vec<String>> = served
            .iter()
            .map(|(c, o)| (c.clone(), vec![o.clone()]))
            .collect();
        assert_eq!(owners, want, "on {}: {raw}", node.node_name());
        for c in raw.as_array().unwrap() {
            assert_eq!(c["owners"][0]["connected"], true, "{c}");
        }
        match &first {
            None => first = Some(raw),
            Some(f) => assert_eq!(&raw, f, "{} differs from node 1", node.node_name()),
        }
    }
    for ws in held {
        ws.close().await;
    }

    // 6. Remove node 3: `sora stop`, delete its data dir, PurgeClusterNode.
    let mut node3 = nodes.pop().unwrap();
    let stopped = node3.stop().await.expect("sora stop");
    assert!(!node3.pid_path().exists(), "sora stop left the pid file");
    std::fs::remove_dir_all(node3.data_dir()).expect("delete node 3's data_dir");
    eprintln!("tutorial: `sora stop`: {}", stopped.stdout.trim());
    let stop_at = Instant::now();
    // The tutorial purges right after the stop; a member is purgeable once
    // the leader has seen it disconnected, so retry while it answers
    // `node_is_alive`.
    let alive_answers = std::sync::atomic::AtomicU32::new(0);
    let purged = wait_until_async("PurgeClusterNode to succeed", SETTLE, || async {
        let (status, body) = nodes[0]
            .api_within(
                PURGE,
                json!({"target_node_name": names[2]}),
                CLUSTER_OP_WAIT,
            )
            .await
            .ok()?;
        if status == 200 {
            return Some(body);
        }
        // 409 until the leader has seen node 3 go; 503 while a new leader
        // is elected (when node 3 led).
        assert!(
            (status == 409 && body["error_type"] == "node_is_alive")
                || (status == 503 && body["error_type"] == "no_quorum"),
            "PurgeClusterNode: {status} {body}"
        );
        alive_answers.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        None
    })
    .await
    .expect("node 3 purged");
    eprintln!(
        "tutorial: PurgeClusterNode succeeded {} after `sora stop` ({} node_is_alive / no_quorum answers first)",
        secs(stop_at.elapsed()),
        alive_answers.into_inner()
    );
    assert_eq!(purged, json!({"target_node_name": names[2]}));
    let two = [(names[0].clone(), true), (names[1].clone(), true)];
    for node in &nodes {
        wait_members(node, &two).await;
    }
    // Node 3's channels went with it.
    let (raw, owners) = channel_owners(&nodes[1], CLUSTER_OP_WAIT).await.unwrap();
    assert!(
        owners.values().flatten().all(|o| *o != names[2]),
        "channels still owned by the purged node: {raw}"
    );
    drop(node3);

    // 7. Add node 4 with an empty data_dir: JoinCluster via node 1.
    let node4 = SoraNode::daemon(cluster_options(&net, 4, &[1, 2, 4]))
        .await
        .expect("node 4 starts");
    let (status, body) = node4
        .api_within(
            JOIN,
            json!({"contact_node_name": names[0]}),
            CLUSTER_OP_WAIT,
        )
        .await
        .expect("JoinCluster answered");
    assert_eq!(status, 200, "JoinCluster: {body}");
    let mut members: Vec<String> = body["node_name_list"]
        .as_array()
        .unwrap_or_else(|| panic!("JoinCluster answer {body}"))
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    members.sort();
    assert_eq!(
        members,
        vec![names[0].clone(), names[1].clone(), name(&net, 4)],
        "{body}"
    );
    nodes.push(node4);
    let three = [
        (names[0].clone(), true),
        (names[1].clone(), true),
        (name(&net, 4), true),
    ];
    for node in &nodes {
        let list = wait_members(node, &three).await;
        for (entry, n) in list.iter().zip([1u8, 2, 4]) {
            check_member_entry(&net, n, entry);
        }
    }
    for node in nodes.iter_mut() {
        node.stop().await.expect("sora stop");
    }
}

// ---- 2. a redirect followed by the Python SDK --------------------------------

/// The owner of the channel is node 3; a sendonly Python publisher connects
/// to node 1 and a recvonly Python subscriber to node 2: both are redirected
/// to node 3, where the subscriber decodes the publisher's colours.
#[tokio::test]
async fn python_sdk_follows_the_redirect_to_the_owner() {
    let net = TestNet::new("cluster_py_redirect");
    let nodes = three_node_cluster(&net, &[]).await;
    let channel = "cluster-py-redirect";
    // The first connect through node 3 makes it the owner (ties go to the
    // node that asks); the channel stays assigned for channel_release_grace.
    let (served, _) = connect_ok(&nodes[2].signaling_url(), channel).await;
    assert_eq!(
        served,
        nodes[2].signaling_url(),
        "node 3 should own {channel}"
    );

    let cycle = ["red", "green", "blue", "yellow"];
    let mut sub = Client::start(
        ClientKind::Python,
        "subscriber",
        &ClientOptions::new(&nodes[1].signaling_url(), channel, "recvonly")
            .duration(Duration::from_secs(40)),
    )
    .expect("start subscriber");
    sub.wait_event("connected", SETTLE, |_| true)
        .await
        .expect("subscriber connected");
    let mut publisher = Client::start(
        ClientKind::Python,
        "publisher",
        &ClientOptions::new(&nodes[0].signaling_url(), channel, "sendonly")
            .video_codec("VP8")
            .colours(&cycle)
            .duration(Duration::from_secs(25)),
    )
    .expect("start publisher");
    let offer = publisher
        .wait_event("offer", SETTLE, |e| e["connection_id"].is_string())
        .await
        .expect("publisher got an offer");
    let pub_id = offer["connection_id"].as_str().unwrap().to_string();
    publisher
        .wait_event("connected", SETTLE, |_| true)
        .await
        .expect("publisher connected");

    // Both were told to go to node 3.
    for c in [&sub, &publisher] {
        let redirect = c
            .find("signaling", |e| {
                e["direction"] == "received" && e["type"] == "redirect"
            })
            .unwrap_or_else(|| panic!("{} got no redirect\n{}", c.name(), c.describe()));
        assert_eq!(
            redirect["message"]["location"],
            nodes[2].signaling_url(),
            "{redirect}"
        );
        let reconnect = c
            .find("signaling", |e| {
                e["direction"] == "sent"
                    && e["type"] == "connect"
                    && e["message"]["redirect"] == true
            })
            .unwrap_or_else(|| panic!("{} sent no connect with redirect: true", c.name()));
        assert_eq!(reconnect["message"]["channel_id"], channel);
    }

    // Media: the subscriber decodes the colours in order.
    let cycle_owned: Vec<String> = cycle.iter().map(|s| s.to_string()).collect();
    let pid = pub_id.clone();
    let result = sub
        .wait_events(
            "4 colour steps from the publisher",
            Duration::from_secs(40),
            |evs| {
                let seen = colour_changes(evs, Some(&pid));
                let c: Vec<&str> = cycle_owned.iter().map(String::as_str).collect();
                (seen.len() > 4).then(|| assert_colour_sequence(&seen, &c, 4))
            },
        )
        .await
        .expect("colours decoded through the owner");
    if let Err(e) = result {
        panic!("colours out of order: {e}\n{}", sub.describe());
    }

    // Both connections live on node 3, none on nodes 1 and 2.
    let conns = nodes[2]
        .api_ok("Sora_20201013.ListConnections", Value::Null)
        .await
        .unwrap();
    let ids: Vec<&str> = conns
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["connection_id"].as_str())
        .collect();
    assert!(ids.contains(&pub_id.as_str()), "{conns}");
    assert_eq!(ids.len(), 2, "{conns}");
    for node in &nodes[..2] {
        let c = node
            .api_ok("Sora_20201013.ListConnections", Value::Null)
            .await
            .unwrap();
        assert_eq!(c, json!([]), "{}", node.node_name());
    }
    publisher.kill().await;
    sub.kill().await;
}

// ---- 3. faults ------------------------------------------------------------------

/// Claims `channel` through node `via` and returns the owner's number, once
/// the owner has let the (closed) connection go, so that the next placement
/// sees every node with no connections.
async fn claim(net: &TestNet, nodes: &[SoraNode], via: usize, channel: &str) -> u8 {
    let (served, _) = connect_ok(&nodes[via].signaling_url(), channel).await;
    let owner = node_of_url(net, &served);
    let node = &nodes[owner as usize - 1];
    wait_until_async("the claiming connection to leave", SETTLE, || async {
        let list = node
            .api_ok("Sora_20201013.ListConnections", Value::Null)
            .await
            .ok()?;
        (list == json!([])).then_some(())
    })
    .await
    .expect("the owner lets the closed connection go");
    owner
}

/// SIGKILL of the Raft leader: the other two elect a leader, keep answering,
/// show it disconnected, and place a new channel on a live node; restarted
/// with the same data_dir it is connected again with nothing lost.
#[tokio::test]
async fn leader_sigkill_failover_and_restart() {
    let net = TestNet::new("cluster_leader_kill");
    // Empty channels stay assigned for the whole test.
    let mut nodes = three_node_cluster(&net, &[("channel_release_grace", "10 min")]).await;
    // One channel owned by each node (the asking node wins ties).
    for i in 0..3 {
        let owner = claim(&net, &nodes, i, &format!("before-{i}")).await;
        assert_eq!(owner as usize, i + 1, "before-{i}");
    }
    let leader = wait_leader(&nodes, &[0, 1, 2]).await;
    let survivors: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    let (_, channels_before) = channel_owners(&nodes[survivors[0]], CLUSTER_OP_WAIT)
        .await
        .unwrap();
    let members_before = membership(&list_nodes(&nodes[leader]).await.unwrap());
    let term_before = raft_status(&nodes[survivors[0]]).await.unwrap()["raft_term"]
        .as_u64()
        .unwrap();
    let dead_name = nodes[leader].node_name();
    eprintln!("leader kill: leader is {dead_name} (term {term_before})");

    nodes[leader].sigkill().await.expect("SIGKILL the leader");
    let killed_at = Instant::now();

    // Three watchers at once, as a connect can wait for the new leader:
    // a new leader answers, the dead one shows `connected: false` on both
    // survivors, a new channel's connect succeeds.
    let deadline = killed_at + SETTLE;
    let new_leader = async {
        loop {
            for &i in &survivors {
                if let Ok(st) = raft_status(&nodes[i]).await {
                    if st["raft_state"] == "leader" && st["raft_term"].as_u64() > Some(term_before)
                    {
                        return killed_at.elapsed();
                    }
                }
            }
            assert!(Instant::now() < deadline, "no new leader within {SETTLE:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let shown_down = async {
        loop {
            let mut down = 0;
            for &i in &survivors {
                let list = list_nodes(&nodes[i])
                    .await
                    .expect("a survivor answers ListClusterNodes");
                if membership(&list).contains(&(dead_name.clone(), false)) {
                    down += 1;
                }
            }
            if down == survivors.len() {
                return killed_at.elapsed();
            }
            assert!(
                Instant::now() < deadline,
                "{dead_name} not shown disconnected within {SETTLE:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let new_channel = async {
        let mut refusals = Vec::new();
        loop {
            match raw_connect(&nodes[survivors[0]].signaling_url(), "after-kill").await {
                Ok(Connect::Offer { served_by, ws, .. }) => {
                    let n = node_of_url(&net, &served_by);
                    assert_ne!(
                        n as usize,
                        leader + 1,
                        "new channel placed on the dead node"
                    );
                    ws.close().await;
                    return (killed_at.elapsed(), refusals);
                }
                Ok(Connect::Closed { code, reason }) => {
                    assert_eq!(code, 4503, "refusal during failover: {reason}");
                    refusals.push(format!(
                        "{:.2} s: {reason}",
                        killed_at.elapsed().as_secs_f64()
                    ));
                }
                Err(e) => panic!("connect during failover: {e:#}"),
            }
            assert!(
                Instant::now() < deadline,
                "no connect within {SETTLE:?}: {refusals:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let (new_leader_at, down_at, (connect_at, refusals)) =
        tokio::join!(new_leader, shown_down, new_channel);
    eprintln!(
        "leader kill: new leader after {}, new channel connect after {}, failover {}; \
         killed member shown connected:false after {}; refusals meanwhile: {refusals:?}",
        secs(new_leader_at),
        secs(connect_at),
        secs(new_leader_at.max(connect_at)),
        secs(down_at)
    );

    // Restart with the same data_dir: connected again, nothing lost.
    nodes[leader]
        .restart()
        .await
        .expect("restart the killed node");
    let restarted_at = Instant::now();
    let all: Vec<(String, bool)> = members_before
        .iter()
        .map(|(n, _)| (n.clone(), true))
        .collect();
    for node in &nodes {
        wait_members(node, &all).await;
    }
    eprintln!(
        "leader kill: restarted member connected on every node {} after its start",
        secs(restarted_at.elapsed())
    );
    let mut want = channels_before.clone();
    let (_, after) = channel_owners(&nodes[survivors[0]], CLUSTER_OP_WAIT)
        .await
        .unwrap();
    let placed = after
        .get("after-kill")
        .cloned()
        .expect("the channel made during the failover is listed");
    want.insert("after-kill".into(), placed);
    for node in &nodes {
        let (raw, owners) = channel_owners(node, CLUSTER_OP_WAIT).await.unwrap();
        assert_eq!(
            owners,
            want,
            "channels on {} after the restart: {raw}",
            node.node_name()
        );
    }
    // The restarted node serves its own channel again.
    let (served, redirected) = connect_ok(
        &nodes[survivors[0]].signaling_url(),
        &format!("before-{leader}"),
    )
    .await;
    assert_eq!(served, nodes[leader].signaling_url());
    assert!(redirected);
}

/// With two of three members down the survivor refuses new connections
/// (4503 NO-QUORUM) and cluster changes (503), still answers reads, and
/// recovers when one member comes back.
#[tokio::test]
async fn two_of_three_down_no_quorum() {
    let net = TestNet::new("cluster_no_quorum");
    let mut nodes = three_node_cluster(&net, &[("channel_release_grace", "10 min")]).await;
    let owner = claim(&net, &nodes, 0, "kept").await;
    assert_eq!(owner, 1);
    nodes[1].sigkill().await.unwrap();
    nodes[2].sigkill().await.unwrap();
    let killed_at = Instant::now();

    // New connections: refused with a reason, for a new and a known channel.
    let refused = wait_until_async("NO-QUORUM refusal", SETTLE, || async {
        match raw_connect(&nodes[0].signaling_url(), "new-channel").await {
            Ok(Connect::Closed { code, reason }) if reason.starts_with("NO-QUORUM") => {
                Some((code, reason))
            }
            _ => None,
        }
    })
    .await
    .expect("the survivor refuses connections");
    eprintln!(
        "no quorum: refusal after {}: {refused:?}",
        secs(killed_at.elapsed())
    );
    assert_eq!(refused.0, 4503);
    match raw_connect(&nodes[0].signaling_url(), "kept")
        .await
        .unwrap()
    {
        Connect::Closed { code, reason } => {
            assert_eq!(code, 4503);
            assert!(reason.starts_with("NO-QUORUM"), "{reason}");
        }
        Connect::Offer { .. } => panic!("an owned channel was admitted without quorum"),
    }

    // Reads still answer: both others disconnected.
    let list = wait_members(
        &nodes[0],
        &[
            (name(&net, 1), true),
            (name(&net, 2), false),
            (name(&net, 3), false),
        ],
    )
    .await;
    assert_eq!(list.len(), 3);
    let (_, owners) = channel_owners(&nodes[0], CLUSTER_OP_WAIT).await.unwrap();
    assert_eq!(owners.get("kept"), Some(&vec![name(&net, 1)]));

    // Cluster changes: 503.
    let t = Instant::now();
    let (status, body) = nodes[0]
        .api_within(
            PURGE,
            json!({"target_node_name": name(&net, 3)}),
            CLUSTER_OP_WAIT,
        )
        .await
        .expect("PurgeClusterNode answered");
    eprintln!(
        "no quorum: PurgeClusterNode answered {status} after {}",
        secs(t.elapsed())
    );
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error_type"], "no_quorum", "{body}");

    // One member back: quorum again, connections admitted.
    nodes[1].restart().await.unwrap();
    let back_at = Instant::now();
    wait_until_async("connections admitted again", SETTLE, || async {
        match raw_connect(&nodes[0].signaling_url(), "kept").await {
            Ok(Connect::Offer { ws, .. }) => {
                ws.close().await;
                Some(())
            }
            _ => None,
        }
    })
    .await
    .expect("quorum regained");
    eprintln!(
        "no quorum: admitted again {} after a member restarted",
        secs(back_at.elapsed())
    );
}

/// A member stopped and restarted five times (alternately `sora stop` and
/// SIGKILL) while ListClusterChannels is polled on the other two: no channel
/// ever has two owners or is listed twice, and no channel owned by a live
/// node disappears. New channels placed meanwhile go to live nodes.
#[tokio::test]
async fn member_restarts_never_double_own_a_channel() {
    let net = TestNet::new("cluster_restarts");
    let opts = (1..=3)
        .map(|n| cluster_options(&net, n, &[1, 2, 3]).with("channel_release_grace", "10 min"))
        .collect();
    let mut nodes = start_nodes(opts, true).await;
    let names: Vec<String> = (1..=3).map(|n| name(&net, n)).collect();
    init_cluster(&nodes[0], &names).await;
    let all: Vec<(String, bool)> = names.iter().map(|n| (n.clone(), true)).collect();
    for node in &nodes {
        wait_members(node, &all).await;
    }
    for i in 0..3 {
        for k in 0..2 {
            let owner = claim(&net, &nodes, i, &format!("ch-{i}-{k}")).await;
            assert_eq!(owner as usize, i + 1);
        }
    }
    // Restart a member that does not lead (so the pollers keep a leader).
    let leader = wait_leader(&nodes, &[0, 1, 2]).await;
    let victim = (0..3).rev().find(|i| *i != leader).unwrap();
    let victim_name = names[victim].clone();

    let nodes_arc: Vec<Arc<SoraNode>>;
    let mut victim_node = {
        let mut v = Vec::new();
        let mut victim_node = None;
        for (i, n) in nodes.drain(..).enumerate() {
            if i == victim {
                victim_node = Some(n);
            } else {
                v.push(Arc::new(n));
            }
        }
        nodes_arc = v;
        victim_node.unwrap()
    };
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut pollers = Vec::new();
    for w in &nodes_arc {
        let w = Arc::clone(w);
        let stop = stop.clone();
        let (victim_name, names) = (victim_name.clone(), names.clone());
        pollers.push(tokio::spawn(async move {
            let mut seen_live: BTreeMap<String, String> = BTreeMap::new();
            let mut polls = 0u32;
            let mut errors = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match channel_owners(&w, CLUSTER_OP_WAIT).await {
                    Ok((raw, owners)) => {
                        polls += 1;
                        for (ch, o) in &owners {
                            assert_eq!(
                                o.len(),
                                1,
                                "{ch} has owners {o:?} on {}: {raw}",
                                w.node_name()
                            );
                            assert!(names.contains(&o[0]), "{ch} owned by a stranger: {raw}");
                        }
                        // A channel of a live node, once seen, never goes away
                        // nor changes owner.
                        for (ch, owner) in &seen_live {
                            assert_eq!(
                                owners.get(ch),
                                Some(&vec![owner.clone()]),
                                "{ch} (owned by live {owner}) changed on {}: {raw}",
                                w.node_name()
                            );
                        }
                        for (ch, o) in owners {
                            if o[0] != victim_name {
                                seen_live.insert(ch, o[0].clone());
                            }
                        }
                    }
                    Err(e) => errors.push(e.to_string()),
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            (polls, errors, seen_live.len())
        }));
    }

    let mut down_times = Vec::new();
    for round in 0..5 {
        let down_from = Instant::now();
        if round % 2 == 0 {
            victim_node.stop().await.expect("sora stop");
        } else {
            victim_node.sigkill().await.expect("SIGKILL");
        }
        // Down for real: both others show it disconnected.
        let mut down = all.clone();
        down[victim].1 = false;
        for w in &nodes_arc {
            wait_members(w, &down).await;
        }
        // While it is down, a new channel through a watcher goes to a live node.
        let down_seen = down_from.elapsed();
        let via = &nodes_arc[round % 2];
        let (served, _) = connect_ok(&via.signaling_url(), &format!("during-{round}")).await;
        assert_ne!(
            served,
            victim_node.signaling_url(),
            "round {round}: new channel placed on the stopped member"
        );
        let connected_new = down_from.elapsed();
        victim_node.restart().await.expect("restart the member");
        for w in &nodes_arc {
            wait_members(w, &all).await;
        }
        wait_members(&victim_node, &all).await;
        down_times.push(format!(
            "down seen {}, new channel {}, back {}",
            secs(down_seen),
            secs(connected_new),
            secs(down_from.elapsed())
        ));
    }
    eprintln!("restarts: {victim_name} stop/kill → connected again, per round: {down_times:?}");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for p in pollers {
        let (polls, errors, live) = p.await.expect("poller never saw a bad channel list");
        eprintln!("restarts: {polls} polls, {live} live channels tracked, errors {errors:?}");
        assert!(
            polls >= 10,
            "too few successful polls: {polls}, errors {errors:?}"
        );
    }
    // In the end all nodes agree, and the victim's channels are its own still.
    let (first, owners) = channel_owners(&nodes_arc[0], CLUSTER_OP_WAIT)
        .await
        .unwrap();
    for k in 0..2 {
        assert_eq!(
            owners.get(&format!("ch-{victim}-{k}")),
            Some(&vec![victim_name.clone()]),
            "{first}"
        );
    }
    for node in nodes_arc.iter().map(|a| a.as_ref()).chain([&victim_node]) {
        let (raw, _) = channel_owners(node, CLUSTER_OP_WAIT).await.unwrap();
        assert_eq!(raw, first, "{} disagrees", node.node_name());
    }
}

// ---- 4. errors ------------------------------------------------------------------

#[tokio::test]
async fn cluster_api_errors_and_raft_stats() {
    let net = TestNet::new("cluster_errors");
    let opts = (1..=3)
        .map(|n| cluster_options(&net, n, &[1, 2, 3]))
        .collect();
    let nodes = start_nodes(opts, false).await;
    let names: Vec<String> = (1..=3).map(|n| name(&net, n)).collect();

    // Uninitialised: GetStatsReport says so.
    let st = raft_status(&nodes[2]).await.unwrap();
    assert_eq!(st["raft_state"], "uninitialized", "{st}");

    // JoinCluster through a contact that is not initialised.
    let (status, body) = nodes[1]
        .api_within(
            JOIN,
            json!({"contact_node_name": names[2]}),
            CLUSTER_OP_WAIT,
        )
        .await
        .unwrap();
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error_type"], "contact_node_not_initialized", "{body}");
    assert!(
        body["error_reason"]
            .as_str()
            .unwrap_or("")
            .contains(&names[2]),
        "{body}"
    );

    // InitCluster of nodes 1 and 2, then twice.
    init_cluster(&nodes[0], &names[..2]).await;
    let (status, body) = nodes[0]
        .api_within(INIT, json!({"node_name_list": names[..2]}), CLUSTER_OP_WAIT)
        .await
        .unwrap();
    assert_eq!(status, 409, "second InitCluster: {body}");
    assert_eq!(body["error_type"], "already_initialized", "{body}");
    // Node 3 cannot form a cluster with a node that already has one.
    let (status, body) = nodes[2]
        .api_within(
            INIT,
            json!({"node_name_list": [names[2], names[1]]}),
            CLUSTER_OP_WAIT,
        )
        .await
        .unwrap();
    assert_eq!(
        status, 409,
        "InitCluster with a member of another cluster: {body}"
    );
    assert_eq!(body["error_type"], "already_initialized", "{body}");
    for node in &nodes[..2] {
        wait_members(node, &[(names[0].clone(), true), (names[1].clone(), true)]).await;
    }

    // Raft status in GetStatsReport.
    let leader = wait_leader(&nodes, &[0, 1]).await;
    for node in &nodes[..2] {
        let st = raft_status(node).await.unwrap();
        let state = st["raft_state"].as_str().unwrap_or("");
        assert!(["leader", "follower"].contains(&state), "{st}");
        assert!(st["raft_term"].as_u64().is_some_and(|t| t >= 1), "{st}");
        assert!(
            st["raft_commit_index"].as_u64().is_some_and(|i| i >= 1),
            "{st}"
        );
    }
    eprintln!(
        "errors: leader {} {}",
        nodes[leader].node_name(),
        raft_status(&nodes[leader]).await.unwrap()
    );

    // PurgeClusterNode: a live member, this node itself, a stranger.
    for (target, want_status, want_type) in [
        (names[1].clone(), 409, "node_is_alive"),
        (names[0].clone(), 409, "node_is_alive"),
        (name(&net, 9), 400, "unknown_node"),
        ("no-at-sign".to_string(), 400, "invalid_node_name"),
    ] {
        let (status, body) = nodes[0]
            .api_within(PURGE, json!({"target_node_name": target}), CLUSTER_OP_WAIT)
            .await
            .unwrap();
        assert_eq!(status, want_status, "purge {target}: {body}");
        assert_eq!(body["error_type"], want_type, "purge {target}: {body}");
    }
    // Missing parameter.
    let (status, body) = nodes[0].api(PURGE, json!({})).await.unwrap();
    assert_eq!(status, 400, "{body}");

    // Node 3 joins through node 2 (a follower or the leader alike).
    let (status, body) = nodes[2]
        .api_within(
            JOIN,
            json!({"contact_node_name": names[1]}),
            CLUSTER_OP_WAIT,
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["node_name_list"], json!(names), "{body}");
    // Joining twice is refused, under either of Sora's names for the call.
    for target in [JOIN, "Sora_20211215.RegisterClusterNode"] {
        let (status, body) = nodes[2]
            .api_within(
                target,
                json!({"contact_node_name": names[0]}),
                CLUSTER_OP_WAIT,
            )
            .await
            .unwrap();
        assert_eq!(status, 409, "second {target}: {body}");
        assert_eq!(body["error_type"], "already_initialized", "{body}");
    }
}

/// Two nodes with the same ordinary license (max_nodes 1): InitCluster fails
/// with `license_violation` naming both, and no cluster is formed.
#[tokio::test]
async fn same_license_on_two_nodes_is_a_violation() {
    let net = TestNet::new("cluster_license");
    let dir = TempDir::new("cluster-license").unwrap();
    let license = dir.path().join("license.json");
    std::fs::write(
        &license,
        json!({
            "type": "Standard",
            "serial_code": "E2E-SHARED-0001",
            "max_connections": 50,
            "max_nodes": 1,
            "expired_at": "2099-12-31",
        })
        .to_string(),
    )
    .unwrap();
    let lic = license.display().to_string();
    let opts = (1..=2)
        .map(|n| cluster_options(&net, n, &[1, 2]).with("license_file", &lic))
        .collect();
    let nodes = start_nodes(opts, false).await;
    let names = [name(&net, 1), name(&net, 2)];
    let (status, body) = nodes[0]
        .api_within(INIT, json!({"node_name_list": names}), CLUSTER_OP_WAIT)
        .await
        .unwrap();
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error_type"], "license_violation", "{body}");
    let reason = body["error_reason"].as_str().unwrap_or("");
    for n in &names {
        assert!(reason.contains(n.as_str()), "{n} not named in {body}");
    }
    for node in &nodes {
        let (status, body) = node.api(LIST_NODES, Value::Null).await.unwrap();
        assert_eq!(
            status,
            409,
            "{} after the violation: {body}",
            node.node_name()
        );
        let st = raft_status(node).await.unwrap();
        assert_eq!(st["raft_state"], "uninitialized", "{st}");
    }
    // The license itself is in force on each node.
    let lic = nodes[0]
        .api_ok("Sora_20171218.GetLicense", Value::Null)
        .await
        .unwrap();
    assert!(lic.to_string().contains("E2E-SHARED-0001"), "{lic}");
}

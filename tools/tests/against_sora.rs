//! Drives the real `sora` binary with `tools::client`.
//!
//! The binary is `$SORA_BIN`, else `<workspace>/target/debug/sora`, else
//! `<workspace>/target/release/sora`. Each test has its own loopback address
//! and ports, so tests run in parallel. Tests wait on conditions with
//! deadlines; on failure the node's log is printed.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use tools::client::{Client, ClientOptions, Role, SendPlan};

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tools is one level below the root")
        .to_path_buf()
}

fn sora_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("SORA_BIN").filter(|v| !v.is_empty()) {
        return PathBuf::from(p);
    }
    let root = workspace_root();
    let debug = root.join("target/debug/sora");
    if debug.exists() {
        debug
    } else {
        root.join("target/release/sora")
    }
}

/// A `sora start` process on its own loopback address.
struct Sora {
    child: Child,
    dir: PathBuf,
    ip: IpAddr,
    signaling_port: u16,
    api_port: u16,
}

impl Sora {
    async fn start(
        ip: &str,
        signaling_port: u16,
        api_port: u16,
        media_port: u16,
    ) -> anyhow::Result<Sora> {
        let ip: IpAddr = ip.parse()?;
        let dir = std::env::temp_dir().join(format!("tools-e2e-{ip}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("data"))?;
        let conf = format!(
            "node_name = sora@{ip}\nlisten_address = {ip}\nsignaling_port = {signaling_port}\n\
api_port = {api_port}\nmedia_port = {media_port}\ndata_dir = {}\ndataplane_cores = 1\nlog_level = debug\n",
            dir.join("data").display()
        );
        std::fs::write(dir.join("sora.conf"), conf)?;
        let log = std::fs::File::create(dir.join("sora.log"))?;
        let bin = sora_bin();
        let child = Command::new(&bin)
            .arg("start")
            .arg("--config")
            .arg(dir.join("sora.conf"))
            .current_dir(&dir)
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut node = Sora {
            child,
            dir,
            ip,
            signaling_port,
            api_port,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        for port in [signaling_port, api_port] {
            loop {
                if let Some(status) = node.child.try_wait()? {
                    bail!(
                        "sora exited with {status} before serving:\n{}",
                        node.log_tail(60)
                    );
                }
                if tokio::net::TcpStream::connect(SocketAddr::new(ip, port))
                    .await
                    .is_ok()
                {
                    break;
                }
                if Instant::now() > deadline {
                    bail!(
                        "sora did not listen on {ip}:{port} within 20 s:\n{}",
                        node.log_tail(60)
                    );
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(node)
    }

    fn url(&self) -> String {
        format!("ws://{}:{}/signaling", self.ip, self.signaling_port)
    }

    fn api(&self) -> String {
        format!("http://{}:{}", self.ip, self.api_port)
    }

    fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(self.dir.join("sora.log")).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Sora {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("sora log kept in {}", self.dir.display());
        }
    }
}

/// Runs `f`; on error adds the node's log and its stats report.
async fn with_log<F, T>(node: &Sora, f: F) -> T
where
    F: std::future::Future<Output = anyhow::Result<T>>,
{
    match f.await {
        Ok(v) => v,
        Err(e) => {
            let stats = tools::api::call(
                &node.api(),
                "Sora_20171010.GetStatsReport",
                &serde_json::json!({}),
            )
            .await
            .map(|v| v.to_string())
            .unwrap_or_else(|e| format!("(no stats: {e})"));
            panic!(
                "{e:#}\n--- GetStatsReport ---\n{stats}\n--- sora log (tail) ---\n{}",
                node.log_tail(120)
            );
        }
    }
}

fn opts(node: &Sora, role: Role, channel: &str) -> ClientOptions {
    let mut o = ClientOptions::new(node.url(), role, channel);
    o.video_codec = Some("VP8".into());
    o.audio = true;
    o
}

const T: Duration = Duration::from_secs(15);

/// Early subscribers get a re-offer when the publisher comes up, a late one
/// finds the publisher in its first offer; all receive the publisher's
/// packets under the SSRCs their offers announce.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publisher_and_subscribers_exchange_media() {
    let node = Sora::start("127.0.0.61", 15061, 13061, 50061)
        .await
        .expect("sora starts");
    with_log(&node, async {
        let ch = "tools-e2e-media";
        let sub1 = Client::connect(opts(&node, Role::RecvOnly, ch)).await?;
        let sub2 = Client::connect(opts(&node, Role::RecvOnly, ch)).await?;
        sub1.wait_established(T).await.context("sub1")?;
        sub2.wait_established(T).await.context("sub2")?;
        assert!(sub1.state().remote_tracks().is_empty(), "no publisher yet");

        let mut publisher = Client::connect(opts(&node, Role::SendOnly, ch)).await?;
        let pst = publisher.wait_established(T).await.context("publisher")?;
        let pub_id = pst.connection_id.clone().expect("connection_id");
        assert_eq!(
            pst.send_tracks.len(),
            2,
            "audio and video upstream: {:?}",
            pst.send_tracks
        );

        // The early subscribers are re-offered the publisher's tracks.
        for (name, sub) in [("sub1", &sub1), ("sub2", &sub2)] {
            let st = sub
                .wait_for(&format!("{name} re-offer with the publisher"), T, |_, s| {
                    s.reoffers >= 1
                        && s.remote_tracks()
                            .iter()
                            .filter(|t| t.stream_id == pub_id)
                            .count()
                            == 2
                })
                .await?;
            assert!(st.reanswers >= 1);
        }

        // A late subscriber finds the publisher in its first offer.
        let sub3 = Client::connect(opts(&node, Role::RecvOnly, ch)).await?;
        let st3 = sub3.state();
        assert_eq!(st3.offers, 1);
        let late_tracks: Vec<_> = st3
            .remote_tracks()
            .into_iter()
            .filter(|t| t.stream_id == pub_id)
            .collect();
        assert_eq!(
            late_tracks.len(),
            2,
            "late subscriber's offer: {:?}",
            st3.remote_tracks()
        );
        sub3.wait_established(T).await.context("sub3")?;

        // Send 3 s of media at 100 packets/s per track.
        publisher.start_sending(SendPlan {
            pps: 100,
            size: 1000,
        });
        let sent = publisher
            .wait_for("300 packets per track sent", T, |c, _| {
                let s = c.sent_stats();
                s.len() == 2 && s.values().all(|t| t.packets >= 300)
            })
            .await?;
        publisher.stop_sending();
        let sent: u64 = sent.sent.values().map(|t| t.packets).min().unwrap_or(0);
        // The publisher is asked for a key frame when subscribers are added.
        publisher
            .wait_for("a PLI at the publisher", T, |c, _| c.rtcp_stats().pli >= 1)
            .await?;

        for (name, sub) in [("sub1", &sub1), ("sub2", &sub2), ("sub3", &sub3)] {
            let announced: Vec<u32> = sub
                .state()
                .remote_tracks()
                .iter()
                .filter(|t| t.stream_id == pub_id)
                .map(|t| t.ssrc)
                .collect();
            let want = sent * 9 / 10;
            sub.wait_for(
                &format!("{name} receives ≥90% of {sent} packets per track"),
                T,
                |c, _| {
                    let r = c.recv_stats();
                    announced
                        .iter()
                        .all(|s| r.get(s).is_some_and(|t| t.packets >= want))
                },
            )
            .await?;
            let r = sub.recv_stats();
            let unknown: Vec<&u32> = r.keys().filter(|s| !announced.contains(s)).collect();
            assert!(
                unknown.is_empty(),
                "{name} got SSRCs {unknown:?} not announced in {announced:?}"
            );
            let sent_ssrcs: Vec<u32> = publisher.sent_stats().keys().copied().collect();
            for s in &announced {
                assert!(
                    !sent_ssrcs.contains(s),
                    "{name}: SSRC {s} was not rewritten"
                );
                assert!(r[s].marked > 0, "{name}: payload marker lost");
            }
        }

        let closed = sub3.close().await;
        assert_eq!(
            closed.map(|c| (c.code, c.reason)),
            Some((1000, "TYPE-DISCONNECT".to_owned()))
        );
        let closed = publisher.close().await;
        assert_eq!(closed.map(|c| c.code), Some(1000));
        // The publisher left: the remaining subscribers are re-offered its
        // m-lines as inactive.
        sub1.wait_for("re-offer without the publisher", T, |_, s| {
            s.remote_tracks().iter().all(|t| t.stream_id != pub_id)
        })
        .await?;
        Ok(())
    })
    .await;
}

/// Feedback from a subscriber reaches the publisher (PLI) or is answered
/// from the retransmission buffer (NACK); ping gets pong and an invalid
/// message is refused with a reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feedback_and_signaling_details() {
    let node = Sora::start("127.0.0.62", 15062, 13062, 50062)
        .await
        .expect("sora starts");
    with_log(&node, async {
        let ch = "tools-e2e-feedback";
        let mut o = opts(&node, Role::SendOnly, ch);
        o.audio = false;
        let mut publisher = Client::connect(o).await?;
        publisher.wait_established(T).await.context("publisher")?;
        let mut o = opts(&node, Role::RecvOnly, ch);
        o.srtp_profiles = vec![tools::SrtpProfile::Aes128CmHmacSha1_80];
        let sub = Client::connect(o).await?;
        let st = sub.wait_established(T).await.context("subscriber")?;
        assert_eq!(
            st.srtp_profile,
            Some(tools::SrtpProfile::Aes128CmHmacSha1_80)
        );
        let track = st
            .remote_tracks()
            .first()
            .cloned()
            .context("forwarded track in the offer")?;

        publisher.start_sending(SendPlan { pps: 50, size: 200 });
        sub.wait_for("first packets", T, |c, _| {
            c.recv_stats()
                .get(&track.ssrc)
                .is_some_and(|t| t.packets >= 10)
        })
        .await?;
        let plis = publisher.rtcp_stats().pli;
        sub.send_pli(track.ssrc)?;
        publisher
            .wait_for("the subscriber's PLI at the publisher", T, |c, _| {
                c.rtcp_stats().pli > plis
            })
            .await?;

        // NACK a packet that was received: the retransmission arrives as a duplicate.
        let highest = sub.recv_stats()[&track.ssrc].highest_ext_seq as u16;
        let dups = sub.recv_stats()[&track.ssrc].duplicates;
        sub.send_nack(track.ssrc, &[highest.wrapping_sub(2)])?;
        sub.wait_for("retransmission", T, |c, _| {
            c.recv_stats()[&track.ssrc].duplicates > dups
        })
        .await?;

        sub.wait_for("notify connection.created", T, |_, s| {
            !s.notifications_of("connection.created").is_empty()
        })
        .await?;
        sub.send_signaling(serde_json::json!({"type": "bogus"}))?;
        let st = sub
            .wait_for("close after an unknown type", T, |_, s| s.closed.is_some())
            .await;
        let closed = match st {
            Ok(s) => s.closed,
            Err(_) => sub.state().closed,
        }
        .context("closed")?;
        assert_eq!(closed.code, 4400, "{closed:?}");
        assert!(closed.reason.starts_with("UNKNOWN-TYPE"), "{closed:?}");
        publisher.stop_sending();
        Ok(())
    })
    .await;
}

/// Two `sendrecv` clients each receive the other's tracks and not their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sendrecv_clients_see_each_other() {
    let node = Sora::start("127.0.0.65", 15065, 13065, 50065)
        .await
        .expect("sora starts");
    with_log(&node, async {
        let ch = "tools-e2e-sendrecv";
        let mut a = Client::connect(opts(&node, Role::SendRecv, ch)).await?;
        a.wait_established(T).await.context("a")?;
        let mut b = Client::connect(opts(&node, Role::SendRecv, ch)).await?;
        b.wait_established(T).await.context("b")?;
        let (a_id, b_id) = (
            a.connection_id().context("a id")?,
            b.connection_id().context("b id")?,
        );
        assert_eq!(
            b.state()
                .remote_tracks()
                .iter()
                .filter(|t| t.stream_id == a_id)
                .count(),
            2
        );
        a.wait_for("a re-offered b's tracks", T, |_, s| {
            s.remote_tracks()
                .iter()
                .filter(|t| t.stream_id == b_id)
                .count()
                == 2
        })
        .await?;
        a.start_sending(SendPlan { pps: 50, size: 300 });
        b.start_sending(SendPlan { pps: 50, size: 300 });
        for (name, c, other) in [("a", &a, &b_id), ("b", &b, &a_id)] {
            let ssrcs: Vec<u32> = c
                .state()
                .remote_tracks()
                .iter()
                .filter(|t| &t.stream_id == other)
                .map(|t| t.ssrc)
                .collect();
            c.wait_for(
                &format!("{name} receives 50 packets per track"),
                T,
                |c, _| {
                    let r = c.recv_stats();
                    ssrcs
                        .iter()
                        .all(|s| r.get(s).is_some_and(|t| t.packets >= 50))
                },
            )
            .await?;
            let unknown: Vec<u32> = c
                .recv_stats()
                .keys()
                .copied()
                .filter(|s| !ssrcs.contains(s))
                .collect();
            assert!(
                unknown.is_empty(),
                "{name} got SSRCs {unknown:?} besides the other's {ssrcs:?}"
            );
        }
        a.stop_sending();
        b.stop_sending();
        Ok(())
    })
    .await;
}

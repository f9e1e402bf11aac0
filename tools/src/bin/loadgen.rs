//! Load generator: publishers and subscribers in one channel, RTP at a fixed
//! rate, a JSON report of what was sent, received and forwarded.
//!
//! ```text
//! loadgen --url ws://127.0.0.1:5000/signaling --channel c --publishers 1 \
//!         --subscribers 10 --pps 100 --size 1000 --duration 20s \
//!         [--api http://127.0.0.1:3000] [--server-pid PID] [--audio] \
//!         [--codec VP8] [--concurrency 16] [--srtp gcm|cm]
//! ```

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use serde_json::{json, Value};
use tools::client::{Client, ClientOptions, Role, SendPlan, SrtpProfile};

#[derive(Debug, Clone)]
struct Args {
    url: String,
    channel: String,
    publishers: usize,
    subscribers: usize,
    pps: u32,
    size: usize,
    duration: Duration,
    api: Option<String>,
    server_pid: Option<u32>,
    audio: bool,
    codec: String,
    concurrency: usize,
    srtp: Vec<SrtpProfile>,
    establish_timeout: Duration,
}

const USAGE: &str = "usage: loadgen --url ws://HOST:PORT/signaling [--channel C] [--publishers N] \
[--subscribers N] [--pps N] [--size BYTES] [--duration 20s] [--api http://HOST:PORT] \
[--server-pid PID] [--audio] [--codec VP8] [--concurrency N] [--srtp gcm|cm] [--establish-timeout 30s]";

/// `20s`, `500ms`, `2m` or plain seconds.
fn parse_duration(s: &str) -> anyhow::Result<Duration> {
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: f64 = num.parse().with_context(|| format!("bad duration {s:?}"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => bail!("bad duration unit in {s:?} (ms, s or m)"),
    };
    Ok(Duration::from_secs_f64(secs))
}

fn parse_args(mut it: impl Iterator<Item = String>) -> anyhow::Result<Args> {
    let mut a = Args {
        url: String::new(),
        channel: "loadgen".into(),
        publishers: 1,
        subscribers: 1,
        pps: 100,
        size: 1000,
        duration: Duration::from_secs(20),
        api: None,
        server_pid: None,
        audio: false,
        codec: "VP8".into(),
        concurrency: 16,
        srtp: vec![SrtpProfile::AeadAes128Gcm, SrtpProfile::Aes128CmHmacSha1_80],
        establish_timeout: Duration::from_secs(30),
    };
    while let Some(flag) = it.next() {
        if flag == "--audio" {
            a.audio = true;
            continue;
        }
        if flag == "-h" || flag == "--help" {
            println!("{USAGE}");
            std::process::exit(0);
        }
        let v = it
            .next()
            .ok_or_else(|| anyhow!("{flag} needs a value\n{USAGE}"))?;
        match flag.as_str() {
            "--url" => a.url = v,
            "--channel" => a.channel = v,
            "--publishers" => a.publishers = v.parse()?,
            "--subscribers" => a.subscribers = v.parse()?,
            "--pps" => a.pps = v.parse()?,
            "--size" => a.size = v.parse()?,
            "--duration" => a.duration = parse_duration(&v)?,
            "--api" => a.api = Some(v.trim_end_matches('/').to_owned()),
            "--server-pid" => a.server_pid = Some(v.parse()?),
            "--codec" => a.codec = v,
            "--concurrency" => a.concurrency = v.parse::<usize>()?.max(1),
            "--establish-timeout" => a.establish_timeout = parse_duration(&v)?,
            "--srtp" => {
                a.srtp = match v.as_str() {
                    "gcm" => vec![SrtpProfile::AeadAes128Gcm],
                    "cm" => vec![SrtpProfile::Aes128CmHmacSha1_80],
                    _ => bail!("--srtp is gcm or cm"),
                }
            }
            _ => bail!("unknown flag {flag}\n{USAGE}"),
        }
    }
    if a.url.is_empty() {
        bail!("--url is required\n{USAGE}");
    }
    Ok(a)
}

/// Connects `n` clients of `role`, at most `concurrency` at a time.
async fn connect_all(args: &Args, role: Role, n: usize) -> anyhow::Result<Vec<Client>> {
    let mut out = Vec::with_capacity(n);
    let mut i = 0;
    while i < n {
        let batch = (n - i).min(args.concurrency);
        let mut set = tokio::task::JoinSet::new();
        for k in 0..batch {
            let mut o = ClientOptions::new(args.url.clone(), role, args.channel.clone());
            o.video_codec = Some(args.codec.clone());
            o.audio = args.audio;
            o.srtp_profiles = args.srtp.clone();
            o.client_id = Some(format!("loadgen-{}-{}", role.as_str(), i + k));
            let timeout = args.establish_timeout;
            set.spawn(async move {
                let c = Client::connect(o).await?;
                c.wait_established(timeout).await?;
                anyhow::Ok(c)
            });
        }
        while let Some(r) = set.join_next().await {
            out.push(r??);
        }
        i += batch;
    }
    Ok(out)
}

async fn forwarded(api: &Option<String>) -> Option<u64> {
    match api {
        Some(base) => match tools::api::dataplane_counter(base, "rtp_forwarded").await {
            Ok(v) => Some(v),
            Err(e) => {
                eprintln!("loadgen: GetStatsReport: {e:#}");
                None
            }
        },
        None => None,
    }
}

fn cpu(pid: Option<u32>) -> Option<f64> {
    pid.and_then(|p| tools::procstat::cpu_seconds(p).ok())
}

async fn run(args: Args) -> anyhow::Result<Value> {
    let t0 = Instant::now();
    // Publishers first: subscribers then find them in their first offer.
    let mut pubs = connect_all(&args, Role::SendOnly, args.publishers)
        .await
        .context("publishers")?;
    let pub_ids: Vec<String> = pubs.iter().filter_map(Client::connection_id).collect();
    let tracks_per_pub = pubs
        .first()
        .map(|p| p.state().send_tracks.len())
        .unwrap_or(0);
    let subs = connect_all(&args, Role::RecvOnly, args.subscribers)
        .await
        .context("subscribers")?;
    let want_tracks = pub_ids.len() * tracks_per_pub;
    for (i, s) in subs.iter().enumerate() {
        s.wait_for(
            "every publisher's tracks offered",
            args.establish_timeout,
            |_, st| {
                st.remote_tracks()
                    .iter()
                    .filter(|t| pub_ids.contains(&t.stream_id))
                    .count()
                    >= want_tracks
            },
        )
        .await
        .with_context(|| format!("subscriber {i}"))?;
    }
    let setup_s = t0.elapsed().as_secs_f64();

    let fwd0 = forwarded(&args.api).await;
    let cpu0 = cpu(args.server_pid);
    let self0 = cpu(Some(std::process::id()));
    let udp0 = tools::procstat::udp_buffer_errors().ok();
    let start = Instant::now();
    for p in pubs.iter_mut() {
        p.start_sending(SendPlan {
            pps: args.pps,
            size: args.size,
        });
    }
    tokio::time::sleep(args.duration).await;
    for p in pubs.iter_mut() {
        p.stop_sending();
    }
    let send_s = start.elapsed().as_secs_f64();
    // Let what is in flight arrive: until the counts stop moving for 300 ms (at most 3 s).
    let total_recv = |subs: &[Client]| -> u64 {
        subs.iter()
            .map(|s| s.recv_stats().values().map(|t| t.packets).sum::<u64>())
            .sum()
    };
    let drain_deadline = Instant::now() + Duration::from_secs(3);
    let mut last = total_recv(&subs);
    while Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = total_recv(&subs);
        if now == last {
            break;
        }
        last = now;
    }
    let elapsed_s = start.elapsed().as_secs_f64();
    let fwd1 = forwarded(&args.api).await;
    let cpu1 = cpu(args.server_pid);
    let self1 = cpu(Some(std::process::id()));
    let udp1 = tools::procstat::udp_buffer_errors().ok();

    let mut sent_by_ssrc: BTreeMap<u32, u64> = BTreeMap::new();
    for p in &pubs {
        for (ssrc, s) in p.sent_stats() {
            *sent_by_ssrc.entry(ssrc).or_default() += s.packets;
        }
    }
    let sent_total: u64 = sent_by_ssrc.values().sum();
    let mut sub_reports = Vec::new();
    let (mut recv_total, mut lat_sum, mut lat_n, mut lat_max) = (0u64, 0u64, 0u64, 0u64);
    for (i, s) in subs.iter().enumerate() {
        let st = s.state();
        let r = s.recv_stats();
        let announced: Vec<u32> = st
            .remote_tracks()
            .iter()
            .filter(|t| pub_ids.contains(&t.stream_id))
            .map(|t| t.ssrc)
            .collect();
        let packets: u64 = announced
            .iter()
            .filter_map(|x| r.get(x))
            .map(|t| t.packets - t.duplicates)
            .sum();
        let gaps: u64 = r.values().map(|t| t.gaps).sum();
        let missing: u64 = r.values().map(|t| t.missing).sum();
        for t in r.values() {
            lat_sum += t.latency_sum_us;
            lat_n += t.marked;
            lat_max = lat_max.max(t.latency_max_us);
        }
        recv_total += packets;
        let (undecryptable, _) = s.recv_errors();
        sub_reports.push(json!({
            "index": i,
            "packets": packets,
            "loss": if sent_total > 0 { 1.0 - packets as f64 / sent_total as f64 } else { 0.0 },
            "gaps": gaps,
            "missing": missing,
            "undecryptable": undecryptable,
            "srtp": st.srtp_profile,
        }));
    }
    let expected = sent_total * subs.len() as u64;
    let forwarded_delta = match (fwd0, fwd1) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a)),
        _ => None,
    };
    let server_cpu = match (cpu0, cpu1) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    let per_cpu = match (forwarded_delta, server_cpu) {
        (Some(f), Some(c)) if c > 0.0 => Some(f as f64 / c),
        _ => None,
    };
    let mut report = json!({
        "config": {
            "url": args.url, "channel": args.channel, "publishers": args.publishers,
            "subscribers": args.subscribers, "pps_per_track": args.pps, "size": args.size,
            "duration_s": args.duration.as_secs_f64(), "audio": args.audio, "codec": args.codec,
            "tracks_per_publisher": tracks_per_pub,
        },
        "setup_s": setup_s,
        "send_s": send_s,
        "packets_sent": sent_total,
        "packets_expected": expected,
        "packets_received": recv_total,
        "loss": if expected > 0 { 1.0 - recv_total as f64 / expected as f64 } else { 0.0 },
        "received_pps": recv_total as f64 / send_s,
        "latency_mean_ms": if lat_n > 0 { lat_sum as f64 / lat_n as f64 / 1000.0 } else { 0.0 },
        "latency_max_ms": lat_max as f64 / 1000.0,
        "subscribers": sub_reports,
        "loadgen_cpu_s": match (self0, self1) { (Some(a), Some(b)) => json!(b - a), _ => Value::Null },
    });
    if let (Some((r0, s0)), Some((r1, s1))) = (udp0, udp1) {
        // Host-wide: drops at any socket, the server's or these clients'.
        report["host_udp_rcvbuf_errors"] = json!(r1 - r0);
        report["host_udp_sndbuf_errors"] = json!(s1 - s0);
    }
    if let Some(f) = forwarded_delta {
        report["server_rtp_forwarded"] = json!(f);
        report["server_forwarded_pps"] = json!(f as f64 / send_s);
    }
    if let Some(c) = server_cpu {
        report["server_cpu_s"] = json!(c);
        report["server_cpu_util"] = json!(c / elapsed_s);
    }
    if let Some(p) = per_cpu {
        report["forwarded_per_cpu_s"] = json!(p);
    }
    for c in subs.into_iter().chain(pubs) {
        let _ = c.close().await;
    }
    Ok(report)
}

fn main() -> anyhow::Result<()> {
    let args = parse_args(std::env::args().skip(1))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let report = rt.block_on(run(args))?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("20s").unwrap(), Duration::from_secs(20));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert!(parse_duration("3h").is_err());
    }

    #[test]
    fn args() {
        let a = parse_args(
            "--url ws://x/signaling --subscribers 5 --pps 200 --duration 1s --audio --srtp cm --server-pid 7"
                .split(' ')
                .map(str::to_owned),
        )
        .unwrap();
        assert_eq!(
            (a.subscribers, a.pps, a.audio, a.server_pid),
            (5, 200, true, Some(7))
        );
        assert_eq!(a.srtp, vec![SrtpProfile::Aes128CmHmacSha1_80]);
        assert!(parse_args(std::iter::empty()).is_err());
    }
}

//! CPU time of a process from `/proc/<pid>/stat`.

use anyhow::{anyhow, Context as _};

/// `utime + stime` of `pid` in seconds.
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    let (utime, stime) = parse_stat(&text)?;
    Ok((utime + stime) as f64 / clock_ticks() as f64)
}

/// `(utime, stime)` in clock ticks from the text of `/proc/<pid>/stat`.
pub fn parse_stat(text: &str) -> anyhow::Result<(u64, u64)> {
    // The command name (field 2) is in parentheses and may hold spaces.
    let rest = &text[text.rfind(')').ok_or_else(|| anyhow!("no ')' in stat"))? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, utime field 14, stime field 15.
    let get = |i: usize| -> anyhow::Result<u64> {
        f.get(i - 3)
            .ok_or_else(|| anyhow!("stat has no field {i}"))?
            .parse()
            .with_context(|| format!("stat field {i}"))
    };
    Ok((get(14)?, get(15)?))
}

/// The host's `Udp: RcvbufErrors` and `Udp: SndbufErrors` from
/// `/proc/net/snmp`: datagrams dropped because a socket buffer was full.
pub fn udp_buffer_errors() -> anyhow::Result<(u64, u64)> {
    parse_snmp_udp(&std::fs::read_to_string("/proc/net/snmp")?)
}

/// `(RcvbufErrors, SndbufErrors)` from the text of `/proc/net/snmp`.
pub fn parse_snmp_udp(text: &str) -> anyhow::Result<(u64, u64)> {
    let mut udp = text.lines().filter(|l| l.starts_with("Udp:"));
    let names: Vec<&str> = udp
        .next()
        .ok_or_else(|| anyhow!("no Udp: header"))?
        .split_whitespace()
        .collect();
    let values: Vec<&str> = udp
        .next()
        .ok_or_else(|| anyhow!("no Udp: values"))?
        .split_whitespace()
        .collect();
    let get = |k: &str| -> anyhow::Result<u64> {
        let i = names
            .iter()
            .position(|n| *n == k)
            .ok_or_else(|| anyhow!("no Udp {k}"))?;
        Ok(values
            .get(i)
            .ok_or_else(|| anyhow!("no value for {k}"))?
            .parse()?)
    };
    Ok((get("RcvbufErrors")?, get("SndbufErrors")?))
}

fn clock_ticks() -> i64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t
    } else {
        100
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_line() {
        let s =
            "1234 (sora (x) y) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 9 0 100 0 0";
        assert_eq!(parse_stat(s).unwrap(), (250, 75));
        assert!(parse_stat("1 (x) S 1").is_err());
    }

    #[test]
    fn parses_snmp() {
        let t = "Ip: Forwarding\nIp: 1\nUdp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors\n\
Udp: 10 0 3 9 2 1\nUdpLite: InDatagrams\nUdpLite: 0\n";
        assert_eq!(parse_snmp_udp(t).unwrap(), (2, 1));
    }

    #[test]
    fn own_process_has_cpu_time() {
        let t = cpu_seconds(std::process::id()).unwrap();
        assert!(t >= 0.0);
    }
}

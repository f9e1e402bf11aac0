//! A minimal client of the node's HTTP API: `POST /` with `x-sora-target`.

use anyhow::{anyhow, bail, Context as _};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Posts `body` with `x-sora-target: <target>` to `base` (`http://host:port`)
/// and returns the JSON response. A non-2xx status is an error carrying the body.
pub async fn call(base: &str, target: &str, body: &Value) -> anyhow::Result<Value> {
    let rest = base
        .strip_prefix("http://")
        .ok_or_else(|| anyhow!("only http:// URLs: {base}"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let payload = body.to_string();
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {authority}\r\nx-sora-target: {target}\r\n\
content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{payload}",
        payload.len()
    );
    let mut s = TcpStream::connect(authority)
        .await
        .with_context(|| format!("connecting to {authority}"))?;
    s.write_all(req.as_bytes()).await?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await?;
    let (status, body) = parse_response(&raw)?;
    if !(200..300).contains(&status) {
        bail!(
            "{target}: HTTP {status}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    if body.is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_slice(&body).with_context(|| format!("{target}: response is not JSON"))
}

/// Status and body of an HTTP/1.1 response (Content-Length, chunked, or to EOF).
pub fn parse_response(raw: &[u8]) -> anyhow::Result<(u16, Vec<u8>)> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| anyhow!("no end of HTTP headers"))?;
    let head = std::str::from_utf8(&raw[..end])?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .ok_or_else(|| anyhow!("bad status line {status_line:?}"))?
        .parse()?;
    let mut chunked = false;
    let mut length = None;
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
            if k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked") {
                chunked = true;
            } else if k == "content-length" {
                length = v.parse::<usize>().ok();
            }
        }
    }
    let body = &raw[end + 4..];
    if chunked {
        let mut out = Vec::new();
        let mut at = 0;
        loop {
            let nl = body[at..]
                .windows(2)
                .position(|w| w == b"\r\n")
                .ok_or_else(|| anyhow!("truncated chunk header"))?;
            let size_txt = std::str::from_utf8(&body[at..at + nl])?;
            let size = usize::from_str_radix(size_txt.split(';').next().unwrap_or("").trim(), 16)?;
            at += nl + 2;
            if size == 0 {
                break;
            }
            out.extend_from_slice(
                body.get(at..at + size)
                    .ok_or_else(|| anyhow!("truncated chunk"))?,
            );
            at += size + 2;
        }
        return Ok((status, out));
    }
    Ok((
        status,
        match length {
            Some(n) => body
                .get(..n)
                .ok_or_else(|| anyhow!("truncated body"))?
                .to_vec(),
            None => body.to_vec(),
        },
    ))
}

/// `dataplane.<key>` of `GetStatsReport`.
pub async fn dataplane_counter(base: &str, key: &str) -> anyhow::Result<u64> {
    let v = call(base, "Sora_20171010.GetStatsReport", &serde_json::json!({})).await?;
    v.get("dataplane")
        .and_then(|d| d.get(key))
        .and_then(Value::as_u64)
        .ok_or_else(|| anyhow!("GetStatsReport has no dataplane.{key}: {v}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_and_chunked() {
        let r = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}";
        assert_eq!(parse_response(r).unwrap(), (200, b"{}".to_vec()));
        let r = b"HTTP/1.1 400 Bad\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{\"a\r\n4\r\n\":1}\r\n0\r\n\r\n";
        assert_eq!(parse_response(r).unwrap(), (400, b"{\"a\":1}".to_vec()));
        assert!(parse_response(b"HTTP/1.1 200").is_err());
    }
}

//! A bare signaling WebSocket, for what the SDKs never send: malformed JSON,
//! unknown message types, out-of-range fields.

use anyhow::{bail, Context};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// What the server did next.
#[derive(Debug, Clone, PartialEq)]
pub enum Received {
    /// A text frame that parsed as JSON.
    Json(Value),
    /// A text frame that is not JSON (a protocol error on the server's side).
    Text(String),
    Binary(Vec<u8>),
    /// A close frame: code and reason (1005 and "" when it had no payload).
    Close(u16, String),
    /// The TCP connection ended without a close frame.
    Ended,
}

pub struct RawSignaling {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl RawSignaling {
    pub async fn connect(url: &str) -> anyhow::Result<RawSignaling> {
        let (ws, _resp) = tokio::time::timeout(
            Duration::from_secs(10),
            tokio_tungstenite::connect_async(url),
        )
        .await
        .with_context(|| format!("WebSocket handshake with {url} timed out"))?
        .with_context(|| format!("WebSocket handshake with {url}"))?;
        Ok(RawSignaling { ws })
    }

    pub async fn send_text(&mut self, text: &str) -> anyhow::Result<()> {
        self.ws.send(Message::text(text)).await?;
        Ok(())
    }

    pub async fn send_json(&mut self, v: &Value) -> anyhow::Result<()> {
        self.send_text(&v.to_string()).await
    }

    pub async fn send_binary(&mut self, data: &[u8]) -> anyhow::Result<()> {
        self.ws.send(Message::binary(data.to_vec())).await?;
        Ok(())
    }

    /// The next data or close frame (pings are answered and skipped).
    pub async fn recv(&mut self, timeout: Duration) -> anyhow::Result<Received> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let next = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .with_context(|| format!("nothing from the server within {timeout:?}"))?;
            let msg = match next {
                None => return Ok(Received::Ended),
                Some(Err(e)) => {
                    use tokio_tungstenite::tungstenite::Error;
                    return match e {
                        Error::ConnectionClosed | Error::AlreadyClosed => Ok(Received::Ended),
                        Error::Protocol(_) | Error::Io(_) => Ok(Received::Ended),
                        other => Err(other.into()),
                    };
                }
                Some(Ok(m)) => m,
            };
            return Ok(match msg {
                Message::Text(t) => match serde_json::from_str(t.as_str()) {
                    Ok(v) => Received::Json(v),
                    Err(_) => Received::Text(t.to_string()),
                },
                Message::Binary(b) => Received::Binary(b.to_vec()),
                Message::Close(Some(f)) => Received::Close(u16::from(f.code), f.reason.to_string()),
                Message::Close(None) => Received::Close(1005, String::new()),
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
            });
        }
    }

    /// Reads until the server closes; returns its close code and reason.
    /// JSON messages before the close are collected into `before`.
    pub async fn expect_close(
        &mut self,
        timeout: Duration,
    ) -> anyhow::Result<(u16, String, Vec<Value>)> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut before = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self
                .recv(left)
                .await
                .context("waiting for the server to close")?
            {
                Received::Close(code, reason) => return Ok((code, reason, before)),
                Received::Json(v) => before.push(v),
                Received::Ended => bail!("connection ended without a close frame; got {before:?}"),
                other => bail!("expected a close, got {other:?} (after {before:?})"),
            }
        }
    }

    /// Reads until a JSON message with `"type": ty` arrives (others skipped).
    pub async fn expect_type(&mut self, ty: &str, timeout: Duration) -> anyhow::Result<Value> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.recv(left).await? {
                Received::Json(v) if v["type"] == ty => return Ok(v),
                Received::Json(_) => continue,
                other => bail!("waiting for {ty:?}, got {other:?}"),
            }
        }
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}

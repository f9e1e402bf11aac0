//! Webhooks, as Sora's: the auth webhook is asked before a connection is
//! admitted; the session and event webhooks are told what happened.
//!
//! The auth webhook denies unless it answers 2xx with `{"allowed": true}` within
//! `webhook_response_timeout`. Session and event webhooks are delivered in order
//! by one worker per URL; a full queue drops the newest (counted, logged).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::config::Config;

/// Deliveries waiting per webhook before new ones are dropped.
const QUEUE: usize = 1024;

/// What the auth webhook decided.
#[derive(Debug, Clone, PartialEq)]
pub enum AuthDecision {
    Allowed {
        /// Given to the client in its `offer` as `metadata`.
        metadata: Option<Value>,
        client_id: Option<String>,
        bundle_id: Option<String>,
    },
    Denied(String),
}

struct Delivery {
    kind: &'static str,
    body: Value,
}

/// The node's webhooks. Cheap to clone.
#[derive(Clone)]
pub struct Webhooks {
    client: reqwest::Client,
    auth_url: Option<String>,
    timeout: Duration,
    session: Option<mpsc::Sender<Delivery>>,
    event: Option<mpsc::Sender<Delivery>>,
    pub dropped: Arc<AtomicU64>,
    pub failed: Arc<AtomicU64>,
    common: Value,
}

impl Webhooks {
    /// Builds the client and starts one delivery worker per configured URL.
    /// Must run inside a tokio runtime.
    pub fn new(config: &Config) -> anyhow::Result<Webhooks> {
        let client = reqwest::Client::builder()
            .timeout(config.webhook_response_timeout)
            .build()
            .map_err(|e| anyhow::anyhow!("cannot build the webhook HTTP client: {e}"))?;
        let failed = Arc::new(AtomicU64::new(0));
        let worker = |url: &Option<String>, header: &'static str| {
            url.as_ref().map(|u| {
                let (tx, rx) = mpsc::channel(QUEUE);
                tokio::spawn(deliver(
                    client.clone(),
                    u.clone(),
                    header,
                    rx,
                    failed.clone(),
                ));
                tx
            })
        };
        Ok(Webhooks {
            auth_url: config.auth_webhook_url.clone(),
            timeout: config.webhook_response_timeout,
            session: worker(&config.session_webhook_url, "sora-session-webhook-type"),
            event: worker(&config.event_webhook_url, "sora-event-webhook-type"),
            client,
            dropped: Arc::new(AtomicU64::new(0)),
            failed,
            common: json!({
                "label": config.label,
                "node_name": config.node_name,
                "version": env!("CARGO_PKG_VERSION"),
            }),
        })
    }

    fn stamp(&self, mut body: Value) -> Value {
        if let (Some(o), Some(c)) = (body.as_object_mut(), self.common.as_object()) {
            for (k, v) in c {
                o.entry(k.clone()).or_insert_with(|| v.clone());
            }
            o.insert("timestamp".into(), Value::String(rfc3339_now()));
            o.insert("id".into(), Value::String(crate::ids::new_connection_id()));
        }
        body
    }

    /// Asks the auth webhook; without one every connection is allowed.
    pub async fn authorize(&self, body: Value) -> AuthDecision {
        let Some(url) = &self.auth_url else {
            return AuthDecision::Allowed {
                metadata: None,
                client_id: None,
                bundle_id: None,
            };
        };
        let body = self.stamp(body);
        let resp = self
            .client
            .post(url)
            .header("sora-auth-webhook-type", "connect")
            .json(&body)
            .timeout(self.timeout)
            .send()
            .await;
        let resp = match resp {
            Ok(r) => r,
            Err(e) if e.is_timeout() => {
                return AuthDecision::Denied(format!(
                    "auth webhook did not answer within {:?}",
                    self.timeout
                ))
            }
            Err(e) => return AuthDecision::Denied(format!("auth webhook unreachable: {e}")),
        };
        let status = resp.status();
        if !status.is_success() {
            return AuthDecision::Denied(format!("auth webhook answered {status}"));
        }
        match resp.json::<Value>().await {
            Ok(v) => decide(&v),
            Err(e) => AuthDecision::Denied(format!("auth webhook answer is not JSON: {e}")),
        }
    }

    /// Queues an event webhook (`connection.created`, `connection.destroyed`, …).
    pub fn event(&self, kind: &'static str, body: Value) {
        self.queue(&self.event, kind, body);
    }

    /// Queues a session webhook (`session.created`, `session.destroyed`).
    pub fn session(&self, kind: &'static str, body: Value) {
        self.queue(&self.session, kind, body);
    }

    fn queue(&self, tx: &Option<mpsc::Sender<Delivery>>, kind: &'static str, mut body: Value) {
        let Some(tx) = tx else { return };
        body["type"] = Value::String(kind.to_owned());
        let body = self.stamp(body);
        if tx.try_send(Delivery { kind, body }).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(kind, "webhook queue full: delivery dropped");
        }
    }
}

/// Reads an auth webhook's JSON answer.
pub fn decide(v: &Value) -> AuthDecision {
    match v.get("allowed") {
        Some(Value::Bool(true)) => AuthDecision::Allowed {
            metadata: v.get("metadata").filter(|m| !m.is_null()).cloned(),
            client_id: v
                .get("client_id")
                .and_then(Value::as_str)
                .map(str::to_owned),
            bundle_id: v
                .get("bundle_id")
                .and_then(Value::as_str)
                .map(str::to_owned),
        },
        Some(Value::Bool(false)) => AuthDecision::Denied(
            v.get("reason")
                .and_then(Value::as_str)
                .unwrap_or("denied by the auth webhook")
                .to_owned(),
        ),
        _ => AuthDecision::Denied("auth webhook answer has no boolean \"allowed\"".to_owned()),
    }
}

async fn deliver(
    client: reqwest::Client,
    url: String,
    header: &'static str,
    mut rx: mpsc::Receiver<Delivery>,
    failed: Arc<AtomicU64>,
) {
    while let Some(d) = rx.recv().await {
        let r = client
            .post(&url)
            .header(header, d.kind)
            .json(&d.body)
            .send()
            .await;
        match r {
            Ok(resp) if resp.status().is_success() => {}
            Ok(resp) => {
                failed.fetch_add(1, Ordering::Relaxed);
                tracing::info!(kind = d.kind, status = %resp.status(), %url, "webhook refused");
            }
            Err(e) => {
                failed.fetch_add(1, Ordering::Relaxed);
                tracing::info!(kind = d.kind, error = %e, %url, "webhook failed");
            }
        }
    }
}

/// The current time as RFC 3339 UTC with milliseconds.
fn rfc3339_now() -> String {
    let d = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_answers() {
        assert_eq!(
            decide(&json!({"allowed": true})),
            AuthDecision::Allowed {
                metadata: None,
                client_id: None,
                bundle_id: None
            }
        );
        assert_eq!(
            decide(&json!({"allowed": true, "metadata": {"a": 1}, "client_id": "x"})),
            AuthDecision::Allowed {
                metadata: Some(json!({"a": 1})),
                client_id: Some("x".into()),
                bundle_id: None
            }
        );
        assert_eq!(
            decide(&json!({"allowed": false, "reason": "nope"})),
            AuthDecision::Denied("nope".into())
        );
        assert!(matches!(
            decide(&json!({"allowed": "yes"})),
            AuthDecision::Denied(_)
        ));
        assert!(matches!(decide(&json!([])), AuthDecision::Denied(_)));
    }

    #[test]
    fn timestamp_shape() {
        let t = rfc3339_now();
        assert_eq!(t.len(), 24, "{t}");
        assert!(t.starts_with("20") && t.ends_with('Z'));
        assert_eq!(&t[10..11], "T");
    }
}

//! The HTTP API: `POST /` with `x-sora-target: Sora_<date>.<Operation>`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// An API error as the client sees it: a status and
/// `{"error_type": "<snake_case>", "error_reason": "<human text>"}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub error_type: &'static str,
    pub error_reason: String,
}

impl ApiError {
    pub fn new(status: StatusCode, error_type: &'static str, reason: impl Into<String>) -> Self {
        ApiError {
            status,
            error_type,
            error_reason: reason.into(),
        }
    }
    /// 400: the request body is wrong; `reason` names the field.
    pub fn bad_request(error_type: &'static str, reason: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, error_type, reason)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error_type": self.error_type, "error_reason": self.error_reason});
        (self.status, axum::Json(body)).into_response()
    }
}

// ---------------------------------------------------------------------------
// Routing

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{State, WebSocketUpgrade};
use axum::http::{HeaderMap, HeaderValue, Method};
use axum::routing::{any, get};
use axum::Router;
use serde_json::Value;
use shared::{Command, CoreStats};

use crate::cluster::ClusterError;
use crate::node::Node;
use crate::signaling::{self, close};

/// The API router (`POST /` with `x-sora-target`, `OPTIONS /`).
pub fn app(node: Arc<Node>) -> Router {
    Router::new().route("/", any(api_entry)).with_state(node)
}

/// The signaling router (`GET /signaling`, WebSocket upgrade).
pub fn signaling_app(node: Arc<Node>) -> Router {
    Router::new()
        .route("/signaling", get(signaling_entry))
        .with_state(node)
}

async fn signaling_entry(State(node): State<Arc<Node>>, ws: WebSocketUpgrade) -> Response {
    ws.on_upgrade(move |socket| signaling::serve(node, socket))
}

fn cors(node: &Node, mut resp: Response) -> Response {
    let h = resp.headers_mut();
    let origin = HeaderValue::from_str(&node.config.api_cors_origin)
        .unwrap_or(HeaderValue::from_static("*"));
    h.insert("access-control-allow-origin", origin);
    h.insert(
        "access-control-allow-headers",
        HeaderValue::from_static("Origin, X-Requested-With, Content-Type, Accept, x-sora-target"),
    );
    h.insert(
        "access-control-allow-methods",
        HeaderValue::from_static("POST, OPTIONS"),
    );
    h.insert("access-control-max-age", HeaderValue::from_static("1000"));
    resp
}

async fn api_entry(
    State(node): State<Arc<Node>>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let resp = match method {
        Method::OPTIONS => StatusCode::OK.into_response(),
        Method::POST => match dispatch(&node, &headers, &body).await {
            Ok(v) => axum::Json(v).into_response(),
            Err(e) => e.into_response(),
        },
        other => ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("{other} is not supported: use POST / with an x-sora-target header"),
        )
        .into_response(),
    };
    cors(&node, resp)
}

/// Parses the body as a JSON object (an empty body is `{}`).
fn body_object(body: &[u8]) -> Result<serde_json::Map<String, Value>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(serde_json::Map::new());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(o)) => Ok(o),
        Ok(_) => Err(ApiError::bad_request(
            "invalid_json",
            "the request body must be a JSON object",
        )),
        Err(e) => Err(ApiError::bad_request(
            "invalid_json",
            format!("the request body is not JSON: {e}"),
        )),
    }
}

/// A required string field of the body.
pub fn field<'a>(
    body: &'a serde_json::Map<String, Value>,
    name: &str,
) -> Result<&'a str, ApiError> {
    match body.get(name) {
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(ApiError::bad_request(
            "invalid_parameter",
            format!("\"{name}\" must be a string"),
        )),
        None => Err(ApiError::bad_request(
            "missing_parameter",
            format!("\"{name}\" is required"),
        )),
    }
}

async fn dispatch(node: &Arc<Node>, headers: &HeaderMap, body: &[u8]) -> Result<Value, ApiError> {
    let target = headers
        .get("x-sora-target")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            ApiError::bad_request("missing_target", "the x-sora-target header is missing")
        })?;
    let op = target
        .strip_prefix("Sora_")
        .and_then(|rest| rest.split_once('.'))
        .filter(|(date, _)| date.len() == 8 && date.bytes().all(|b| b.is_ascii_digit()))
        .map(|(_, op)| op)
        .ok_or_else(|| unknown_target(target))?;
    let body = body_object(body)?;
    match op {
        "ListConnections" => Ok(list_connections(node, None)),
        "ListChannelConnections" => Ok(list_connections(node, Some(field(&body, "channel_id")?))),
        "DisconnectConnection" => {
            let channel_id = field(&body, "channel_id")?;
            let connection_id = field(&body, "connection_id")?;
            let n = node.close_connections(
                channel_id,
                Some(connection_id),
                close::NORMAL,
                "DISCONNECTED-API",
            );
            if n == 0 {
                return Err(ApiError::bad_request(
                    "connection_not_found",
                    format!("no connection {connection_id} in channel {channel_id}"),
                ));
            }
            Ok(serde_json::json!({}))
        }
        "DisconnectChannel" => {
            let channel_id = field(&body, "channel_id")?;
            node.close_connections(channel_id, None, close::NORMAL, "DISCONNECTED-API");
            Ok(serde_json::json!({}))
        }
        "RequestKeyFrame" => {
            let channel_id = field(&body, "channel_id")?;
            let connection_id = field(&body, "connection_id")?;
            let reg = node.registry();
            let m = reg.find(channel_id, connection_id).ok_or_else(|| {
                ApiError::bad_request(
                    "connection_not_found",
                    format!("no connection {connection_id} in channel {channel_id}"),
                )
            })?;
            let core = reg.channel_of(m.conn).map(|c| c.core).unwrap_or(0);
            node.media
                .sender(core)
                .send(Command::RequestKeyFrame { conn: m.conn });
            Ok(serde_json::json!({}))
        }
        "GetStatsReport" => Ok(stats_report(node)),
        "InitCluster"
        | "ListClusterNodes"
        | "ListClusterChannels"
        | "PurgeClusterNode"
        | "JoinCluster"
        | "RegisterClusterNode" => cluster_op(node, op, &body).await,
        "GetLicense" => Ok(serde_json::to_value(&node.license).unwrap_or(Value::Null)),
        _ => Err(unknown_target(target)),
    }
}

/// How long a cluster change may wait for its commit before the API answers
/// 503 `no_quorum` (the cluster itself retries for three election timeouts).
const CLUSTER_CHANGE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

async fn cluster_op(
    node: &Node,
    op: &str,
    body: &serde_json::Map<String, Value>,
) -> Result<Value, ApiError> {
    let cluster = node.cluster.as_ref().ok_or_else(|| {
        ApiError::bad_request(
            "cluster_disabled",
            format!("{op} needs cluster = true in sora.conf"),
        )
    })?;
    match op {
        "InitCluster" => {
            let list = body
                .get("node_name_list")
                .and_then(Value::as_array)
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "missing_parameter",
                        "\"node_name_list\" (array of node names) is required",
                    )
                })?;
            let mut names = Vec::new();
            for v in list {
                let s = v.as_str().ok_or_else(|| {
                    ApiError::bad_request(
                        "invalid_parameter",
                        "\"node_name_list\" must contain only strings",
                    )
                })?;
                names.push(s.to_owned());
            }
            cluster.init_cluster(names).await?;
            Ok(serde_json::json!({}))
        }
        "ListClusterNodes" => {
            Ok(serde_json::to_value(cluster.list_nodes().await?).unwrap_or(Value::Null))
        }
        "ListClusterChannels" => {
            Ok(serde_json::to_value(cluster.list_channels().await?).unwrap_or(Value::Null))
        }
        "PurgeClusterNode" => {
            let target = field(body, "target_node_name")?.to_owned();
            // Without a majority the change cannot commit, and a leader that
            // lost its majority would wait for the commit forever.
            if !cluster.has_quorum() {
                return Err(ClusterError::NoQuorum.into());
            }
            tokio::time::timeout(CLUSTER_CHANGE_TIMEOUT, cluster.purge_node(target.clone()))
                .await
                .map_err(|_| ApiError::from(ClusterError::NoQuorum))??;
            Ok(serde_json::json!({"target_node_name": target}))
        }
        _ => {
            let contact = field(body, "contact_node_name")?.to_owned();
            let members = cluster.join_cluster(contact).await?;
            Ok(serde_json::json!({"node_name_list": members}))
        }
    }
}

fn unknown_target(target: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "unknown_target",
        format!("unknown x-sora-target: {target}"),
    )
}

fn list_connections(node: &Node, channel: Option<&str>) -> Value {
    let reg = node.registry();
    let mut out = Vec::new();
    let mut ids: Vec<&String> = reg
        .channels
        .keys()
        .filter(|c| channel.is_none_or(|want| want == c.as_str()))
        .collect();
    ids.sort();
    for channel_id in ids {
        let ch = &reg.channels[channel_id];
        for m in ch.members.values() {
            let created = m
                .created_at
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let mut v = m.describe(channel_id);
            v["state"] = serde_json::json!(if m.established {
                "connected"
            } else {
                "connecting"
            });
            v["created_timestamp"] = serde_json::json!(created);
            v["node_name"] = serde_json::json!(node.config.node_name);
            out.push(v);
        }
    }
    Value::Array(out)
}

fn stats_report(node: &Node) -> Value {
    let media = node.media.stats();
    let mut total = CoreStats::default();
    for s in media.cores.values() {
        total.add(s);
    }
    total.dropped_bad_command += media.bad_events;
    let mut dataplane: serde_json::Map<String, Value> = total
        .counters()
        .iter()
        .map(|(name, v)| ((*name).to_owned(), Value::from(*v)))
        .collect();
    dataplane.insert("cores".into(), Value::from(node.media.cores()));
    let reg = node.registry();
    let uptime = node.started_at.elapsed().map(|d| d.as_secs()).unwrap_or(0);
    use std::sync::atomic::Ordering::Relaxed;
    let mut report = serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "node_name": node.config.node_name,
        "uptime_seconds": uptime,
        "total_channels": reg.channels.len(),
        "total_connections": reg.connection_count(),
        "signaling": {
            "websocket_opened": node.counters.opened.load(Relaxed),
            "websocket_failed": node.counters.failed.load(Relaxed),
            "connections_established": node.counters.established.load(Relaxed),
        },
        "dataplane": dataplane,
    });
    if let Some(c) = &node.cluster {
        report["cluster"] = serde_json::to_value(c.status()).unwrap_or(Value::Null);
    }
    report
}

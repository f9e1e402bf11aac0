//! `sora.conf`: the node's configuration, with every default in one place.
//!
//! The format is Sora's: `key = value` lines, `#` starts a comment (whole line
//! or trailing), values are unquoted, durations carry a unit (`30 s`,
//! `500 ms`, `2 min`, `1 h`), booleans are `true`/`false`, lists are comma
//! separated. Every key and its default is documented in `docs/CONFIG.md`.
//!
//! Parsing does no IO; [`Config::load`] reads the file, and only
//! [`Config::candidate_ipv4`] looks at the host (its interfaces).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::sdp::Codec;

/// How much the node logs; `log_level` in `sora.conf`.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    /// The directive for `tracing_subscriber::EnvFilter`.
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }

    fn parse(s: &str) -> Option<LogLevel> {
        Some(match s {
            "error" => LogLevel::Error,
            "warn" | "warning" => LogLevel::Warn,
            "info" => LogLevel::Info,
            "debug" => LogLevel::Debug,
            "trace" => LogLevel::Trace,
            _ => return None,
        })
    }
}

/// The configuration of one node. `Config::default()` is a working
/// single-node configuration on 127.0.0.1.
///
/// Fields whose default depends on other fields are `Option`s; read them
/// through [`Config::candidate_ipv4`], [`Config::signaling_url`] and
/// [`Config::api_url`], which apply the defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// `NAME@HOST`; HOST is where the other cluster nodes reach this one.
    pub node_name: String,
    /// The API, signaling and media sockets bind this address (IPv4 only).
    pub listen_address: IpAddr,
    pub signaling_port: u16,
    pub api_port: u16,
    /// UDP port of data-plane core 0; core `i` uses `media_port + i`.
    pub media_port: u16,
    /// Address put in ICE candidates; `None`: see [`Config::candidate_ipv4`].
    pub ipv4_address: Option<Ipv4Addr>,
    /// Raft log and state, the pid file and the daemon's log.
    pub data_dir: PathBuf,
    pub dataplane_cores: usize,
    /// Pin each data-plane executor to its own CPU.
    pub dataplane_pin: bool,
    pub log_level: LogLevel,
    pub signaling_notify: bool,
    /// Honour `bundle_id` in `connect` (Sora ignores it unless enabled).
    pub signaling_bundle_id: bool,
    pub api_cors_origin: String,
    /// Bind the API to a loopback address only; see [`Config::api_bind_address`].
    pub api_loopback_address_only: bool,
    /// Interval of the signaling `ping`.
    pub ping_interval: Duration,
    /// A connection that has not answered a `ping` for this long is closed.
    pub ping_timeout: Duration,
    /// A connection without an ICE consent check (STUN) for this long is closed.
    pub ice_consent_timeout: Duration,
    pub default_audio_codec_type: Codec,
    pub default_video_codec_type: Codec,
    pub cluster: bool,
    /// `None`: see [`Config::signaling_url`].
    pub external_signaling_url: Option<String>,
    /// `None`: see [`Config::api_url`].
    pub external_api_url: Option<String>,
    pub contact_node_name_list: Vec<String>,
    /// TCP port of cluster (Raft) traffic, on the host part of `node_name`.
    pub cluster_listen_port: u16,
    /// How often the Raft leader sends heartbeats.
    pub cluster_heartbeat_interval: Duration,
    /// Without a heartbeat for this long a follower starts an election and a
    /// member is shown `connected: false`.
    pub cluster_heartbeat_timeout: Duration,
    /// How long a node keeps owning a channel after its last connection left.
    pub channel_release_grace: Duration,
    /// `None`: the development license ([`crate::license::License::development`]).
    pub license_file: Option<PathBuf>,
    pub auth_webhook_url: Option<String>,
    pub session_webhook_url: Option<String>,
    pub event_webhook_url: Option<String>,
    pub webhook_response_timeout: Duration,
    /// Sent in webhooks to identify this server.
    pub label: String,
    /// Keys of Sora's that the file set and this server accepts but ignores,
    /// with their line numbers: the binary logs a warning for each.
    pub ignored_keys: Vec<(usize, String)>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            node_name: "sora@127.0.0.1".into(),
            listen_address: IpAddr::V4(Ipv4Addr::LOCALHOST),
            signaling_port: 5000,
            api_port: 3000,
            media_port: 50000,
            ipv4_address: None,
            data_dir: PathBuf::from("data"),
            dataplane_cores: 1,
            dataplane_pin: true,
            log_level: LogLevel::Info,
            signaling_notify: true,
            signaling_bundle_id: false,
            api_cors_origin: "*".into(),
            api_loopback_address_only: false,
            ping_interval: Duration::from_secs(5),
            ping_timeout: Duration::from_secs(15),
            ice_consent_timeout: Duration::from_secs(30),
            default_audio_codec_type: Codec::Opus,
            default_video_codec_type: Codec::Vp9,
            cluster: false,
            external_signaling_url: None,
            external_api_url: None,
            contact_node_name_list: Vec::new(),
            cluster_listen_port: 5890,
            cluster_heartbeat_interval: Duration::from_millis(300),
            cluster_heartbeat_timeout: Duration::from_secs(3),
            channel_release_grace: Duration::from_secs(30),
            license_file: None,
            auth_webhook_url: None,
            session_webhook_url: None,
            event_webhook_url: None,
            webhook_response_timeout: Duration::from_secs(5),
            label: "WebRTC SFU Sora".into(),
            ignored_keys: Vec::new(),
        }
    }
}

/// Keys Sora documents that this server accepts and ignores (listed in
/// `docs/CONFIG.md`). Their values are not checked.
pub const IGNORED_KEYS: &[&str] = &[
    "archive_dir",
    "cluster_listen_max_port",
    "cluster_listen_min_port",
    "demo",
    "event_webhook_worker_number",
    "ipv6",
    "ipv6_address",
];

/// Why a configuration was refused. The message names the key and, when it
/// came from a file, the line: fix that line.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {source}", path.display())]
    InFile {
        path: PathBuf,
        source: Box<ConfigError>,
    },
    #[error("line {line}: expected `key = value`, got {text:?}")]
    Syntax { line: usize, text: String },
    #[error("line {line}: unknown key {key:?}")]
    UnknownKey { line: usize, key: String },
    #[error("line {line}: {key} is set twice (first on line {first})")]
    Duplicate {
        line: usize,
        key: String,
        first: usize,
    },
    #[error("line {line}: {key}: {value:?} is not {expected}")]
    BadValue {
        line: usize,
        key: &'static str,
        value: String,
        expected: &'static str,
    },
    /// A value that is well-formed but not acceptable, alone or with others.
    #[error("{}{key}: {reason}", line.map(|l| format!("line {l}: ")).unwrap_or_default())]
    Invalid {
        line: Option<usize>,
        key: &'static str,
        reason: String,
    },
}

impl ConfigError {
    fn invalid(key: &'static str, reason: impl Into<String>) -> Self {
        ConfigError::Invalid {
            line: None,
            key,
            reason: reason.into(),
        }
    }
}

impl Config {
    /// Reads and parses a `sora.conf`; errors name the file, line and key.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text).map_err(|e| ConfigError::InFile {
            path: path.to_owned(),
            source: Box::new(e),
        })
    }

    /// Parses the text of a `sora.conf` over the defaults and validates the
    /// result. Keys not in the text keep their default.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let mut c = Config::default();
        let mut seen: HashMap<String, usize> = HashMap::new();
        // Editors on some systems start the file with a byte order mark.
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        for (idx, raw) in text.lines().enumerate() {
            let line = idx + 1;
            let content = match raw.find('#') {
                Some(i) => &raw[..i],
                None => raw,
            }
            .trim();
            if content.is_empty() {
                continue;
            }
            let Some((key, value)) = content.split_once('=') else {
                return Err(ConfigError::Syntax {
                    line,
                    text: content.chars().take(80).collect(),
                });
            };
            let (key, value) = (key.trim(), value.trim());
            if key.is_empty() || key.contains(char::is_whitespace) {
                return Err(ConfigError::Syntax {
                    line,
                    text: content.chars().take(80).collect(),
                });
            }
            if let Some(&first) = seen.get(key) {
                return Err(ConfigError::Duplicate {
                    line,
                    key: key.to_owned(),
                    first,
                });
            }
            seen.insert(key.to_owned(), line);
            c.set(line, key, value)?;
        }
        c.validate().map_err(|e| match e {
            ConfigError::Invalid {
                line: None,
                key,
                reason,
            } => ConfigError::Invalid {
                line: seen.get(key).copied(),
                key,
                reason,
            },
            other => other,
        })?;
        Ok(c)
    }

    /// Sets one key from its text value.
    fn set(&mut self, line: usize, key: &str, value: &str) -> Result<(), ConfigError> {
        let v = Value { line, value };
        match key {
            "node_name" => self.node_name = v.string("node_name")?,
            "listen_address" => self.listen_address = IpAddr::V4(v.ipv4("listen_address")?),
            "signaling_port" => self.signaling_port = v.port("signaling_port")?,
            "api_port" => self.api_port = v.port("api_port")?,
            "media_port" => self.media_port = v.port("media_port")?,
            "ipv4_address" => self.ipv4_address = Some(v.ipv4("ipv4_address")?),
            "data_dir" => self.data_dir = PathBuf::from(v.string("data_dir")?),
            "dataplane_cores" => self.dataplane_cores = v.count("dataplane_cores")?,
            "dataplane_pin" => self.dataplane_pin = v.bool("dataplane_pin")?,
            "log_level" => {
                self.log_level = LogLevel::parse(value)
                    .ok_or_else(|| v.bad("log_level", "one of error, warn, info, debug, trace"))?
            }
            "signaling_notify" => self.signaling_notify = v.bool("signaling_notify")?,
            "signaling_bundle_id" => self.signaling_bundle_id = v.bool("signaling_bundle_id")?,
            "api_cors_origin" => self.api_cors_origin = v.string("api_cors_origin")?,
            "api_loopback_address_only" => {
                self.api_loopback_address_only = v.bool("api_loopback_address_only")?
            }
            "ping_interval" => self.ping_interval = v.duration("ping_interval")?,
            "ping_timeout" => self.ping_timeout = v.duration("ping_timeout")?,
            "ice_consent_timeout" => {
                self.ice_consent_timeout = v.duration("ice_consent_timeout")?
            }
            "default_audio_codec_type" => {
                self.default_audio_codec_type = Some(value)
                    .filter(|s| *s == "OPUS")
                    .and_then(Codec::from_codec_type)
                    .ok_or_else(|| v.bad("default_audio_codec_type", "OPUS"))?
            }
            "default_video_codec_type" => {
                self.default_video_codec_type = Codec::from_codec_type(value)
                    .filter(|c| c.kind() == shared::MediaKind::Video)
                    .ok_or_else(|| {
                        v.bad("default_video_codec_type", "one of VP8, VP9, H264, AV1")
                    })?
            }
            "cluster" => self.cluster = v.bool("cluster")?,
            "external_signaling_url" => {
                self.external_signaling_url = Some(v.string("external_signaling_url")?)
            }
            "external_api_url" => self.external_api_url = Some(v.string("external_api_url")?),
            "contact_node_name_list" => self.contact_node_name_list = v.list(),
            "cluster_listen_port" => self.cluster_listen_port = v.port("cluster_listen_port")?,
            "cluster_heartbeat_interval" => {
                self.cluster_heartbeat_interval = v.duration("cluster_heartbeat_interval")?
            }
            "cluster_heartbeat_timeout" => {
                self.cluster_heartbeat_timeout = v.duration("cluster_heartbeat_timeout")?
            }
            "channel_release_grace" => {
                self.channel_release_grace = v.duration("channel_release_grace")?
            }
            "license_file" => self.license_file = Some(PathBuf::from(v.string("license_file")?)),
            "auth_webhook_url" => self.auth_webhook_url = Some(v.string("auth_webhook_url")?),
            "session_webhook_url" => {
                self.session_webhook_url = Some(v.string("session_webhook_url")?)
            }
            "event_webhook_url" => self.event_webhook_url = Some(v.string("event_webhook_url")?),
            "webhook_response_timeout" => {
                self.webhook_response_timeout = v.duration("webhook_response_timeout")?
            }
            "label" => self.label = v.string("label")?,
            k if IGNORED_KEYS.contains(&k) => self.ignored_keys.push((line, k.to_owned())),
            _ => {
                return Err(ConfigError::UnknownKey {
                    line,
                    key: key.to_owned(),
                })
            }
        }
        Ok(())
    }

    /// Checks the values together. Call it once before starting a node built
    /// from a `Config` that did not come from [`Config::parse`] (which calls it).
    pub fn validate(&self) -> Result<(), ConfigError> {
        use ConfigError as E;
        check_node_name(&self.node_name).map_err(|r| E::invalid("node_name", r))?;
        for name in &self.contact_node_name_list {
            check_node_name(name).map_err(|r| E::invalid("contact_node_name_list", r))?;
        }
        match self.listen_address {
            IpAddr::V4(ip) if !ip.is_multicast() && !ip.is_broadcast() => {}
            _ => {
                return Err(E::invalid(
                    "listen_address",
                    "must be a unicast IPv4 address or 0.0.0.0",
                ))
            }
        }
        for (key, port) in [
            ("signaling_port", self.signaling_port),
            ("api_port", self.api_port),
            ("media_port", self.media_port),
            ("cluster_listen_port", self.cluster_listen_port),
        ] {
            if port == 0 {
                return Err(E::invalid(key, "0 is not a usable port"));
            }
        }
        if self.api_port == self.signaling_port {
            return Err(E::invalid(
                "api_port",
                format!("{} is also signaling_port", self.api_port),
            ));
        }
        if self.cluster && [self.api_port, self.signaling_port].contains(&self.cluster_listen_port)
        {
            return Err(E::invalid(
                "cluster_listen_port",
                format!(
                    "{} is also api_port or signaling_port",
                    self.cluster_listen_port
                ),
            ));
        }
        if !(1..=256).contains(&self.dataplane_cores) {
            return Err(E::invalid("dataplane_cores", "must be between 1 and 256"));
        }
        if usize::from(self.media_port) + self.dataplane_cores - 1 > usize::from(u16::MAX) {
            return Err(E::invalid(
                "media_port",
                format!(
                    "{} + {} data-plane cores runs past port 65535",
                    self.media_port, self.dataplane_cores
                ),
            ));
        }
        if let Some(ip) = self.ipv4_address {
            if ip.is_unspecified() || ip.is_multicast() || ip.is_broadcast() {
                return Err(E::invalid(
                    "ipv4_address",
                    "must be a unicast address clients can reach",
                ));
            }
        }
        if self.data_dir.as_os_str().is_empty() {
            return Err(E::invalid("data_dir", "must not be empty"));
        }
        for (key, d) in [
            ("ping_interval", self.ping_interval),
            ("ice_consent_timeout", self.ice_consent_timeout),
            (
                "cluster_heartbeat_interval",
                self.cluster_heartbeat_interval,
            ),
            ("webhook_response_timeout", self.webhook_response_timeout),
        ] {
            if d.is_zero() {
                return Err(E::invalid(key, "must be longer than 0"));
            }
        }
        if self.ping_timeout <= self.ping_interval {
            return Err(E::invalid(
                "ping_timeout",
                "must be longer than ping_interval",
            ));
        }
        if self.cluster_heartbeat_timeout < 2 * self.cluster_heartbeat_interval {
            return Err(E::invalid(
                "cluster_heartbeat_timeout",
                "must be at least twice cluster_heartbeat_interval",
            ));
        }
        for (key, url, schemes) in [
            (
                "external_signaling_url",
                &self.external_signaling_url,
                &["ws://", "wss://"],
            ),
            (
                "external_api_url",
                &self.external_api_url,
                &["http://", "https://"],
            ),
            (
                "auth_webhook_url",
                &self.auth_webhook_url,
                &["http://", "https://"],
            ),
            (
                "session_webhook_url",
                &self.session_webhook_url,
                &["http://", "https://"],
            ),
            (
                "event_webhook_url",
                &self.event_webhook_url,
                &["http://", "https://"],
            ),
        ] {
            if let Some(url) = url {
                check_url(url, schemes).map_err(|r| E::invalid(key, r))?;
            }
        }
        if self.api_cors_origin.is_empty() {
            return Err(E::invalid("api_cors_origin", "must not be empty"));
        }
        Ok(())
    }

    /// `NAME` of `NAME@HOST`.
    pub fn node_short_name(&self) -> &str {
        self.node_name.split_once('@').map_or("", |(n, _)| n)
    }

    /// `HOST` of `NAME@HOST`: where the other nodes reach this one (the
    /// cluster port is bound there).
    pub fn node_host(&self) -> &str {
        self.node_name.split_once('@').map_or("", |(_, h)| h)
    }

    /// The address in ICE candidates: `ipv4_address`; else `listen_address`
    /// unless that is 0.0.0.0; else the host's first non-loopback IPv4
    /// address; else 127.0.0.1. Looks at the host's interfaces: call it once.
    pub fn candidate_ipv4(&self) -> Ipv4Addr {
        if let Some(ip) = self.ipv4_address {
            return ip;
        }
        match self.listen_address {
            IpAddr::V4(ip) if !ip.is_unspecified() => ip,
            _ => first_non_loopback_ipv4().unwrap_or(Ipv4Addr::LOCALHOST),
        }
    }

    /// [`Config::candidate_ipv4`] as an `IpAddr`, for SDP building.
    pub fn candidate_ip(&self) -> IpAddr {
        IpAddr::V4(self.candidate_ipv4())
    }

    /// The address to reach this node's own sockets at: `listen_address`, or
    /// 127.0.0.1 when that is 0.0.0.0.
    pub fn local_address(&self) -> IpAddr {
        if self.listen_address.is_unspecified() {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            self.listen_address
        }
    }

    /// The address the API binds: `listen_address`, except with
    /// `api_loopback_address_only` when that is not a loopback address, then
    /// 127.0.0.1.
    pub fn api_bind_address(&self) -> IpAddr {
        if self.api_loopback_address_only && !self.listen_address.is_loopback() {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            self.listen_address
        }
    }

    /// UDP port of data-plane core `core` (`media_port + core`).
    pub fn media_port_of(&self, core: usize) -> u16 {
        // validate() keeps media_port + dataplane_cores - 1 within u16.
        self.media_port.saturating_add(core as u16)
    }

    /// `external_signaling_url`, or `ws://<address>:<signaling_port>/signaling`
    /// where address is `listen_address`, or [`Config::candidate_ipv4`] when
    /// that is 0.0.0.0.
    pub fn signaling_url(&self) -> String {
        match &self.external_signaling_url {
            Some(url) => url.clone(),
            None => format!(
                "ws://{}:{}/signaling",
                self.advertised_address(),
                self.signaling_port
            ),
        }
    }

    /// `external_api_url`, or `http://<address>:<api_port>/` (address as in
    /// [`Config::signaling_url`]).
    pub fn api_url(&self) -> String {
        match &self.external_api_url {
            Some(url) => url.clone(),
            None => format!("http://{}:{}/", self.advertised_address(), self.api_port),
        }
    }

    fn advertised_address(&self) -> IpAddr {
        if self.listen_address.is_unspecified() {
            self.candidate_ip()
        } else {
            self.listen_address
        }
    }
}

/// One value being parsed, for errors that name its line and key.
struct Value<'a> {
    line: usize,
    value: &'a str,
}

impl Value<'_> {
    fn bad(&self, key: &'static str, expected: &'static str) -> ConfigError {
        ConfigError::BadValue {
            line: self.line,
            key,
            value: self.value.chars().take(80).collect(),
            expected,
        }
    }

    fn string(&self, key: &'static str) -> Result<String, ConfigError> {
        if self.value.is_empty() {
            return Err(self.bad(key, "a value (it is empty)"));
        }
        Ok(self.value.to_owned())
    }

    fn bool(&self, key: &'static str) -> Result<bool, ConfigError> {
        match self.value {
            "true" => Ok(true),
            "false" => Ok(false),
            _ => Err(self.bad(key, "true or false")),
        }
    }

    fn port(&self, key: &'static str) -> Result<u16, ConfigError> {
        self.value
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| self.bad(key, "a port number"))
    }

    fn count(&self, key: &'static str) -> Result<usize, ConfigError> {
        self.value
            .parse::<usize>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| self.bad(key, "a whole number above 0"))
    }

    fn ipv4(&self, key: &'static str) -> Result<Ipv4Addr, ConfigError> {
        self.value
            .parse::<Ipv4Addr>()
            .map_err(|_| self.bad(key, "an IPv4 address"))
    }

    fn duration(&self, key: &'static str) -> Result<Duration, ConfigError> {
        parse_duration(self.value).ok_or_else(|| {
            self.bad(
                key,
                "a duration with a unit (ms, s, min or h), e.g. \"30 s\"",
            )
        })
    }

    /// Comma separated; blanks around items and empty items are dropped.
    fn list(&self) -> Vec<String> {
        self.value
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    }
}

/// `<whole number> <unit>`, unit one of `ms`, `s`, `min`, `h`; the space is
/// optional.
fn parse_duration(s: &str) -> Option<Duration> {
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let ms_per = match unit.trim_start() {
        "ms" => 1,
        "s" => 1_000,
        "min" => 60_000,
        "h" => 3_600_000,
        _ => return None,
    };
    Some(Duration::from_millis(n.checked_mul(ms_per)?))
}

/// `NAME@HOST`: NAME of letters, digits, `_`, `-`, `.`; HOST a host name or
/// an IP address.
fn check_node_name(name: &str) -> Result<(), String> {
    let Some((n, host)) = name.split_once('@') else {
        return Err(format!("{name:?} is not NAME@HOST"));
    };
    let name_ok = |s: &str, extra: &[char]| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c) || extra.contains(&c))
    };
    if !name_ok(n, &[]) {
        return Err(format!(
            "{name:?}: NAME must be letters, digits, '_', '-' or '.'"
        ));
    }
    if !name_ok(host, &[':']) || host.contains('@') {
        return Err(format!(
            "{name:?}: HOST must be a host name or an IP address"
        ));
    }
    Ok(())
}

fn check_url(url: &str, schemes: &[&str]) -> Result<(), String> {
    let Some(rest) = schemes.iter().find_map(|s| url.strip_prefix(s)) else {
        return Err(format!("{url:?} must start with {}", schemes.join(" or ")));
    };
    if rest.is_empty() || rest.starts_with('/') || url.contains(char::is_whitespace) {
        return Err(format!("{url:?} has no host"));
    }
    Ok(())
}

/// The first IPv4 address of an interface that is up and not loopback.
fn first_non_loopback_ipv4() -> Option<Ipv4Addr> {
    let mut ifap: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `ifap` with a list we free below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut ifap) } != 0 {
        return None;
    }
    let mut found = None;
    let mut cur = ifap;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, not yet freed.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        let up = ifa.ifa_flags & (libc::IFF_UP as u32) != 0;
        if !up || ifa.ifa_addr.is_null() {
            continue;
        }
        // SAFETY: ifa_addr is non-null and points to a sockaddr of the family it names.
        let family = unsafe { (*ifa.ifa_addr).sa_family };
        if i32::from(family) != libc::AF_INET {
            continue;
        }
        // SAFETY: family AF_INET means the sockaddr is a sockaddr_in.
        let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
        let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
        if !ip.is_loopback() && !ip.is_unspecified() {
            found = Some(ip);
            break;
        }
    }
    // SAFETY: `ifap` came from a successful getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(ifap) };
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        Config::parse(text).unwrap_err().to_string()
    }

    #[test]
    fn defaults() {
        let c = Config::default();
        c.validate().unwrap();
        assert_eq!(Config::parse("").unwrap(), c);
        assert_eq!(Config::parse("\u{feff}# bom\r\n\r\n").unwrap(), c);
        assert_eq!(c.node_name, "sora@127.0.0.1");
        assert_eq!(c.node_short_name(), "sora");
        assert_eq!(c.node_host(), "127.0.0.1");
        assert_eq!(c.listen_address, IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_eq!(
            (c.signaling_port, c.api_port, c.media_port),
            (5000, 3000, 50000)
        );
        assert_eq!(c.cluster_listen_port, 5890);
        assert_eq!(c.data_dir, PathBuf::from("data"));
        assert_eq!(c.dataplane_cores, 1);
        assert!(c.dataplane_pin && c.signaling_notify && !c.cluster);
        assert!(!c.signaling_bundle_id && !c.api_loopback_address_only);
        assert_eq!(c.log_level, LogLevel::Info);
        assert_eq!(c.api_cors_origin, "*");
        assert_eq!(c.ping_interval, Duration::from_secs(5));
        assert_eq!(c.ping_timeout, Duration::from_secs(15));
        assert_eq!(c.ice_consent_timeout, Duration::from_secs(30));
        assert_eq!(c.channel_release_grace, Duration::from_secs(30));
        assert_eq!(c.webhook_response_timeout, Duration::from_secs(5));
        assert_eq!(c.default_video_codec_type, Codec::Vp9);
        assert_eq!(c.default_audio_codec_type, Codec::Opus);
        assert_eq!(c.label, "WebRTC SFU Sora");
        assert!(c.license_file.is_none() && c.auth_webhook_url.is_none());
        assert_eq!(c.candidate_ipv4(), Ipv4Addr::LOCALHOST);
        assert_eq!(c.signaling_url(), "ws://127.0.0.1:5000/signaling");
        assert_eq!(c.api_url(), "http://127.0.0.1:3000/");
        assert_eq!(c.api_bind_address(), c.listen_address);
        assert_eq!(c.media_port_of(0), 50000);
    }

    #[test]
    fn derived_values_follow_the_fields() {
        let mut c = Config::parse(
            "listen_address = 127.0.0.2\nsignaling_port = 5002\napi_port = 3002\n\
             media_port = 51000\ndataplane_cores = 2\n",
        )
        .unwrap();
        assert_eq!(c.signaling_url(), "ws://127.0.0.2:5002/signaling");
        assert_eq!(c.api_url(), "http://127.0.0.2:3002/");
        assert_eq!(c.candidate_ipv4(), Ipv4Addr::new(127, 0, 0, 2));
        assert_eq!(c.media_port_of(1), 51001);
        c.ipv4_address = Some(Ipv4Addr::new(192, 0, 2, 9));
        assert_eq!(c.candidate_ipv4(), Ipv4Addr::new(192, 0, 2, 9));
        c.listen_address = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
        assert_eq!(c.local_address(), IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_eq!(c.signaling_url(), "ws://192.0.2.9:5002/signaling");
        c.api_loopback_address_only = true;
        assert_eq!(c.api_bind_address(), IpAddr::V4(Ipv4Addr::LOCALHOST));
        c.ipv4_address = None;
        // Some non-loopback address of this host, or 127.0.0.1 without one.
        assert!(!c.candidate_ipv4().is_unspecified());
    }

    #[test]
    fn full_file() {
        let c = Config::parse(
            "# the tutorial's node 1\n\
             node_name = sora1@192.0.2.101\n\
             cluster = true   # trailing comment\n\
             external_signaling_url = wss://sora-node1.example.com/signaling\n\
             external_api_url = https://sora-node1.example.com/api\n\
             contact_node_name_list = sora1@192.0.2.101, sora2@192.0.2.102,sora3@192.0.2.103\n\
             \n\
             \t   # indented comment\n\
             listen_address = 0.0.0.0\n\
             ipv4_address = 192.0.2.101\n\
             webhook_response_timeout = 500 ms\n\
             channel_release_grace = 2 min\n\
             ping_interval = 10s\n\
             ping_timeout = 1 h\n\
             default_video_codec_type = AV1\n\
             default_audio_codec_type = OPUS\n\
             auth_webhook_url = http://127.0.0.1:8080/auth\n\
             license_file = etc/license.json\n\
             log_level = debug\n\
             label = sora-node-001.example.com\n\
             signaling_bundle_id = true\n\
             cluster_listen_min_port = 49010\n\
             ipv6 = false\n",
        )
        .unwrap();
        assert_eq!(c.node_host(), "192.0.2.101");
        assert!(c.cluster && c.signaling_bundle_id);
        assert_eq!(c.contact_node_name_list.len(), 3);
        assert_eq!(c.contact_node_name_list[2], "sora3@192.0.2.103");
        assert_eq!(c.signaling_url(), "wss://sora-node1.example.com/signaling");
        assert_eq!(c.api_url(), "https://sora-node1.example.com/api");
        assert_eq!(c.webhook_response_timeout, Duration::from_millis(500));
        assert_eq!(c.channel_release_grace, Duration::from_secs(120));
        assert_eq!(c.ping_interval, Duration::from_secs(10));
        assert_eq!(c.ping_timeout, Duration::from_secs(3600));
        assert_eq!(c.default_video_codec_type, Codec::Av1);
        assert_eq!(c.log_level, LogLevel::Debug);
        assert_eq!(c.license_file, Some(PathBuf::from("etc/license.json")));
        assert_eq!(
            c.ignored_keys,
            [
                (22, "cluster_listen_min_port".to_owned()),
                (23, "ipv6".to_owned())
            ]
        );
    }

    #[test]
    fn syntax_errors() {
        assert_eq!(
            err("api_port = 3000\njust words\n"),
            "line 2: expected `key = value`, got \"just words\""
        );
        assert_eq!(err("= 3\n"), "line 1: expected `key = value`, got \"= 3\"");
        assert_eq!(
            err("api port = 3\n"),
            "line 1: expected `key = value`, got \"api port = 3\""
        );
    }

    #[test]
    fn unknown_and_duplicate_keys() {
        assert_eq!(err("\n\n\n\n\n\nfoo = 1\n"), "line 7: unknown key \"foo\"");
        assert_eq!(err("Api_Port = 1\n"), "line 1: unknown key \"Api_Port\"");
        assert_eq!(
            err("api_port = 3001\n# x\napi_port = 3002\n"),
            "line 3: api_port is set twice (first on line 1)"
        );
    }

    #[test]
    fn bad_values() {
        assert_eq!(
            err("\n\nsignaling_port = abc\n"),
            "line 3: signaling_port: \"abc\" is not a port number"
        );
        assert_eq!(
            err("api_port = 70000"),
            "line 1: api_port: \"70000\" is not a port number"
        );
        assert_eq!(
            err("media_port = 0"),
            "line 1: media_port: \"0\" is not a port number"
        );
        assert_eq!(
            err("cluster = yes"),
            "line 1: cluster: \"yes\" is not true or false"
        );
        assert_eq!(
            err("cluster = True"),
            "line 1: cluster: \"True\" is not true or false"
        );
        assert_eq!(
            err("listen_address = ::1"),
            "line 1: listen_address: \"::1\" is not an IPv4 address"
        );
        assert_eq!(
            err("dataplane_cores = 0"),
            "line 1: dataplane_cores: \"0\" is not a whole number above 0"
        );
        assert_eq!(
            err("log_level = loud"),
            "line 1: log_level: \"loud\" is not one of error, warn, info, debug, trace"
        );
        assert_eq!(
            err("default_video_codec_type = H265"),
            "line 1: default_video_codec_type: \"H265\" is not one of VP8, VP9, H264, AV1"
        );
        assert_eq!(
            err("default_video_codec_type = OPUS"),
            "line 1: default_video_codec_type: \"OPUS\" is not one of VP8, VP9, H264, AV1"
        );
        assert_eq!(
            err("default_audio_codec_type = VP8"),
            "line 1: default_audio_codec_type: \"VP8\" is not OPUS"
        );
        assert_eq!(
            err("label ="),
            "line 1: label: \"\" is not a value (it is empty)"
        );
        for bad in ["30", "30 sec", "s", "-1 s", "1.5 s", "30 S", ""] {
            assert_eq!(
                err(&format!("ping_interval = {bad}")),
                format!("line 1: ping_interval: {bad:?} is not a duration with a unit (ms, s, min or h), e.g. \"30 s\"")
            );
        }
        assert!(err("ping_interval = 99999999999999999999 h").starts_with("line 1: ping_interval"));
    }

    #[test]
    fn invalid_combinations_name_the_line() {
        assert_eq!(
            err("\nnode_name = sora\n"),
            "line 2: node_name: \"sora\" is not NAME@HOST"
        );
        assert_eq!(
            err("node_name = @h"),
            "line 1: node_name: \"@h\": NAME must be letters, digits, '_', '-' or '.'"
        );
        assert_eq!(
            err("node_name = a@"),
            "line 1: node_name: \"a@\": HOST must be a host name or an IP address"
        );
        assert_eq!(
            err("contact_node_name_list = a@1.2.3.4, b\n"),
            "line 1: contact_node_name_list: \"b\" is not NAME@HOST"
        );
        assert_eq!(
            err("api_port = 5000\n"),
            "line 1: api_port: 5000 is also signaling_port"
        );
        assert_eq!(
            err("cluster = true\ncluster_listen_port = 3000\n"),
            "line 2: cluster_listen_port: 3000 is also api_port or signaling_port"
        );
        assert_eq!(
            err("media_port = 65535\ndataplane_cores = 2\n"),
            "line 1: media_port: 65535 + 2 data-plane cores runs past port 65535"
        );
        assert_eq!(
            err("dataplane_cores = 1000"),
            "line 1: dataplane_cores: must be between 1 and 256"
        );
        assert_eq!(
            err("ping_timeout = 5 s"),
            "line 1: ping_timeout: must be longer than ping_interval"
        );
        assert_eq!(
            err("ping_interval = 0 s"),
            "line 1: ping_interval: must be longer than 0"
        );
        assert_eq!(
            err("cluster_heartbeat_timeout = 500 ms"),
            "line 1: cluster_heartbeat_timeout: must be at least twice cluster_heartbeat_interval"
        );
        assert_eq!(
            err("ipv4_address = 0.0.0.0"),
            "line 1: ipv4_address: must be a unicast address clients can reach"
        );
        assert_eq!(
            err("external_signaling_url = http://x/signaling"),
            "line 1: external_signaling_url: \"http://x/signaling\" must start with ws:// or wss://"
        );
        assert_eq!(
            err("auth_webhook_url = https:///auth"),
            "line 1: auth_webhook_url: \"https:///auth\" has no host"
        );
        // A Config built in code has no lines to name.
        let c = Config {
            api_port: 5000,
            ..Config::default()
        };
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "api_port: 5000 is also signaling_port"
        );
    }

    #[test]
    fn load_names_the_file() {
        let dir = std::env::temp_dir().join(format!("sora-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("sora.conf");
        std::fs::write(&path, "api_port = 3100\nfoo = bar\n").unwrap();
        let e = Config::load(&path).unwrap_err().to_string();
        assert_eq!(
            e,
            format!("{}: line 2: unknown key \"foo\"", path.display())
        );
        std::fs::write(&path, "api_port = 3100\n").unwrap();
        assert_eq!(Config::load(&path).unwrap().api_port, 3100);
        let missing = dir.join("missing.conf");
        assert!(Config::load(&missing)
            .unwrap_err()
            .to_string()
            .starts_with(&format!("{}: ", missing.display())));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

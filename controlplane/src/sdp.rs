//! SDP for a server that is always the offerer: build offers, parse answers.
//!
//! Sans-IO: strings in, strings and structs out. The shape of every offer is
//! fixed by what this server does, not negotiated:
//!
//! - ICE-lite, one host candidate per m-line (the data-plane core's UDP port),
//!   `a=end-of-candidates`; the client's candidates are learnt from STUN.
//! - BUNDLE over all m-lines, `rtcp-mux`, `rtcp-rsize`, `a=setup:actpass`.
//! - One codec per m-line with a fixed payload type ([`Codec`]), no RTX, no FEC
//!   stream, no simulcast, no header extensions, no data channels.
//! - Unified Plan: one `a=mid` per m-line; a section the server sends carries
//!   `a=msid:<stream> <track>` and `a=ssrc` lines so the client can group tracks
//!   by publisher.
//!
//! [`parse_answer`] reads whatever a client sends back. It never panics; every
//! error names what is wrong and where.

use std::fmt::Write as _;
use std::net::IpAddr;

use shared::MediaKind;

/// A codec this server offers, with its fixed payload type.
///
/// The payload types are the ones Chrome uses in its own offers, so a client's
/// answer keeps them and forwarded packets need no payload type rewrite.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Codec {
    /// `opus/48000/2`, payload type 111.
    Opus,
    /// `VP8/90000`, payload type 96.
    Vp8,
    /// `VP9/90000` profile 0, payload type 98.
    Vp9,
    /// `H264/90000` constrained baseline 3.1, packetization mode 1, payload type 102.
    H264,
    /// `AV1/90000` profile 0, payload type 45.
    Av1,
}

impl Codec {
    /// Every codec, audio first.
    pub const ALL: [Codec; 5] = [Codec::Opus, Codec::Vp8, Codec::Vp9, Codec::H264, Codec::Av1];

    pub fn payload_type(self) -> u8 {
        match self {
            Codec::Opus => 111,
            Codec::Vp8 => 96,
            Codec::Vp9 => 98,
            Codec::H264 => 102,
            Codec::Av1 => 45,
        }
    }

    pub fn clock_rate(self) -> u32 {
        match self {
            Codec::Opus => 48_000,
            _ => 90_000,
        }
    }

    pub fn kind(self) -> MediaKind {
        match self {
            Codec::Opus => MediaKind::Audio,
            _ => MediaKind::Video,
        }
    }

    /// The codec named by Sora's `codec_type` (`"OPUS"`, `"VP8"`, `"VP9"`,
    /// `"H264"`, `"AV1"`; exact upper case, as Sora's signaling spells them).
    pub fn from_codec_type(codec_type: &str) -> Option<Codec> {
        match codec_type {
            "OPUS" => Some(Codec::Opus),
            "VP8" => Some(Codec::Vp8),
            "VP9" => Some(Codec::Vp9),
            "H264" => Some(Codec::H264),
            "AV1" => Some(Codec::Av1),
            _ => None,
        }
    }

    /// Sora's `codec_type` for this codec (inverse of [`Codec::from_codec_type`]).
    pub fn codec_type(self) -> &'static str {
        match self {
            Codec::Opus => "OPUS",
            Codec::Vp8 => "VP8",
            Codec::Vp9 => "VP9",
            Codec::H264 => "H264",
            Codec::Av1 => "AV1",
        }
    }

    /// The encoding name and parameters of `a=rtpmap`.
    fn rtpmap(self) -> &'static str {
        match self {
            Codec::Opus => "opus/48000/2",
            Codec::Vp8 => "VP8/90000",
            Codec::Vp9 => "VP9/90000",
            Codec::H264 => "H264/90000",
            Codec::Av1 => "AV1/90000",
        }
    }

    /// The `a=fmtp` parameters, if any.
    fn fmtp(self) -> Option<&'static str> {
        match self {
            Codec::Opus => Some("minptime=10;useinbandfec=1"),
            Codec::Vp8 => None,
            Codec::Vp9 => Some("profile-id=0"),
            Codec::H264 => {
                Some("profile-level-id=42e01f;packetization-mode=1;level-asymmetry-allowed=1")
            }
            Codec::Av1 => Some("level-idx=5;profile=0;tier=0"),
        }
    }

    /// The `a=rtcp-fb` values. Video gets NACK, PLI, FIR and REMB (the data
    /// plane may cap a publisher's bitrate with REMB). transport-cc is not
    /// offered: it needs a header extension and feedback this server does not
    /// produce.
    fn rtcp_fb(self) -> &'static [&'static str] {
        match self.kind() {
            MediaKind::Audio => &[],
            MediaKind::Video => &["goog-remb", "ccm fir", "nack", "nack pli"],
        }
    }
}

/// The direction of an m-line, always from the **server's** point of view:
/// `RecvOnly` is a client's upstream track, `SendOnly` a forwarded one.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    SendOnly,
    RecvOnly,
    SendRecv,
    Inactive,
}

impl Direction {
    /// The attribute as written by the server (`a=sendonly`, …).
    fn attribute(self) -> &'static str {
        match self {
            Direction::SendOnly => "sendonly",
            Direction::RecvOnly => "recvonly",
            Direction::SendRecv => "sendrecv",
            Direction::Inactive => "inactive",
        }
    }

    /// The same direction seen from the other end.
    pub fn reversed(self) -> Direction {
        match self {
            Direction::SendOnly => Direction::RecvOnly,
            Direction::RecvOnly => Direction::SendOnly,
            other => other,
        }
    }

    /// Whether the server sends media on an m-line with this direction.
    pub fn server_sends(self) -> bool {
        matches!(self, Direction::SendOnly | Direction::SendRecv)
    }
}

/// The source of a track the server sends: written as `a=ssrc:<ssrc> cname:…`,
/// `a=ssrc:<ssrc> msid:<stream_id> <track_id>` and `a=msid:<stream_id> <track_id>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SsrcInfo {
    pub ssrc: u32,
    pub cname: String,
    /// The publisher's connection id: Sora's SDKs group tracks by stream id.
    pub stream_id: String,
    pub track_id: String,
}

/// One m-line of an offer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MediaSection {
    pub mid: String,
    pub kind: MediaKind,
    pub direction: Direction,
    pub codec: Codec,
    /// Written only when the server sends on this section
    /// ([`Direction::server_sends`]); ignored otherwise.
    pub ssrc: Option<SsrcInfo>,
}

/// Everything an offer is made of.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OfferParams {
    /// `o=` session id; keep it for the life of the connection.
    pub session_id: u64,
    /// `o=` session version; increment it on every re-offer.
    pub version: u64,
    /// ICE credentials of the server side (libwebrtc wants a ufrag of at least
    /// 4 and a password of at least 22 ICE characters).
    pub ice_ufrag: String,
    pub ice_pwd: String,
    /// SHA-256 of the server's DTLS certificate, upper case colon hex.
    pub fingerprint_sha256: String,
    /// Address and port of the single host candidate (the data-plane core's
    /// socket).
    pub candidate_ip: IpAddr,
    pub candidate_port: u16,
    pub sections: Vec<MediaSection>,
}

/// Writes the offer. Lines end with `\r\n`.
pub fn build_offer(p: &OfferParams) -> String {
    let mut sdp = String::with_capacity(600 + 800 * p.sections.len());
    let ip_ver = match p.candidate_ip {
        IpAddr::V4(_) => "IP4",
        IpAddr::V6(_) => "IP6",
    };
    // `writeln!` into a String cannot fail; `line` keeps the `\r\n` in one place.
    macro_rules! line {
        ($($arg:tt)*) => {{
            let _ = write!(sdp, $($arg)*);
            sdp.push_str("\r\n");
        }};
    }
    line!("v=0");
    line!("o=- {} {} IN IP4 127.0.0.1", p.session_id, p.version);
    line!("s=-");
    line!("t=0 0");
    if !p.sections.is_empty() {
        let mut group = String::from("a=group:BUNDLE");
        for s in &p.sections {
            group.push(' ');
            group.push_str(&s.mid);
        }
        line!("{group}");
    }
    line!("a=ice-lite");
    line!("a=msid-semantic: WMS *");
    for s in &p.sections {
        let media = match s.kind {
            MediaKind::Audio => "audio",
            MediaKind::Video => "video",
        };
        let pt = s.codec.payload_type();
        line!("m={media} {} UDP/TLS/RTP/SAVPF {pt}", p.candidate_port);
        line!("c=IN {ip_ver} {}", p.candidate_ip);
        line!("a=mid:{}", s.mid);
        line!("a={}", s.direction.attribute());
        line!("a=ice-ufrag:{}", p.ice_ufrag);
        line!("a=ice-pwd:{}", p.ice_pwd);
        line!("a=fingerprint:sha-256 {}", p.fingerprint_sha256);
        line!("a=setup:actpass");
        line!("a=rtcp-mux");
        line!("a=rtcp-rsize");
        line!("a=rtpmap:{pt} {}", s.codec.rtpmap());
        if let Some(fmtp) = s.codec.fmtp() {
            line!("a=fmtp:{pt} {fmtp}");
        }
        for fb in s.codec.rtcp_fb() {
            line!("a=rtcp-fb:{pt} {fb}");
        }
        if let (true, Some(info)) = (s.direction.server_sends(), &s.ssrc) {
            line!("a=msid:{} {}", info.stream_id, info.track_id);
            line!("a=ssrc:{} cname:{}", info.ssrc, info.cname);
            line!(
                "a=ssrc:{} msid:{} {}",
                info.ssrc,
                info.stream_id,
                info.track_id
            );
        }
        line!(
            "a=candidate:1 1 udp 2130706431 {} {} typ host",
            p.candidate_ip,
            p.candidate_port
        );
        line!("a=end-of-candidates");
    }
    sdp
}

/// The DTLS role the answerer took (`a=setup`).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Setup {
    /// The client is the DTLS client; the server waits for its ClientHello.
    Active,
    /// The client waits; the server must start the DTLS handshake.
    Passive,
    /// Not a valid answer to an offer of `actpass`; reported so the caller can
    /// refuse it with a clear reason.
    ActPass,
}

/// A client's answer, reduced to what the server acts on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    pub ice_ufrag: String,
    pub ice_pwd: String,
    /// `(algorithm, value)` of `a=fingerprint`, algorithm in lower case
    /// (`"sha-256"`), value as written.
    pub fingerprint: Option<(String, String)>,
    pub setup: Setup,
    /// The mids of `a=group:BUNDLE`, empty when the client did not bundle.
    pub bundle_mids: Vec<String>,
    pub sections: Vec<AnswerSection>,
}

/// One m-line of an answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnswerSection {
    /// Empty only for a rejected section without `a=mid`.
    pub mid: String,
    pub kind: MediaKind,
    /// Port 0: the client refused this m-line.
    pub rejected: bool,
    /// From the **server's** point of view, like [`Direction`] everywhere: a
    /// client's `a=sendonly` is `RecvOnly` here. Absent means `SendRecv`.
    pub direction: Direction,
    /// The payload types of the m-line, in the client's order.
    pub payload_types: Vec<u8>,
    /// Distinct SSRCs of `a=ssrc` lines, in order of appearance.
    pub ssrcs: Vec<u32>,
    /// `(stream_id, track_id)` from `a=msid`, else from `a=ssrc:… msid:`.
    pub msid: Option<(String, String)>,
}

/// Why an answer was refused. `line` is 1-based.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SdpError {
    #[error("the SDP is empty")]
    Empty,
    #[error("line {line}: expected `<letter>=<value>`, got {text:?}")]
    Malformed { line: usize, text: String },
    #[error("line {line}: the SDP must start with v=0")]
    NoVersion { line: usize },
    #[error("line {line}: invalid m-line {text:?}: {reason}")]
    BadMediaLine {
        line: usize,
        text: String,
        reason: &'static str,
    },
    #[error("line {line}: unsupported media type {media:?}")]
    UnsupportedMedia { line: usize, media: String },
    #[error("line {line}: invalid a={attribute}: {reason}")]
    BadAttribute {
        line: usize,
        attribute: &'static str,
        reason: String,
    },
    #[error("m-line {index}: accepted section has no a=mid")]
    MissingMid { index: usize },
    #[error("no a={attribute} in the session or in an accepted m-line")]
    Missing { attribute: &'static str },
    #[error("m-lines {first} and {second} disagree on a={attribute} (BUNDLE needs one transport)")]
    Inconsistent {
        attribute: &'static str,
        first: usize,
        second: usize,
    },
}

/// Transport attributes that may sit at session level or in each m-line.
#[derive(Default)]
struct Transport {
    ufrag: Option<String>,
    pwd: Option<String>,
    fingerprint: Option<(String, String)>,
    setup: Option<Setup>,
}

struct RawSection {
    section: AnswerSection,
    transport: Transport,
    ssrc_msid: Option<(String, String)>,
}

/// Parses a client's answer. Accepts `\r\n` or `\n` line endings and ignores
/// attributes it does not need (candidates, extmap, rtcp-fb, …).
pub fn parse_answer(sdp: &str) -> Result<Answer, SdpError> {
    let mut session = Transport::default();
    let mut bundle_mids = Vec::new();
    let mut sections: Vec<RawSection> = Vec::new();
    let mut seen_version = false;

    for (idx, raw) in sdp.split('\n').enumerate() {
        let line_no = idx + 1;
        let text = raw.strip_suffix('\r').unwrap_or(raw);
        if text.trim().is_empty() {
            continue;
        }
        let (kind, value) = match text.split_once('=') {
            Some((k, v)) if k.len() == 1 => (k, v),
            _ => {
                return Err(SdpError::Malformed {
                    line: line_no,
                    text: truncate(text),
                })
            }
        };
        if !seen_version {
            if kind != "v" || value.trim() != "0" {
                return Err(SdpError::NoVersion { line: line_no });
            }
            seen_version = true;
            continue;
        }
        match kind {
            "m" => sections.push(parse_media_line(line_no, text, value)?),
            "a" => {
                let (name, arg) = match value.split_once(':') {
                    Some((n, a)) => (n, Some(a)),
                    None => (value, None),
                };
                match sections.last_mut() {
                    None => parse_session_attr(line_no, name, arg, &mut session, &mut bundle_mids)?,
                    Some(sec) => parse_media_attr(line_no, name, arg, sec)?,
                }
            }
            _ => {}
        }
    }
    if !seen_version {
        return Err(SdpError::Empty);
    }

    // With BUNDLE every accepted m-line shares one transport; libwebrtc repeats
    // the attributes in each, others put them at session level.
    let mut ice_ufrag = session.ufrag;
    let mut ice_pwd = session.pwd;
    let mut fingerprint = session.fingerprint;
    let mut setup = session.setup;
    let mut first_with: [Option<usize>; 4] = [None; 4];
    for (i, sec) in sections.iter().enumerate() {
        if sec.section.rejected {
            continue;
        }
        if sec.section.mid.is_empty() {
            return Err(SdpError::MissingMid { index: i });
        }
        let t = &sec.transport;
        merge(&mut ice_ufrag, &t.ufrag, "ice-ufrag", i, &mut first_with[0])?;
        merge(&mut ice_pwd, &t.pwd, "ice-pwd", i, &mut first_with[1])?;
        merge(
            &mut fingerprint,
            &t.fingerprint,
            "fingerprint",
            i,
            &mut first_with[2],
        )?;
        merge(&mut setup, &t.setup, "setup", i, &mut first_with[3])?;
    }

    Ok(Answer {
        ice_ufrag: ice_ufrag.ok_or(SdpError::Missing {
            attribute: "ice-ufrag",
        })?,
        ice_pwd: ice_pwd.ok_or(SdpError::Missing {
            attribute: "ice-pwd",
        })?,
        fingerprint,
        setup: setup.ok_or(SdpError::Missing { attribute: "setup" })?,
        bundle_mids,
        sections: sections
            .into_iter()
            .map(|mut s| {
                if s.section.msid.is_none() {
                    s.section.msid = s.ssrc_msid;
                }
                s.section
            })
            .collect(),
    })
}

/// Takes a section's value of a transport attribute: the first one found sets
/// it (overriding the session level), a later different one is an error.
fn merge<T: Clone + PartialEq>(
    acc: &mut Option<T>,
    value: &Option<T>,
    attribute: &'static str,
    index: usize,
    first: &mut Option<usize>,
) -> Result<(), SdpError> {
    let Some(v) = value else { return Ok(()) };
    match first {
        None => {
            *acc = Some(v.clone());
            *first = Some(index);
        }
        Some(f) if acc.as_ref() != Some(v) => {
            return Err(SdpError::Inconsistent {
                attribute,
                first: *f,
                second: index,
            })
        }
        Some(_) => {}
    }
    Ok(())
}

fn parse_media_line(line: usize, text: &str, value: &str) -> Result<RawSection, SdpError> {
    let bad = |reason| SdpError::BadMediaLine {
        line,
        text: truncate(text),
        reason,
    };
    let mut fields = value.split_ascii_whitespace();
    let media = fields.next().ok_or_else(|| bad("no media type"))?;
    let port = fields.next().ok_or_else(|| bad("no port"))?;
    let _proto = fields.next().ok_or_else(|| bad("no protocol"))?;
    let kind = match media {
        "audio" => MediaKind::Audio,
        "video" => MediaKind::Video,
        other => {
            return Err(SdpError::UnsupportedMedia {
                line,
                media: truncate(other),
            })
        }
    };
    // `<port>/<count>` is legal SDP; only the port matters.
    let port = port.split('/').next().unwrap_or(port);
    let port: u16 = port.parse().map_err(|_| bad("port is not a number"))?;
    let mut payload_types = Vec::new();
    for f in fields {
        payload_types.push(
            f.parse::<u8>()
                .ok()
                .filter(|pt| *pt < 128)
                .ok_or_else(|| bad("payload type is not a number below 128"))?,
        );
    }
    Ok(RawSection {
        section: AnswerSection {
            mid: String::new(),
            kind,
            rejected: port == 0,
            direction: Direction::SendRecv,
            payload_types,
            ssrcs: Vec::new(),
            msid: None,
        },
        transport: Transport::default(),
        ssrc_msid: None,
    })
}

fn parse_session_attr(
    line: usize,
    name: &str,
    arg: Option<&str>,
    t: &mut Transport,
    bundle_mids: &mut Vec<String>,
) -> Result<(), SdpError> {
    if name == "group" {
        if let Some(rest) = arg.and_then(|a| a.strip_prefix("BUNDLE")) {
            bundle_mids.extend(rest.split_ascii_whitespace().map(str::to_owned));
        }
        return Ok(());
    }
    parse_transport_attr(line, name, arg, t)
}

fn parse_media_attr(
    line: usize,
    name: &str,
    arg: Option<&str>,
    sec: &mut RawSection,
) -> Result<(), SdpError> {
    let s = &mut sec.section;
    match name {
        "mid" => {
            let mid = arg.map(str::trim).unwrap_or("");
            if mid.is_empty() {
                return Err(bad_attr(line, "mid", "empty"));
            }
            s.mid = mid.to_owned();
        }
        // The client's direction, turned around to the server's.
        "sendonly" => s.direction = Direction::RecvOnly,
        "recvonly" => s.direction = Direction::SendOnly,
        "sendrecv" => s.direction = Direction::SendRecv,
        "inactive" => s.direction = Direction::Inactive,
        "msid" => {
            let arg = arg.unwrap_or("");
            s.msid = Some(
                parse_msid(arg)
                    .ok_or_else(|| bad_attr(line, "msid", "expected `<stream> [<track>]`"))?,
            );
        }
        "ssrc" => {
            let arg = arg.unwrap_or("");
            let (ssrc, rest) = arg.split_once(' ').unwrap_or((arg, ""));
            let ssrc: u32 = ssrc.parse().map_err(|_| {
                bad_attr(
                    line,
                    "ssrc",
                    format!("{:?} is not a 32-bit number", truncate(ssrc)),
                )
            })?;
            if !s.ssrcs.contains(&ssrc) {
                s.ssrcs.push(ssrc);
            }
            if let Some(m) = rest.trim_start().strip_prefix("msid:") {
                if sec.ssrc_msid.is_none() {
                    sec.ssrc_msid = parse_msid(m);
                }
            }
        }
        _ => parse_transport_attr(line, name, arg, &mut sec.transport)?,
    }
    Ok(())
}

fn parse_transport_attr(
    line: usize,
    name: &str,
    arg: Option<&str>,
    t: &mut Transport,
) -> Result<(), SdpError> {
    match name {
        "ice-ufrag" => t.ufrag = Some(ice_token(line, "ice-ufrag", arg)?),
        "ice-pwd" => t.pwd = Some(ice_token(line, "ice-pwd", arg)?),
        "fingerprint" => {
            let arg = arg.unwrap_or("").trim();
            let (algo, value) = arg
                .split_once(' ')
                .map(|(a, v)| (a, v.trim()))
                .filter(|(a, v)| !a.is_empty() && !v.is_empty())
                .ok_or_else(|| bad_attr(line, "fingerprint", "expected `<algorithm> <hex>`"))?;
            t.fingerprint = Some((algo.to_ascii_lowercase(), value.to_owned()));
        }
        "setup" => {
            t.setup = Some(match arg.unwrap_or("").trim() {
                "active" => Setup::Active,
                "passive" => Setup::Passive,
                "actpass" => Setup::ActPass,
                other => {
                    return Err(bad_attr(
                        line,
                        "setup",
                        format!("{:?} is not active, passive or actpass", truncate(other)),
                    ))
                }
            })
        }
        _ => {}
    }
    Ok(())
}

fn ice_token(line: usize, attribute: &'static str, arg: Option<&str>) -> Result<String, SdpError> {
    let v = arg.unwrap_or("").trim();
    if v.is_empty() {
        return Err(bad_attr(line, attribute, "empty"));
    }
    if v.chars().any(|c| c.is_whitespace()) {
        return Err(bad_attr(line, attribute, "contains white space"));
    }
    Ok(v.to_owned())
}

/// `<stream> <track>`; `-` or a missing track id are kept as written (empty
/// track id when absent).
fn parse_msid(arg: &str) -> Option<(String, String)> {
    let mut parts = arg.split_ascii_whitespace();
    let stream = parts.next()?;
    let track = parts.next().unwrap_or("");
    Some((stream.to_owned(), track.to_owned()))
}

fn bad_attr(line: usize, attribute: &'static str, reason: impl Into<String>) -> SdpError {
    SdpError::BadAttribute {
        line,
        attribute,
        reason: reason.into(),
    }
}

/// Keeps error messages short when the input is garbage.
fn truncate(s: &str) -> String {
    const MAX: usize = 80;
    match s.char_indices().nth(MAX) {
        None => s.to_owned(),
        Some((i, _)) => format!("{}…", &s[..i]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn params() -> OfferParams {
        OfferParams {
            session_id: 4_611_731_400_430_051_336,
            version: 2,
            ice_ufrag: "Ab3d".into(),
            ice_pwd: "0123456789abcdefghijkl".into(),
            fingerprint_sha256: "AB:CD:EF".into(),
            candidate_ip: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
            candidate_port: 50001,
            sections: vec![
                MediaSection {
                    mid: "0".into(),
                    kind: MediaKind::Audio,
                    direction: Direction::RecvOnly,
                    codec: Codec::Opus,
                    // Ignored: the server does not send on an upstream section.
                    ssrc: Some(SsrcInfo {
                        ssrc: 1,
                        cname: "x".into(),
                        stream_id: "x".into(),
                        track_id: "x".into(),
                    }),
                },
                MediaSection {
                    mid: "1".into(),
                    kind: MediaKind::Video,
                    direction: Direction::RecvOnly,
                    codec: Codec::Vp9,
                    ssrc: None,
                },
                MediaSection {
                    mid: "2".into(),
                    kind: MediaKind::Video,
                    direction: Direction::SendOnly,
                    codec: Codec::H264,
                    ssrc: Some(SsrcInfo {
                        ssrc: 3_000_000_000,
                        cname: "cname-pub".into(),
                        stream_id: "PUBCONNID".into(),
                        track_id: "video-track".into(),
                    }),
                },
                MediaSection {
                    mid: "3".into(),
                    kind: MediaKind::Video,
                    direction: Direction::Inactive,
                    codec: Codec::Av1,
                    ssrc: None,
                },
            ],
        }
    }

    #[test]
    fn offer_line_by_line() {
        let sdp = build_offer(&params());
        assert!(sdp.ends_with("\r\n"));
        assert!(!sdp.replace("\r\n", "").contains('\n'));
        let lines: Vec<&str> = sdp.split("\r\n").filter(|l| !l.is_empty()).collect();
        let media_common = |m: &str, mid: &str, dir: &str| {
            vec![
                m.to_owned(),
                "c=IN IP4 192.0.2.1".to_owned(),
                format!("a=mid:{mid}"),
                format!("a={dir}"),
                "a=ice-ufrag:Ab3d".to_owned(),
                "a=ice-pwd:0123456789abcdefghijkl".to_owned(),
                "a=fingerprint:sha-256 AB:CD:EF".to_owned(),
                "a=setup:actpass".to_owned(),
                "a=rtcp-mux".to_owned(),
                "a=rtcp-rsize".to_owned(),
            ]
        };
        let cand = [
            "a=candidate:1 1 udp 2130706431 192.0.2.1 50001 typ host".to_owned(),
            "a=end-of-candidates".to_owned(),
        ];
        let video_fb = |pt: u8| {
            ["goog-remb", "ccm fir", "nack", "nack pli"]
                .iter()
                .map(move |fb| format!("a=rtcp-fb:{pt} {fb}"))
                .collect::<Vec<_>>()
        };
        let mut want: Vec<String> = [
            "v=0",
            "o=- 4611731400430051336 2 IN IP4 127.0.0.1",
            "s=-",
            "t=0 0",
            "a=group:BUNDLE 0 1 2 3",
            "a=ice-lite",
            "a=msid-semantic: WMS *",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        want.extend(media_common(
            "m=audio 50001 UDP/TLS/RTP/SAVPF 111",
            "0",
            "recvonly",
        ));
        want.push("a=rtpmap:111 opus/48000/2".into());
        want.push("a=fmtp:111 minptime=10;useinbandfec=1".into());
        want.extend(cand.clone());
        want.extend(media_common(
            "m=video 50001 UDP/TLS/RTP/SAVPF 98",
            "1",
            "recvonly",
        ));
        want.push("a=rtpmap:98 VP9/90000".into());
        want.push("a=fmtp:98 profile-id=0".into());
        want.extend(video_fb(98));
        want.extend(cand.clone());
        want.extend(media_common(
            "m=video 50001 UDP/TLS/RTP/SAVPF 102",
            "2",
            "sendonly",
        ));
        want.push("a=rtpmap:102 H264/90000".into());
        want.push(
            "a=fmtp:102 profile-level-id=42e01f;packetization-mode=1;level-asymmetry-allowed=1"
                .into(),
        );
        want.extend(video_fb(102));
        want.push("a=msid:PUBCONNID video-track".into());
        want.push("a=ssrc:3000000000 cname:cname-pub".into());
        want.push("a=ssrc:3000000000 msid:PUBCONNID video-track".into());
        want.extend(cand.clone());
        want.extend(media_common(
            "m=video 50001 UDP/TLS/RTP/SAVPF 45",
            "3",
            "inactive",
        ));
        want.push("a=rtpmap:45 AV1/90000".into());
        want.push("a=fmtp:45 level-idx=5;profile=0;tier=0".into());
        want.extend(video_fb(45));
        want.extend(cand);
        for (i, (got, want)) in lines.iter().zip(&want).enumerate() {
            assert_eq!(got, want, "line {}", i + 1);
        }
        assert_eq!(lines.len(), want.len());
    }

    #[test]
    fn offer_ipv6_and_empty() {
        let mut p = params();
        p.candidate_ip = "2001:db8::1".parse().unwrap();
        p.sections.truncate(1);
        let sdp = build_offer(&p);
        assert!(sdp.contains("\r\nc=IN IP6 2001:db8::1\r\n"));
        assert!(sdp.contains("\r\na=candidate:1 1 udp 2130706431 2001:db8::1 50001 typ host\r\n"));
        p.sections.clear();
        let sdp = build_offer(&p);
        assert!(!sdp.contains("BUNDLE"));
        assert!(!sdp.contains("m="));
    }

    #[test]
    fn offer_round_trips_through_parser() {
        // The parser reads our own offer too (directions come back reversed
        // because it assumes the text was written by the client).
        let sdp = build_offer(&params());
        let a = parse_answer(&sdp).unwrap();
        assert_eq!(a.ice_ufrag, "Ab3d");
        assert_eq!(a.setup, Setup::ActPass);
        assert_eq!(a.bundle_mids, ["0", "1", "2", "3"]);
        assert_eq!(a.sections[0].direction, Direction::SendOnly);
        assert_eq!(a.sections[2].direction, Direction::RecvOnly);
        assert_eq!(a.sections[2].ssrcs, [3_000_000_000]);
        assert_eq!(
            a.sections[2].msid,
            Some(("PUBCONNID".into(), "video-track".into()))
        );
        assert_eq!(a.sections[0].ssrcs, Vec::<u32>::new());
    }

    #[test]
    fn codec_table() {
        for c in Codec::ALL {
            assert_eq!(Codec::from_codec_type(c.codec_type()), Some(c));
        }
        assert_eq!(Codec::from_codec_type("vp9"), None);
        assert_eq!(Codec::from_codec_type("H265"), None);
        assert_eq!(Codec::Vp9.payload_type(), 98);
        assert_eq!(Codec::Opus.clock_rate(), 48_000);
        assert_eq!(Codec::Av1.kind(), MediaKind::Video);
        assert_eq!(Codec::Opus.kind(), MediaKind::Audio);
    }

    /// The shape of Chrome's answer to an offer with one upstream audio, one
    /// upstream video and one forwarded video, the last rejected here.
    const CHROME_ANSWER: &str = "v=0\r\n\
o=- 8077356384349934127 2 IN IP4 127.0.0.1\r\n\
s=-\r\n\
t=0 0\r\n\
a=group:BUNDLE 0 1 2\r\n\
a=extmap-allow-mixed\r\n\
a=msid-semantic: WMS 6a4bf3cc-1b5e-4a1d-9e0f-3c8b1a2d4e5f\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n\
c=IN IP4 0.0.0.0\r\n\
a=rtcp:9 IN IP4 0.0.0.0\r\n\
a=ice-ufrag:q8Zk\r\n\
a=ice-pwd:u1Cw0hU7m0T6oLHd8vTqJ3Ff\r\n\
a=ice-options:trickle\r\n\
a=fingerprint:sha-256 5C:0A:2B:9E:11:77:3F:4D:8A:6C:0E:21:93:B7:55:D0:CC:19:AA:3E:70:4B:E2:8F:06:DD:91:12:5F:A8:37:C4\r\n\
a=setup:active\r\n\
a=mid:0\r\n\
a=sendonly\r\n\
a=msid:6a4bf3cc-1b5e-4a1d-9e0f-3c8b1a2d4e5f 0f2e6a11-7c3d-4b55-8e90-1d2c3b4a5f60\r\n\
a=rtcp-mux\r\n\
a=rtcp-rsize\r\n\
a=rtpmap:111 opus/48000/2\r\n\
a=fmtp:111 minptime=10;useinbandfec=1\r\n\
a=ssrc:2795361802 cname:pX2dLkG0sPq9vR7e\r\n\
a=ssrc:2795361802 msid:6a4bf3cc-1b5e-4a1d-9e0f-3c8b1a2d4e5f 0f2e6a11-7c3d-4b55-8e90-1d2c3b4a5f60\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 98\r\n\
c=IN IP4 0.0.0.0\r\n\
a=rtcp:9 IN IP4 0.0.0.0\r\n\
a=ice-ufrag:q8Zk\r\n\
a=ice-pwd:u1Cw0hU7m0T6oLHd8vTqJ3Ff\r\n\
a=ice-options:trickle\r\n\
a=fingerprint:sha-256 5C:0A:2B:9E:11:77:3F:4D:8A:6C:0E:21:93:B7:55:D0:CC:19:AA:3E:70:4B:E2:8F:06:DD:91:12:5F:A8:37:C4\r\n\
a=setup:active\r\n\
a=mid:1\r\n\
a=sendonly\r\n\
a=msid:6a4bf3cc-1b5e-4a1d-9e0f-3c8b1a2d4e5f 9b8a7c6d-5e4f-4a3b-2c1d-0e9f8a7b6c5d\r\n\
a=rtcp-mux\r\n\
a=rtcp-rsize\r\n\
a=rtpmap:98 VP9/90000\r\n\
a=rtcp-fb:98 goog-remb\r\n\
a=rtcp-fb:98 ccm fir\r\n\
a=rtcp-fb:98 nack\r\n\
a=rtcp-fb:98 nack pli\r\n\
a=fmtp:98 profile-id=0\r\n\
a=ssrc:1182437519 cname:pX2dLkG0sPq9vR7e\r\n\
a=ssrc:1182437519 msid:6a4bf3cc-1b5e-4a1d-9e0f-3c8b1a2d4e5f 9b8a7c6d-5e4f-4a3b-2c1d-0e9f8a7b6c5d\r\n\
m=video 0 UDP/TLS/RTP/SAVPF 102\r\n\
c=IN IP4 0.0.0.0\r\n\
a=mid:2\r\n\
a=inactive\r\n\
a=rtpmap:102 H264/90000\r\n";

    #[test]
    fn parses_chrome_answer() {
        let a = parse_answer(CHROME_ANSWER).unwrap();
        assert_eq!(a.ice_ufrag, "q8Zk");
        assert_eq!(a.ice_pwd, "u1Cw0hU7m0T6oLHd8vTqJ3Ff");
        let (algo, fp) = a.fingerprint.clone().unwrap();
        assert_eq!(algo, "sha-256");
        assert!(fp.starts_with("5C:0A:") && fp.ends_with(":37:C4"));
        assert_eq!(a.setup, Setup::Active);
        assert_eq!(a.bundle_mids, ["0", "1", "2"]);
        assert_eq!(a.sections.len(), 3);
        let s0 = &a.sections[0];
        assert_eq!(
            (s0.mid.as_str(), s0.kind, s0.rejected, s0.direction),
            ("0", MediaKind::Audio, false, Direction::RecvOnly)
        );
        assert_eq!(s0.payload_types, [111]);
        assert_eq!(s0.ssrcs, [2_795_361_802]);
        assert_eq!(
            s0.msid,
            Some((
                "6a4bf3cc-1b5e-4a1d-9e0f-3c8b1a2d4e5f".into(),
                "0f2e6a11-7c3d-4b55-8e90-1d2c3b4a5f60".into()
            ))
        );
        let s1 = &a.sections[1];
        assert_eq!(
            (s1.kind, s1.direction),
            (MediaKind::Video, Direction::RecvOnly)
        );
        assert_eq!(s1.ssrcs, [1_182_437_519]);
        assert_eq!(s1.payload_types, [98]);
        let s2 = &a.sections[2];
        assert!(s2.rejected);
        assert_eq!(s2.mid, "2");
        assert_eq!(s2.direction, Direction::Inactive);
        assert!(s2.ssrcs.is_empty() && s2.msid.is_none());
    }

    /// The shape of a native libwebrtc (C++ SDK) answer: `\n` line endings
    /// are also accepted, transport attributes at session level, no `a=msid`
    /// but `a=ssrc … msid:`, a receive-only section that takes a forwarded
    /// track, and an ssrc-group line.
    const NATIVE_ANSWER: &str = "v=0\n\
o=- 1234567890123456789 2 IN IP4 127.0.0.1\n\
s=-\n\
t=0 0\n\
a=group:BUNDLE 0 1 2\n\
a=msid-semantic: WMS\n\
a=ice-ufrag:Zx9a\n\
a=ice-pwd:pQ4s7v0y3B6e9H2k5N8q1T4w\n\
a=fingerprint:SHA-256 11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00\n\
a=setup:passive\n\
m=audio 9 UDP/TLS/RTP/SAVPF 111\n\
c=IN IP4 0.0.0.0\n\
a=rtcp:9 IN IP4 0.0.0.0\n\
a=mid:0\n\
a=sendonly\n\
a=rtcp-mux\n\
a=rtpmap:111 opus/48000/2\n\
a=ssrc:17 cname:native\n\
a=ssrc:17 msid:stream-a audio-a\n\
a=ssrc:17 mslabel:stream-a\n\
m=video 9 UDP/TLS/RTP/SAVPF 96\n\
c=IN IP4 0.0.0.0\n\
a=mid:1\n\
a=sendrecv\n\
a=rtpmap:96 VP8/90000\n\
a=ssrc-group:FID 4294967295 5\n\
a=ssrc:4294967295 cname:native\n\
a=ssrc:5 cname:native\n\
a=ssrc:4294967295 msid:stream-a video-a\n\
m=video 9 UDP/TLS/RTP/SAVPF 98\n\
c=IN IP4 0.0.0.0\n\
a=mid:2\n\
a=recvonly\n\
a=rtpmap:98 VP9/90000\n";

    #[test]
    fn parses_native_answer() {
        let a = parse_answer(NATIVE_ANSWER).unwrap();
        assert_eq!(a.ice_ufrag, "Zx9a");
        assert_eq!(a.ice_pwd, "pQ4s7v0y3B6e9H2k5N8q1T4w");
        assert_eq!(a.fingerprint.as_ref().unwrap().0, "sha-256");
        assert_eq!(a.setup, Setup::Passive);
        let s0 = &a.sections[0];
        assert_eq!(s0.ssrcs, [17]);
        assert_eq!(s0.msid, Some(("stream-a".into(), "audio-a".into())));
        let s1 = &a.sections[1];
        assert_eq!(s1.direction, Direction::SendRecv);
        assert_eq!(s1.ssrcs, [4_294_967_295, 5]);
        assert_eq!(s1.msid, Some(("stream-a".into(), "video-a".into())));
        let s2 = &a.sections[2];
        assert_eq!(s2.direction, Direction::SendOnly);
        assert!(s2.ssrcs.is_empty());
        assert!(!s2.rejected);
    }

    #[test]
    fn errors_name_the_problem() {
        assert_eq!(parse_answer(""), Err(SdpError::Empty));
        assert_eq!(parse_answer("\r\n\r\n"), Err(SdpError::Empty));
        assert_eq!(
            parse_answer("o=- 1 1 IN IP4 0.0.0.0\r\n"),
            Err(SdpError::NoVersion { line: 1 })
        );
        assert!(matches!(
            parse_answer("v=0\r\nhello\r\n"),
            Err(SdpError::Malformed { line: 2, .. })
        ));
        let base =
            "v=0\r\na=ice-ufrag:abcd\r\na=ice-pwd:0123456789abcdefghijkl\r\na=setup:active\r\n";
        assert!(parse_answer(base).is_ok());
        assert!(matches!(
            parse_answer(&format!(
                "{base}m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n"
            )),
            Err(SdpError::UnsupportedMedia { line: 5, .. })
        ));
        assert!(matches!(
            parse_answer(&format!("{base}m=audio x UDP/TLS/RTP/SAVPF 111\r\n")),
            Err(SdpError::BadMediaLine { line: 5, .. })
        ));
        assert!(matches!(
            parse_answer(&format!("{base}m=audio 9 UDP/TLS/RTP/SAVPF 300\r\n")),
            Err(SdpError::BadMediaLine { line: 5, .. })
        ));
        assert!(matches!(
            parse_answer(&format!("{base}m=audio 9\r\n")),
            Err(SdpError::BadMediaLine { line: 5, .. })
        ));
        assert_eq!(
            parse_answer(&format!("{base}m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n")),
            Err(SdpError::MissingMid { index: 0 })
        );
        // A rejected section needs no mid.
        assert!(parse_answer(&format!("{base}m=audio 0 UDP/TLS/RTP/SAVPF 111\r\n")).is_ok());
        assert!(matches!(
            parse_answer(&format!(
                "{base}m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=ssrc:-1 cname:x\r\n"
            )),
            Err(SdpError::BadAttribute {
                line: 7,
                attribute: "ssrc",
                ..
            })
        ));
        assert!(matches!(
            parse_answer(&base.replace("active", "holdconn")),
            Err(SdpError::BadAttribute {
                line: 4,
                attribute: "setup",
                ..
            })
        ));
        assert!(matches!(
            parse_answer(&format!("{base}a=fingerprint:sha-256\r\n")),
            Err(SdpError::BadAttribute {
                line: 5,
                attribute: "fingerprint",
                ..
            })
        ));
        assert_eq!(
            parse_answer(&base.replace("a=ice-pwd:0123456789abcdefghijkl\r\n", "")),
            Err(SdpError::Missing {
                attribute: "ice-pwd"
            })
        );
        assert_eq!(
            parse_answer(&base.replace("a=setup:active\r\n", "")),
            Err(SdpError::Missing { attribute: "setup" })
        );
        let two = "v=0\r\nm=audio 9 P 111\r\na=mid:0\r\na=ice-ufrag:aaaa\r\na=ice-pwd:p\r\na=setup:active\r\n\
m=video 9 P 96\r\na=mid:1\r\na=ice-ufrag:bbbb\r\n";
        assert_eq!(
            parse_answer(two),
            Err(SdpError::Inconsistent {
                attribute: "ice-ufrag",
                first: 0,
                second: 1
            })
        );
        // Messages are readable and short even for garbage.
        let err = parse_answer(&format!("v=0\r\n{}\r\n", "x".repeat(10_000))).unwrap_err();
        assert!(err.to_string().len() < 200, "{err}");
        assert!(err.to_string().starts_with("line 2:"), "{err}");
    }

    /// A small deterministic generator, enough to mutate inputs.
    struct XorShift(u64);
    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    #[test]
    fn never_panics_on_prefixes() {
        for answer in [CHROME_ANSWER, NATIVE_ANSWER, &build_offer(&params())] {
            for (i, _) in answer.char_indices() {
                let _ = parse_answer(&answer[..i]);
            }
        }
    }

    #[test]
    fn never_panics_on_mutations() {
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        let interesting: &[&[u8]] = &[
            b"\r\n",
            b"\n",
            b"=",
            b":",
            b" ",
            b"m=",
            b"a=",
            b"0",
            b"/",
            b"\xff",
            b"\xe3\x81\x82",
            b"a=ssrc:",
            b"a=msid:",
            b"m=video 0 ",
            b"a=setup:",
            b"4294967296",
            b"-1",
        ];
        for answer in [CHROME_ANSWER, NATIVE_ANSWER] {
            for _ in 0..3000 {
                let mut bytes = answer.as_bytes().to_vec();
                for _ in 0..1 + rng.below(8) {
                    let pos = rng.below(bytes.len() + 1);
                    match rng.below(4) {
                        0 if pos < bytes.len() => {
                            let end = (pos + rng.below(40)).min(bytes.len());
                            bytes.drain(pos..end);
                        }
                        1 => {
                            let ins = interesting[rng.below(interesting.len())];
                            bytes.splice(pos..pos, ins.iter().copied());
                        }
                        2 if pos < bytes.len() => bytes[pos] = rng.next() as u8,
                        _ => {
                            let len = bytes.len();
                            let from = rng.below(len);
                            let end = (from + rng.below(60)).min(len);
                            let chunk = bytes[from..end].to_vec();
                            bytes.splice(pos..pos, chunk);
                        }
                    }
                }
                let text = String::from_utf8_lossy(&bytes);
                let _ = parse_answer(&text);
            }
        }
    }
}

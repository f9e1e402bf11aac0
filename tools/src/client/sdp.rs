//! SDP for the answering side, sans-IO: read the server's offer, write an
//! answer that mirrors every m-line.
//!
//! Directions are as written in the text: an offer's `a=recvonly` section is
//! the client's upstream (answered `a=sendonly` with `a=ssrc`), an offer's
//! `a=sendonly` section is a forwarded track (answered `a=recvonly`).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

/// An m-line direction as written in the SDP.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    SendRecv,
    SendOnly,
    RecvOnly,
    Inactive,
}

impl Direction {
    pub fn parse(s: &str) -> Option<Direction> {
        match s {
            "sendrecv" => Some(Direction::SendRecv),
            "sendonly" => Some(Direction::SendOnly),
            "recvonly" => Some(Direction::RecvOnly),
            "inactive" => Some(Direction::Inactive),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Direction::SendRecv => "sendrecv",
            Direction::SendOnly => "sendonly",
            Direction::RecvOnly => "recvonly",
            Direction::Inactive => "inactive",
        }
    }

    /// The answer to an offered direction: what the offerer sends, the
    /// answerer receives, and the other way round.
    pub fn mirrored(self) -> Direction {
        match self {
            Direction::SendOnly => Direction::RecvOnly,
            Direction::RecvOnly => Direction::SendOnly,
            other => other,
        }
    }
}

/// One `a=ssrc` source of an m-line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SsrcLine {
    pub ssrc: u32,
    pub cname: Option<String>,
    /// `(stream_id, track_id)` from `a=ssrc:<ssrc> msid:`.
    pub msid: Option<(String, String)>,
}

/// One m-line of an offer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OfferSection {
    /// `audio` or `video`.
    pub kind: String,
    pub port: u16,
    pub protocol: String,
    pub mid: String,
    pub direction: Direction,
    pub payload_types: Vec<u8>,
    /// `a=rtpmap` values by payload type (`"VP9/90000"`).
    pub rtpmap: Vec<(u8, String)>,
    pub fmtp: Vec<(u8, String)>,
    pub rtcp_fb: Vec<(u8, String)>,
    pub ssrcs: Vec<SsrcLine>,
    /// `(stream_id, track_id)` from `a=msid`.
    pub msid: Option<(String, String)>,
    pub candidates: Vec<Candidate>,
}

impl OfferSection {
    /// The clock rate of the first payload type, from `a=rtpmap` (90 kHz if absent).
    pub fn clock_rate(&self) -> u32 {
        self.payload_types
            .first()
            .and_then(|pt| self.rtpmap.iter().find(|(p, _)| p == pt))
            .and_then(|(_, m)| m.split('/').nth(1))
            .and_then(|r| r.parse().ok())
            .unwrap_or(90_000)
    }

    /// The encoding name of the first payload type (`"VP9"`, `"opus"`).
    pub fn codec_name(&self) -> Option<&str> {
        let pt = self.payload_types.first()?;
        let (_, m) = self.rtpmap.iter().find(|(p, _)| p == pt)?;
        m.split('/').next()
    }
}

/// An `a=candidate` line, reduced to its address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub foundation: String,
    pub component: u16,
    pub transport: String,
    pub priority: u32,
    pub addr: SocketAddr,
    pub typ: String,
}

/// The server's offer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Offer {
    pub session_id: String,
    pub version: u64,
    pub ice_lite: bool,
    pub ice_ufrag: String,
    pub ice_pwd: String,
    /// `(algorithm, value)` of `a=fingerprint`.
    pub fingerprint: (String, String),
    pub setup: Option<String>,
    pub bundle: Vec<String>,
    pub sections: Vec<OfferSection>,
}

impl Offer {
    /// The first UDP host candidate of the offer.
    pub fn host_candidate(&self) -> Option<SocketAddr> {
        self.sections
            .iter()
            .flat_map(|s| s.candidates.iter())
            .find(|c| {
                c.typ == "host" && c.transport.eq_ignore_ascii_case("udp") && c.component == 1
            })
            .map(|c| c.addr)
    }

    pub fn section(&self, mid: &str) -> Option<&OfferSection> {
        self.sections.iter().find(|s| s.mid == mid)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SdpError {
    pub line: usize,
    pub reason: String,
}

impl std::fmt::Display for SdpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "offer line {}: {}", self.line, self.reason)
    }
}

impl std::error::Error for SdpError {}

fn err(line: usize, reason: impl Into<String>) -> SdpError {
    SdpError {
        line,
        reason: reason.into(),
    }
}

fn parse_pt_value(line: usize, arg: &str) -> Result<(u8, String), SdpError> {
    let (pt, rest) = arg.split_once(' ').unwrap_or((arg, ""));
    let pt = pt
        .parse::<u8>()
        .map_err(|_| err(line, format!("bad payload type in {arg:?}")))?;
    Ok((pt, rest.trim().to_owned()))
}

fn parse_candidate(line: usize, arg: &str) -> Result<Candidate, SdpError> {
    let f: Vec<&str> = arg.split_whitespace().collect();
    if f.len() < 8 || f[6] != "typ" {
        return Err(err(line, format!("bad candidate {arg:?}")));
    }
    let ip: IpAddr = f[4]
        .parse()
        .map_err(|_| err(line, format!("bad candidate address {:?}", f[4])))?;
    let port: u16 = f[5]
        .parse()
        .map_err(|_| err(line, format!("bad candidate port {:?}", f[5])))?;
    Ok(Candidate {
        foundation: f[0].to_owned(),
        component: f[1]
            .parse()
            .map_err(|_| err(line, "bad candidate component"))?,
        transport: f[2].to_owned(),
        priority: f[3]
            .parse()
            .map_err(|_| err(line, "bad candidate priority"))?,
        addr: SocketAddr::new(ip, port),
        typ: f[7].to_owned(),
    })
}

/// Parses the server's offer. Transport attributes may sit at session level
/// or in the m-lines; the first one found wins.
pub fn parse_offer(sdp: &str) -> Result<Offer, SdpError> {
    let mut offer = Offer {
        session_id: String::new(),
        version: 0,
        ice_lite: false,
        ice_ufrag: String::new(),
        ice_pwd: String::new(),
        fingerprint: (String::new(), String::new()),
        setup: None,
        bundle: Vec::new(),
        sections: Vec::new(),
    };
    let mut seen_v = false;
    for (i, raw) in sdp.split('\n').enumerate() {
        let n = i + 1;
        let text = raw.strip_suffix('\r').unwrap_or(raw);
        if text.trim().is_empty() {
            continue;
        }
        let Some((k, v)) = text.split_once('=') else {
            return Err(err(n, format!("expected <letter>=<value>, got {text:?}")));
        };
        if !seen_v {
            if k != "v" || v != "0" {
                return Err(err(n, "the SDP must start with v=0"));
            }
            seen_v = true;
            continue;
        }
        match k {
            "o" => {
                let f: Vec<&str> = v.split_whitespace().collect();
                if f.len() >= 3 {
                    offer.session_id = f[1].to_owned();
                    offer.version = f[2].parse().unwrap_or(0);
                }
            }
            "m" => {
                let f: Vec<&str> = v.split_whitespace().collect();
                if f.len() < 3 {
                    return Err(err(n, format!("bad m-line {v:?}")));
                }
                let port = f[1]
                    .parse()
                    .map_err(|_| err(n, format!("bad m-line port {:?}", f[1])))?;
                let mut pts = Vec::new();
                for p in &f[3..] {
                    pts.push(
                        p.parse::<u8>()
                            .map_err(|_| err(n, format!("bad payload type {p:?}")))?,
                    );
                }
                offer.sections.push(OfferSection {
                    kind: f[0].to_owned(),
                    port,
                    protocol: f[2].to_owned(),
                    mid: String::new(),
                    direction: Direction::SendRecv,
                    payload_types: pts,
                    rtpmap: Vec::new(),
                    fmtp: Vec::new(),
                    rtcp_fb: Vec::new(),
                    ssrcs: Vec::new(),
                    msid: None,
                    candidates: Vec::new(),
                });
            }
            "a" => {
                let (name, arg) = match v.split_once(':') {
                    Some((a, b)) => (a, b),
                    None => (v, ""),
                };
                // Transport attributes are read wherever they appear.
                match name {
                    "ice-ufrag" if offer.ice_ufrag.is_empty() => offer.ice_ufrag = arg.to_owned(),
                    "ice-pwd" if offer.ice_pwd.is_empty() => offer.ice_pwd = arg.to_owned(),
                    "fingerprint" if offer.fingerprint.1.is_empty() => {
                        let (algo, value) = arg
                            .split_once(' ')
                            .ok_or_else(|| err(n, format!("bad fingerprint {arg:?}")))?;
                        offer.fingerprint = (algo.to_ascii_lowercase(), value.trim().to_owned());
                    }
                    "setup" if offer.setup.is_none() => offer.setup = Some(arg.to_owned()),
                    "ice-lite" => offer.ice_lite = true,
                    "group" => {
                        let mut f = arg.split_whitespace();
                        if f.next() == Some("BUNDLE") {
                            offer.bundle = f.map(str::to_owned).collect();
                        }
                    }
                    _ => {}
                }
                let Some(sec) = offer.sections.last_mut() else {
                    continue;
                };
                match name {
                    "mid" => sec.mid = arg.to_owned(),
                    "sendrecv" | "sendonly" | "recvonly" | "inactive" => {
                        sec.direction = Direction::parse(name).expect("matched above")
                    }
                    "rtpmap" => sec.rtpmap.push(parse_pt_value(n, arg)?),
                    "fmtp" => sec.fmtp.push(parse_pt_value(n, arg)?),
                    "rtcp-fb" => sec.rtcp_fb.push(parse_pt_value(n, arg)?),
                    "msid" => {
                        let mut f = arg.split_whitespace();
                        if let (Some(s), t) = (f.next(), f.next()) {
                            sec.msid = Some((s.to_owned(), t.unwrap_or("").to_owned()));
                        }
                    }
                    "ssrc" => {
                        let (id, rest) = arg.split_once(' ').unwrap_or((arg, ""));
                        let ssrc: u32 =
                            id.parse().map_err(|_| err(n, format!("bad ssrc {id:?}")))?;
                        let idx = match sec.ssrcs.iter().position(|s| s.ssrc == ssrc) {
                            Some(i) => i,
                            None => {
                                sec.ssrcs.push(SsrcLine {
                                    ssrc,
                                    cname: None,
                                    msid: None,
                                });
                                sec.ssrcs.len() - 1
                            }
                        };
                        let entry = &mut sec.ssrcs[idx];
                        if let Some(c) = rest.strip_prefix("cname:") {
                            entry.cname = Some(c.to_owned());
                        } else if let Some(m) = rest.strip_prefix("msid:") {
                            let mut f = m.split_whitespace();
                            if let Some(s) = f.next() {
                                entry.msid =
                                    Some((s.to_owned(), f.next().unwrap_or("").to_owned()));
                            }
                        }
                    }
                    "candidate" => sec.candidates.push(parse_candidate(n, arg)?),
                    _ => {}
                }
            }
            _ => {}
        }
    }
    if !seen_v {
        return Err(err(0, "the SDP is empty"));
    }
    if offer.ice_ufrag.is_empty() {
        return Err(err(0, "no a=ice-ufrag"));
    }
    if offer.ice_pwd.is_empty() {
        return Err(err(0, "no a=ice-pwd"));
    }
    if offer.fingerprint.1.is_empty() {
        return Err(err(0, "no a=fingerprint"));
    }
    for (i, s) in offer.sections.iter().enumerate() {
        if s.mid.is_empty() && s.port != 0 {
            return Err(err(0, format!("m-line {i} has no a=mid")));
        }
    }
    Ok(offer)
}

/// A track this client sends on one of its upstream m-lines.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalTrack {
    pub ssrc: u32,
    pub cname: String,
    pub stream_id: String,
    pub track_id: String,
}

/// What the answer is made of besides the offer.
#[derive(Clone, Debug)]
pub struct AnswerParams {
    pub session_id: u64,
    pub version: u64,
    pub ice_ufrag: String,
    pub ice_pwd: String,
    /// SHA-256 of this client's DTLS certificate, upper case colon hex.
    pub fingerprint_sha256: String,
    /// mid -> the track sent on it. A section the offer has `recvonly` with no
    /// track here is answered `inactive`.
    pub tracks: HashMap<String, LocalTrack>,
}

/// Writes the answer to `offer`: every m-line mirrored in order, same payload
/// types, `a=setup:active`, the client's ICE credentials and fingerprint.
pub fn build_answer(offer: &Offer, p: &AnswerParams) -> String {
    let mut sdp = String::with_capacity(512 + 512 * offer.sections.len());
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
    let accepted: Vec<&str> = offer
        .sections
        .iter()
        .filter(|s| s.port != 0)
        .map(|s| s.mid.as_str())
        .collect();
    if !accepted.is_empty() {
        line!("a=group:BUNDLE {}", accepted.join(" "));
    }
    line!("a=msid-semantic: WMS *");
    for s in &offer.sections {
        let pts: Vec<String> = s.payload_types.iter().map(u8::to_string).collect();
        let port = if s.port == 0 { 0 } else { 9 };
        line!("m={} {port} {} {}", s.kind, s.protocol, pts.join(" "));
        line!("c=IN IP4 0.0.0.0");
        if port == 0 {
            if !s.mid.is_empty() {
                line!("a=mid:{}", s.mid);
            }
            line!("a=inactive");
            continue;
        }
        line!("a=rtcp:9 IN IP4 0.0.0.0");
        line!("a=ice-ufrag:{}", p.ice_ufrag);
        line!("a=ice-pwd:{}", p.ice_pwd);
        line!("a=fingerprint:sha-256 {}", p.fingerprint_sha256);
        line!("a=setup:active");
        line!("a=mid:{}", s.mid);
        let track = p.tracks.get(&s.mid);
        let dir = match (s.direction, track) {
            (Direction::RecvOnly, None) => Direction::Inactive,
            (Direction::SendRecv, None) => Direction::RecvOnly,
            (d, _) => d.mirrored(),
        };
        line!("a={}", dir.as_str());
        let sends = matches!(dir, Direction::SendOnly | Direction::SendRecv);
        if let (true, Some(t)) = (sends, track) {
            line!("a=msid:{} {}", t.stream_id, t.track_id);
        }
        line!("a=rtcp-mux");
        line!("a=rtcp-rsize");
        for pt in &s.payload_types {
            if let Some((_, m)) = s.rtpmap.iter().find(|(p, _)| p == pt) {
                line!("a=rtpmap:{pt} {m}");
            }
            for (_, fb) in s.rtcp_fb.iter().filter(|(p, _)| p == pt) {
                line!("a=rtcp-fb:{pt} {fb}");
            }
            if let Some((_, f)) = s.fmtp.iter().find(|(p, _)| p == pt) {
                line!("a=fmtp:{pt} {f}");
            }
        }
        if let (true, Some(t)) = (sends, track) {
            line!("a=ssrc:{} cname:{}", t.ssrc, t.cname);
            line!("a=ssrc:{} msid:{} {}", t.ssrc, t.stream_id, t.track_id);
        }
    }
    sdp
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An offer of the shape the server writes: own upstream audio and video,
    /// one forwarded video, one inactive section.
    const OFFER: &str = "v=0\r\n\
o=- 4611731400430051336 2 IN IP4 127.0.0.1\r\n\
s=-\r\n\
t=0 0\r\n\
a=group:BUNDLE 0 1 2 3\r\n\
a=ice-lite\r\n\
a=msid-semantic: WMS *\r\n\
m=audio 50061 UDP/TLS/RTP/SAVPF 111\r\n\
c=IN IP4 127.0.0.61\r\n\
a=mid:0\r\n\
a=recvonly\r\n\
a=ice-ufrag:SrvUfrag12345678\r\n\
a=ice-pwd:SrvPwd0123456789012345678901234\r\n\
a=fingerprint:sha-256 AA:BB:CC\r\n\
a=setup:actpass\r\n\
a=rtcp-mux\r\n\
a=rtcp-rsize\r\n\
a=rtpmap:111 opus/48000/2\r\n\
a=fmtp:111 minptime=10;useinbandfec=1\r\n\
a=candidate:1 1 udp 2130706431 127.0.0.61 50061 typ host\r\n\
a=end-of-candidates\r\n\
m=video 50061 UDP/TLS/RTP/SAVPF 98\r\n\
c=IN IP4 127.0.0.61\r\n\
a=mid:1\r\n\
a=recvonly\r\n\
a=ice-ufrag:SrvUfrag12345678\r\n\
a=ice-pwd:SrvPwd0123456789012345678901234\r\n\
a=fingerprint:sha-256 AA:BB:CC\r\n\
a=setup:actpass\r\n\
a=rtpmap:98 VP9/90000\r\n\
a=fmtp:98 profile-id=0\r\n\
a=rtcp-fb:98 nack\r\n\
a=rtcp-fb:98 nack pli\r\n\
a=candidate:1 1 udp 2130706431 127.0.0.61 50061 typ host\r\n\
m=video 50061 UDP/TLS/RTP/SAVPF 102\r\n\
c=IN IP4 127.0.0.61\r\n\
a=mid:2\r\n\
a=sendonly\r\n\
a=rtpmap:102 H264/90000\r\n\
a=msid:PUBCONN video-PUB\r\n\
a=ssrc:3000000000 cname:PUBCONN\r\n\
a=ssrc:3000000000 msid:PUBCONN video-PUB\r\n\
m=video 50061 UDP/TLS/RTP/SAVPF 45\r\n\
c=IN IP4 127.0.0.61\r\n\
a=mid:3\r\n\
a=inactive\r\n\
a=rtpmap:45 AV1/90000\r\n";

    fn params() -> AnswerParams {
        let mut tracks = HashMap::new();
        for (mid, ssrc) in [("0", 11u32), ("1", 22)] {
            tracks.insert(
                mid.to_owned(),
                LocalTrack {
                    ssrc,
                    cname: "cn".into(),
                    stream_id: "stream".into(),
                    track_id: format!("track{mid}"),
                },
            );
        }
        AnswerParams {
            session_id: 42,
            version: 2,
            ice_ufrag: "cliU".into(),
            ice_pwd: "clientpassword0123456789".into(),
            fingerprint_sha256: "01:02".into(),
            tracks,
        }
    }

    #[test]
    fn parses_offer() {
        let o = parse_offer(OFFER).unwrap();
        assert!(o.ice_lite);
        assert_eq!(o.version, 2);
        assert_eq!(o.ice_ufrag, "SrvUfrag12345678");
        assert_eq!(o.ice_pwd, "SrvPwd0123456789012345678901234");
        assert_eq!(o.fingerprint, ("sha-256".into(), "AA:BB:CC".into()));
        assert_eq!(o.bundle, ["0", "1", "2", "3"]);
        assert_eq!(
            o.host_candidate(),
            Some("127.0.0.61:50061".parse().unwrap())
        );
        assert_eq!(o.sections.len(), 4);
        let s = &o.sections[1];
        assert_eq!(
            (s.kind.as_str(), s.mid.as_str(), s.direction),
            ("video", "1", Direction::RecvOnly)
        );
        assert_eq!(s.payload_types, [98]);
        assert_eq!(s.codec_name(), Some("VP9"));
        assert_eq!(s.clock_rate(), 90_000);
        assert_eq!(o.sections[0].clock_rate(), 48_000);
        let f = &o.sections[2];
        assert_eq!(f.direction, Direction::SendOnly);
        assert_eq!(f.ssrcs.len(), 1);
        assert_eq!(f.ssrcs[0].ssrc, 3_000_000_000);
        assert_eq!(f.ssrcs[0].cname.as_deref(), Some("PUBCONN"));
        assert_eq!(
            f.ssrcs[0].msid,
            Some(("PUBCONN".into(), "video-PUB".into()))
        );
        assert_eq!(f.msid, Some(("PUBCONN".into(), "video-PUB".into())));
        assert_eq!(o.sections[3].direction, Direction::Inactive);
    }

    #[test]
    fn offer_errors() {
        assert!(parse_offer("").is_err());
        assert!(parse_offer("o=- 1 1 IN IP4 0.0.0.0\r\n").is_err());
        let no_pwd = OFFER.replace("a=ice-pwd:", "a=x-ice-pwd:");
        assert!(parse_offer(&no_pwd).unwrap_err().reason.contains("ice-pwd"));
        let bad_ssrc = OFFER.replace("a=ssrc:3000000000 cname", "a=ssrc:-3 cname");
        assert!(parse_offer(&bad_ssrc).is_err());
    }

    #[test]
    fn answer_mirrors_each_m_line() {
        let o = parse_offer(OFFER).unwrap();
        let a = build_answer(&o, &params());
        assert!(a.starts_with("v=0\r\no=- 42 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"));
        assert!(a.contains("\r\na=group:BUNDLE 0 1 2 3\r\n"));
        let blocks: Vec<&str> = a.split("m=").skip(1).collect();
        assert_eq!(blocks.len(), 4);
        assert!(blocks[0].starts_with("audio 9 UDP/TLS/RTP/SAVPF 111\r\n"));
        assert!(blocks[0].contains("a=sendonly\r\n"));
        assert!(blocks[0].contains("a=ssrc:11 cname:cn\r\n"));
        assert!(blocks[0].contains("a=ssrc:11 msid:stream track0\r\n"));
        assert!(blocks[0].contains("a=msid:stream track0\r\n"));
        assert!(blocks[0].contains("a=rtpmap:111 opus/48000/2\r\n"));
        assert!(blocks[1].starts_with("video 9 UDP/TLS/RTP/SAVPF 98\r\n"));
        assert!(blocks[1].contains("a=ssrc:22 cname:cn\r\n"));
        assert!(blocks[1].contains("a=rtcp-fb:98 nack pli\r\n"));
        assert!(blocks[1].contains("a=fmtp:98 profile-id=0\r\n"));
        assert!(blocks[2].contains("a=recvonly\r\n"));
        assert!(!blocks[2].contains("a=ssrc"));
        assert!(!blocks[2].contains("a=msid"));
        assert!(blocks[3].contains("a=inactive\r\n"));
        for b in &blocks {
            assert!(b.contains("a=setup:active\r\n"));
            assert!(b.contains("a=ice-ufrag:cliU\r\n"));
            assert!(b.contains("a=ice-pwd:clientpassword0123456789\r\n"));
            assert!(b.contains("a=fingerprint:sha-256 01:02\r\n"));
            assert!(b.contains("a=rtcp-mux\r\n"));
        }
        assert!(a.ends_with("\r\n"));
        assert!(!a.contains("\n\n"));
    }

    #[test]
    fn upstream_without_track_is_inactive() {
        let o = parse_offer(OFFER).unwrap();
        let mut p = params();
        p.tracks.remove("0");
        let a = build_answer(&o, &p);
        let blocks: Vec<&str> = a.split("m=").skip(1).collect();
        assert!(blocks[0].contains("a=inactive\r\n"));
        assert!(!blocks[0].contains("a=ssrc"));
    }

    #[test]
    fn rejected_section_stays_rejected() {
        let o = parse_offer(&OFFER.replace(
            "m=video 50061 UDP/TLS/RTP/SAVPF 45",
            "m=video 0 UDP/TLS/RTP/SAVPF 45",
        ))
        .unwrap();
        let a = build_answer(&o, &params());
        assert!(a.contains("a=group:BUNDLE 0 1 2\r\n"));
        assert!(a.contains("m=video 0 UDP/TLS/RTP/SAVPF 45\r\n"));
    }

    /// The server's own parser accepts the answer and reads it the same way.
    #[test]
    fn server_reads_the_answer() {
        use controlplane::sdp::{parse_answer, Direction as SrvDir, Setup};
        let o = parse_offer(OFFER).unwrap();
        let a = parse_answer(&build_answer(&o, &params())).expect("server accepts the answer");
        assert_eq!(a.ice_ufrag, "cliU");
        assert_eq!(a.ice_pwd, "clientpassword0123456789");
        assert_eq!(a.fingerprint, Some(("sha-256".into(), "01:02".into())));
        assert_eq!(a.setup, Setup::Active);
        assert_eq!(a.bundle_mids, ["0", "1", "2", "3"]);
        assert_eq!(a.sections.len(), 4);
        assert_eq!(a.sections[0].direction, SrvDir::RecvOnly);
        assert_eq!(a.sections[0].ssrcs, [11]);
        assert_eq!(a.sections[1].ssrcs, [22]);
        assert_eq!(a.sections[1].payload_types, [98]);
        assert_eq!(a.sections[2].direction, SrvDir::SendOnly);
        assert_eq!(a.sections[3].direction, SrvDir::Inactive);
    }

    /// The server's offer builder's output parses here.
    #[test]
    fn parses_server_built_offer() {
        use controlplane::sdp::{
            build_offer, Codec, Direction as SrvDir, MediaSection, OfferParams, SsrcInfo,
        };
        use shared::MediaKind;
        let p = OfferParams {
            session_id: 1,
            version: 3,
            ice_ufrag: "abcd".into(),
            ice_pwd: "0123456789012345678901".into(),
            fingerprint_sha256: "AB:CD".into(),
            candidate_ip: "127.0.0.61".parse().unwrap(),
            candidate_port: 50061,
            sections: vec![
                MediaSection {
                    mid: "0".into(),
                    kind: MediaKind::Video,
                    direction: SrvDir::RecvOnly,
                    codec: Codec::Vp8,
                    ssrc: None,
                },
                MediaSection {
                    mid: "1".into(),
                    kind: MediaKind::Video,
                    direction: SrvDir::SendOnly,
                    codec: Codec::Vp8,
                    ssrc: Some(SsrcInfo {
                        ssrc: 77,
                        cname: "c".into(),
                        stream_id: "s".into(),
                        track_id: "t".into(),
                    }),
                },
            ],
        };
        let o = parse_offer(&build_offer(&p)).unwrap();
        assert_eq!(o.version, 3);
        assert_eq!(
            o.host_candidate(),
            Some("127.0.0.61:50061".parse().unwrap())
        );
        assert_eq!(o.sections[0].direction, Direction::RecvOnly);
        assert_eq!(o.sections[0].payload_types, [96]);
        assert_eq!(o.sections[1].ssrcs[0].ssrc, 77);
        assert_eq!(o.sections[1].ssrcs[0].msid, Some(("s".into(), "t".into())));
    }
}

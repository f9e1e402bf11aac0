//! Media without IO: RTP packets that carry a marker (sender sequence and
//! send time), per-SSRC receive accounting with gap detection, RTCP
//! feedback (PLI, NACK) and a summary of received RTCP.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::Serialize;

/// Four bytes that open the payload of every packet this client sends.
pub const MARKER_MAGIC: [u8; 4] = *b"SLG1";
/// Magic, sender packet counter (u64), send time in µs since the epoch (u64).
pub const MARKER_LEN: usize = 4 + 8 + 8;
const RTP_HEADER_LEN: usize = 12;

/// RFC 7983 demux of one datagram on the shared socket.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Demux {
    Stun,
    Dtls,
    Rtp,
    Rtcp,
    Other,
}

/// Classifies a datagram by its first byte (and, for RTP/RTCP, the second:
/// RFC 5761 payload types 64..=95 are RTCP packet types 192..=223).
pub fn demux(pkt: &[u8]) -> Demux {
    match pkt.first() {
        Some(0..=3) => Demux::Stun,
        Some(20..=63) => Demux::Dtls,
        Some(128..=191) if pkt.len() >= 2 => {
            if (192..=223).contains(&pkt[1]) {
                Demux::Rtcp
            } else {
                Demux::Rtp
            }
        }
        _ => Demux::Other,
    }
}

pub fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Writes one plain RTP packet of `size` bytes in total (at least header +
/// marker): version 2, no padding, extension or CSRC.
pub fn build_rtp(
    payload_type: u8,
    seq: u16,
    timestamp: u32,
    ssrc: u32,
    counter: u64,
    sent_us: u64,
    size: usize,
) -> Vec<u8> {
    let size = size.max(RTP_HEADER_LEN + MARKER_LEN);
    let mut p = Vec::with_capacity(size);
    p.push(0x80);
    p.push(payload_type & 0x7F);
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&timestamp.to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend_from_slice(&MARKER_MAGIC);
    p.extend_from_slice(&counter.to_be_bytes());
    p.extend_from_slice(&sent_us.to_be_bytes());
    // Filler that is not all zeros, so nothing compresses it away.
    let mut x = (counter as u8).wrapping_mul(31);
    while p.len() < size {
        p.push(x);
        x = x.wrapping_add(1);
    }
    p
}

/// The fixed part of an RTP header and where the payload starts.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct RtpHeader {
    pub marker: bool,
    pub payload_type: u8,
    pub seq: u16,
    pub timestamp: u32,
    pub ssrc: u32,
    pub payload_offset: usize,
}

/// Parses an RTP header (CSRCs and a header extension skipped).
pub fn parse_rtp(p: &[u8]) -> Option<RtpHeader> {
    if p.len() < RTP_HEADER_LEN || p[0] >> 6 != 2 {
        return None;
    }
    let cc = (p[0] & 0x0F) as usize;
    let mut off = RTP_HEADER_LEN + 4 * cc;
    if p[0] & 0x10 != 0 {
        if p.len() < off + 4 {
            return None;
        }
        let words = u16::from_be_bytes([p[off + 2], p[off + 3]]) as usize;
        off += 4 + 4 * words;
    }
    if off > p.len() {
        return None;
    }
    Some(RtpHeader {
        marker: p[1] & 0x80 != 0,
        payload_type: p[1] & 0x7F,
        seq: u16::from_be_bytes([p[2], p[3]]),
        timestamp: u32::from_be_bytes([p[4], p[5], p[6], p[7]]),
        ssrc: u32::from_be_bytes([p[8], p[9], p[10], p[11]]),
        payload_offset: off,
    })
}

/// The marker of a payload written by [`build_rtp`]: (counter, sent µs).
pub fn parse_marker(payload: &[u8]) -> Option<(u64, u64)> {
    if payload.len() < MARKER_LEN || payload[..4] != MARKER_MAGIC {
        return None;
    }
    let mut a = [0u8; 8];
    a.copy_from_slice(&payload[4..12]);
    let mut b = [0u8; 8];
    b.copy_from_slice(&payload[12..20]);
    Some((u64::from_be_bytes(a), u64::from_be_bytes(b)))
}

/// What one received SSRC has delivered.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TrackStats {
    pub payload_type: u8,
    pub packets: u64,
    pub bytes: u64,
    /// Packets whose sequence number was already received (retransmissions
    /// of packets that were not lost, duplicates).
    pub duplicates: u64,
    /// Packets that filled a hole after a higher sequence number arrived.
    pub late: u64,
    /// Forward jumps of the sequence number (each a burst of missing packets).
    pub gaps: u64,
    /// Sequence numbers skipped by those jumps and not received since.
    pub missing: u64,
    pub first_ext_seq: u64,
    pub highest_ext_seq: u64,
    /// Packets with this client's payload marker.
    pub marked: u64,
    /// One-way latency from the marker's send time (one host, one clock).
    pub latency_sum_us: u64,
    pub latency_max_us: u64,
    pub first_arrival_us: u64,
    pub last_arrival_us: u64,
}

impl TrackStats {
    /// Sequence numbers from the first to the highest received.
    pub fn expected(&self) -> u64 {
        if self.packets == 0 {
            0
        } else {
            self.highest_ext_seq - self.first_ext_seq + 1
        }
    }

    pub fn mean_latency_us(&self) -> u64 {
        self.latency_sum_us.checked_div(self.marked).unwrap_or(0)
    }
}

/// At most this many missing sequence numbers are remembered per SSRC (so a
/// late arrival can be told from a duplicate); beyond it they are only counted.
const MAX_TRACKED_MISSING: usize = 8192;

/// Per-SSRC receive accounting for one SSRC.
#[derive(Debug, Default, Clone)]
pub struct TrackTracker {
    pub stats: TrackStats,
    missing: BTreeSet<u64>,
    untracked_missing: u64,
}

impl TrackTracker {
    /// The extended sequence number of `seq` closest to the highest so far.
    fn extend(&self, seq: u16) -> u64 {
        if self.stats.packets == 0 {
            // Start one cycle up so that an early reordered packet stays positive.
            return (1 << 16) | u64::from(seq);
        }
        let high = self.stats.highest_ext_seq;
        let cycle = high & !0xFFFF;
        let cand = [cycle.wrapping_sub(1 << 16), cycle, cycle + (1 << 16)];
        let mut best = cycle | u64::from(seq);
        let mut best_d = u64::MAX;
        for c in cand {
            if c > u64::MAX - 0xFFFF {
                continue;
            }
            let e = c | u64::from(seq);
            let d = e.abs_diff(high);
            if d < best_d {
                best_d = d;
                best = e;
            }
        }
        best
    }

    /// Accounts one received (decrypted) RTP packet.
    pub fn on_packet(&mut self, h: &RtpHeader, len: usize, payload: &[u8], now_us: u64) {
        let e = self.extend(h.seq);
        let s = &mut self.stats;
        if s.packets == 0 {
            s.payload_type = h.payload_type;
            s.first_ext_seq = e;
            s.highest_ext_seq = e;
            s.first_arrival_us = now_us;
        } else if e > s.highest_ext_seq {
            if e > s.highest_ext_seq + 1 {
                s.gaps += 1;
                for m in s.highest_ext_seq + 1..e {
                    if self.missing.len() < MAX_TRACKED_MISSING {
                        self.missing.insert(m);
                    } else {
                        self.untracked_missing += 1;
                    }
                }
            }
            s.highest_ext_seq = e;
        } else if self.missing.remove(&e) {
            s.late += 1;
        } else if e < s.first_ext_seq {
            // Older than the first packet seen: it widens the window.
            for m in e + 1..s.first_ext_seq {
                if self.missing.len() < MAX_TRACKED_MISSING {
                    self.missing.insert(m);
                } else {
                    self.untracked_missing += 1;
                }
            }
            s.first_ext_seq = e;
            s.late += 1;
        } else {
            s.duplicates += 1;
        }
        s.packets += 1;
        s.bytes += len as u64;
        s.last_arrival_us = now_us;
        if let Some((_, sent)) = parse_marker(payload) {
            s.marked += 1;
            let lat = now_us.saturating_sub(sent);
            s.latency_sum_us += lat;
            s.latency_max_us = s.latency_max_us.max(lat);
        }
        s.missing = self.missing.len() as u64 + self.untracked_missing;
    }

    /// Missing sequence numbers (16-bit) that a NACK could ask for, oldest first.
    pub fn missing_seqs(&self, max: usize) -> Vec<u16> {
        self.missing.iter().take(max).map(|e| *e as u16).collect()
    }
}

/// Counts of RTCP packets received, by kind.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RtcpCounts {
    pub compound: u64,
    pub sender_reports: u64,
    pub receiver_reports: u64,
    pub pli: u64,
    pub fir: u64,
    pub nack: u64,
    pub remb: u64,
    pub other: u64,
    pub unparsable: u64,
}

impl RtcpCounts {
    /// Accounts one decrypted (compound) RTCP packet.
    pub fn on_packet(&mut self, plain: &[u8]) {
        use rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
        use rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
        use rtcp::payload_feedbacks::receiver_estimated_maximum_bitrate::ReceiverEstimatedMaximumBitrate;
        use rtcp::receiver_report::ReceiverReport;
        use rtcp::sender_report::SenderReport;
        use rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;
        self.compound += 1;
        let mut buf = Bytes::copy_from_slice(plain);
        let Ok(pkts) = rtcp::packet::unmarshal(&mut buf) else {
            self.unparsable += 1;
            return;
        };
        for p in pkts {
            let any = p.as_any();
            if any.is::<SenderReport>() {
                self.sender_reports += 1;
            } else if any.is::<ReceiverReport>() {
                self.receiver_reports += 1;
            } else if any.is::<PictureLossIndication>() {
                self.pli += 1;
            } else if any.is::<FullIntraRequest>() {
                self.fir += 1;
            } else if any.is::<TransportLayerNack>() {
                self.nack += 1;
            } else if any.is::<ReceiverEstimatedMaximumBitrate>() {
                self.remb += 1;
            } else {
                self.other += 1;
            }
        }
    }
}

/// A plain RTCP PLI from `sender_ssrc` about `media_ssrc`.
pub fn build_pli(sender_ssrc: u32, media_ssrc: u32) -> Vec<u8> {
    use rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
    let pli = PictureLossIndication {
        sender_ssrc,
        media_ssrc,
    };
    rtcp::packet::marshal(&[Box::new(pli)])
        .map(|b| b.to_vec())
        .unwrap_or_default()
}

/// A plain RTCP generic NACK for `seqs` of `media_ssrc`.
pub fn build_nack(sender_ssrc: u32, media_ssrc: u32, seqs: &[u16]) -> Vec<u8> {
    use rtcp::transport_feedbacks::transport_layer_nack::{NackPair, TransportLayerNack};
    let mut sorted = seqs.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut nacks: Vec<NackPair> = Vec::new();
    for s in sorted {
        if let Some(last) = nacks.last_mut() {
            let d = s.wrapping_sub(last.packet_id);
            if (1..=16).contains(&d) {
                last.lost_packets |= 1 << (d - 1);
                continue;
            }
        }
        nacks.push(NackPair {
            packet_id: s,
            lost_packets: 0,
        });
    }
    let nack = TransportLayerNack {
        sender_ssrc,
        media_ssrc,
        nacks,
    };
    rtcp::packet::marshal(&[Box::new(nack)])
        .map(|b| b.to_vec())
        .unwrap_or_default()
}

/// Everything received, per SSRC.
#[derive(Debug, Default, Clone)]
pub struct Receiver {
    pub tracks: BTreeMap<u32, TrackTracker>,
    pub rtcp: RtcpCounts,
    /// RTP that did not parse after decryption.
    pub malformed: u64,
    /// SRTP/SRTCP that failed to decrypt.
    pub undecryptable: u64,
}

impl Receiver {
    pub fn on_rtp(&mut self, plain: &[u8], now_us: u64) {
        let Some(h) = parse_rtp(plain) else {
            self.malformed += 1;
            return;
        };
        self.tracks.entry(h.ssrc).or_default().on_packet(
            &h,
            plain.len(),
            &plain[h.payload_offset..],
            now_us,
        );
    }

    pub fn stats(&self) -> BTreeMap<u32, TrackStats> {
        self.tracks
            .iter()
            .map(|(k, v)| (*k, v.stats.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hdr(seq: u16) -> RtpHeader {
        RtpHeader {
            marker: false,
            payload_type: 96,
            seq,
            timestamp: 0,
            ssrc: 1,
            payload_offset: 12,
        }
    }

    #[test]
    fn demux_ranges() {
        assert_eq!(demux(&[0, 1]), Demux::Stun);
        assert_eq!(demux(&[22, 254]), Demux::Dtls);
        assert_eq!(demux(&[0x80, 96]), Demux::Rtp);
        assert_eq!(demux(&[0x80, 200]), Demux::Rtcp);
        assert_eq!(demux(&[0x81, 206]), Demux::Rtcp);
        assert_eq!(demux(&[0x80, 0x80 | 96]), Demux::Rtp);
        assert_eq!(demux(&[70]), Demux::Other);
        assert_eq!(demux(&[]), Demux::Other);
    }

    #[test]
    fn rtp_round_trip() {
        let p = build_rtp(98, 65535, 123456, 0xDEADBEEF, 7, 99, 1000);
        assert_eq!(p.len(), 1000);
        let h = parse_rtp(&p).unwrap();
        assert_eq!(
            (h.payload_type, h.seq, h.timestamp, h.ssrc),
            (98, 65535, 123456, 0xDEADBEEF)
        );
        assert_eq!(parse_marker(&p[h.payload_offset..]), Some((7, 99)));
        // Minimum size still holds the marker.
        assert_eq!(build_rtp(96, 0, 0, 0, 0, 0, 0).len(), 12 + MARKER_LEN);
    }

    #[test]
    fn tracker_counts_gaps_late_and_duplicates() {
        let mut t = TrackTracker::default();
        for s in [10u16, 11, 12, 15, 16] {
            t.on_packet(&hdr(s), 100, &[], 0);
        }
        assert_eq!(t.stats.gaps, 1);
        assert_eq!(t.stats.missing, 2);
        assert_eq!(t.missing_seqs(10), [13, 14]);
        t.on_packet(&hdr(13), 100, &[], 0);
        assert_eq!((t.stats.late, t.stats.missing), (1, 1));
        t.on_packet(&hdr(13), 100, &[], 0);
        assert_eq!(t.stats.duplicates, 1);
        assert_eq!(t.stats.expected(), 7);
        assert_eq!(t.stats.packets, 7);
    }

    #[test]
    fn tracker_handles_wrap() {
        let mut t = TrackTracker::default();
        for s in [65533u16, 65534, 65535, 0, 1, 3] {
            t.on_packet(&hdr(s), 10, &[], 0);
        }
        assert_eq!(t.stats.expected(), 7);
        assert_eq!(t.stats.missing, 1);
        assert_eq!(t.missing_seqs(4), [2]);
        assert_eq!(t.stats.duplicates, 0);
    }

    #[test]
    fn tracker_latency_from_marker() {
        let mut t = TrackTracker::default();
        let p = build_rtp(96, 1, 0, 1, 0, 1_000, 100);
        let h = parse_rtp(&p).unwrap();
        t.on_packet(&h, p.len(), &p[h.payload_offset..], 1_500);
        assert_eq!(
            (
                t.stats.marked,
                t.stats.latency_max_us,
                t.stats.mean_latency_us()
            ),
            (1, 500, 500)
        );
    }

    #[test]
    fn feedback_packets_parse() {
        let mut c = RtcpCounts::default();
        c.on_packet(&build_pli(1, 2));
        let nack = build_nack(1, 2, &[100, 101, 103, 140]);
        c.on_packet(&nack);
        assert_eq!((c.pli, c.nack), (1, 1));
        let mut b = Bytes::from(nack);
        let pkts = rtcp::packet::unmarshal(&mut b).unwrap();
        let n = pkts[0]
            .as_any()
            .downcast_ref::<rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack>()
            .unwrap();
        assert_eq!(n.nacks.len(), 2);
        assert_eq!(n.nacks[0].packet_id, 100);
        assert_eq!(n.nacks[0].lost_packets, 0b101);
        assert_eq!(n.nacks[1].packet_id, 140);
        c.on_packet(&[0x80, 0xC8]);
        assert_eq!(c.unparsable, 1);
    }
}

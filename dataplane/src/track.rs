//! A published track (mediasoup's Producer): its identity on both sides, the
//! retransmission buffer and the receive statistics behind receiver reports.

use std::time::{Duration, Instant};

use shared::{ConnId, MediaKind};

/// Largest RTP packet kept for retransmission (plaintext, header included).
pub const MAX_RTP_PACKET: usize = 1500;

/// Slots of the retransmission ring: about a second of packets. Video at a few
/// Mbit/s sends a few hundred packets a second; audio sends 50.
const VIDEO_SLOTS: usize = 512;
const AUDIO_SLOTS: usize = 64;

pub struct Track {
    pub publisher: ConnId,
    pub kind: MediaKind,
    pub payload_type: u8,
    pub clock_rate: u32,
    pub out_ssrc: u32,
    /// Learned from the first packet with this payload type.
    pub in_ssrc: Option<u32>,
    pub buffer: RetransmitBuffer,
    pub recv: ReceiveStats,
    /// Last sender report from the publisher: (NTP time, RTP time, arrival).
    pub last_sr: Option<(u64, u32, Instant)>,
    /// Last packet: (RTP timestamp, arrival), for sender reports when the
    /// publisher's own report is not known yet.
    pub last_packet: Option<(u32, Instant)>,
    pub packets: u64,
    pub octets: u64,
    /// When the last key frame request went to the publisher.
    pub last_pli: Option<Instant>,
    /// A key frame request waits for the rate limit or for the incoming SSRC.
    pub pli_pending: bool,
}

impl Track {
    pub fn new(
        publisher: ConnId,
        kind: MediaKind,
        payload_type: u8,
        clock_rate: u32,
        out_ssrc: u32,
    ) -> Self {
        let slots = match kind {
            MediaKind::Video => VIDEO_SLOTS,
            MediaKind::Audio => AUDIO_SLOTS,
        };
        Track {
            publisher,
            kind,
            payload_type,
            clock_rate: clock_rate.max(1),
            out_ssrc,
            in_ssrc: None,
            buffer: RetransmitBuffer::new(slots),
            recv: ReceiveStats::default(),
            last_sr: None,
            last_packet: None,
            packets: 0,
            octets: 0,
            last_pli: None,
            pli_pending: false,
        }
    }
}

/// A fixed ring of the last packets of a track, indexed by sequence number,
/// allocated once.
pub struct RetransmitBuffer {
    data: Vec<u8>,
    len: Vec<u16>,
    seq: Vec<u16>,
    stored_at: Vec<Option<Instant>>,
}

impl RetransmitBuffer {
    pub fn new(slots: usize) -> Self {
        debug_assert!(slots.is_power_of_two());
        RetransmitBuffer {
            data: vec![0; slots * MAX_RTP_PACKET],
            len: vec![0; slots],
            seq: vec![0; slots],
            stored_at: vec![None; slots],
        }
    }

    fn slot(&self, seq: u16) -> usize {
        seq as usize & (self.len.len() - 1)
    }

    /// Stores `pkt` as the packet with sequence number `seq`. Packets longer
    /// than [`MAX_RTP_PACKET`] are not kept.
    pub fn store(&mut self, seq: u16, pkt: &[u8], now: Instant) {
        let i = self.slot(seq);
        if pkt.len() > MAX_RTP_PACKET {
            self.stored_at[i] = None;
            return;
        }
        self.data[i * MAX_RTP_PACKET..i * MAX_RTP_PACKET + pkt.len()].copy_from_slice(pkt);
        self.len[i] = pkt.len() as u16;
        self.seq[i] = seq;
        self.stored_at[i] = Some(now);
    }

    /// The packet with sequence number `seq`, if still held and younger than
    /// `max_age`.
    pub fn get(&self, seq: u16, now: Instant, max_age: Duration) -> Option<&[u8]> {
        let i = self.slot(seq);
        let at = self.stored_at[i]?;
        if self.seq[i] != seq || now.saturating_duration_since(at) > max_age {
            return None;
        }
        Some(&self.data[i * MAX_RTP_PACKET..i * MAX_RTP_PACKET + self.len[i] as usize])
    }
}

/// RFC 3550 A.1/A.3/A.8 receive statistics of one incoming stream.
#[derive(Default)]
pub struct ReceiveStats {
    started: bool,
    base_seq: u32,
    max_seq: u16,
    cycles: u32,
    received: u64,
    expected_prior: u64,
    received_prior: u64,
    last_transit: i64,
    /// Interarrival jitter in timestamp units, scaled by 16 (RFC 3550 A.8).
    jitter_q4: u64,
}

/// The fields of a reception report block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportFields {
    pub fraction_lost: u8,
    pub total_lost: u32,
    pub extended_highest: u32,
    pub jitter: u32,
}

impl ReceiveStats {
    /// Records a packet; `arrival` is the arrival time in the stream's clock
    /// units (any origin).
    pub fn update(&mut self, seq: u16, rtp_ts: u32, arrival: u32) {
        if !self.started {
            self.started = true;
            self.base_seq = seq as u32;
            self.max_seq = seq;
            self.received = 1;
            self.last_transit = arrival.wrapping_sub(rtp_ts) as i32 as i64;
            return;
        }
        let delta = seq.wrapping_sub(self.max_seq);
        if delta != 0 && delta < 0x8000 {
            if seq < self.max_seq {
                self.cycles = self.cycles.wrapping_add(1 << 16);
            }
            self.max_seq = seq;
        }
        self.received += 1;
        let transit = arrival.wrapping_sub(rtp_ts) as i32 as i64;
        let d = (transit - self.last_transit).unsigned_abs();
        self.last_transit = transit;
        // J += (|D| - J) / 16, kept in Q4.
        self.jitter_q4 = self.jitter_q4 + d - ((self.jitter_q4 + 8) >> 4);
    }

    pub fn started(&self) -> bool {
        self.started
    }

    /// Report block fields since the previous call.
    pub fn report(&mut self) -> ReportFields {
        let extended_highest = self.cycles.wrapping_add(self.max_seq as u32);
        let expected = (extended_highest as u64 + 1).saturating_sub(self.base_seq as u64);
        let lost = expected as i64 - self.received as i64;
        let expected_interval = expected.saturating_sub(self.expected_prior);
        let received_interval = self.received.saturating_sub(self.received_prior);
        self.expected_prior = expected;
        self.received_prior = self.received;
        let lost_interval = expected_interval as i64 - received_interval as i64;
        let fraction_lost = if expected_interval == 0 || lost_interval <= 0 {
            0
        } else {
            ((lost_interval << 8) / expected_interval as i64).min(255) as u8
        };
        ReportFields {
            fraction_lost,
            // 24-bit signed on the wire; duplicates can make it negative.
            total_lost: lost.clamp(-0x80_0000, 0x7F_FFFF) as i32 as u32 & 0xFF_FFFF,
            extended_highest,
            jitter: (self.jitter_q4 >> 4) as u32,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffer_keeps_recent_packets_by_sequence() {
        let now = Instant::now();
        let mut b = RetransmitBuffer::new(8);
        for seq in 65530u16..=65535 {
            b.store(seq, &[seq as u8; 20], now);
        }
        b.store(0, &[7; 30], now);
        assert_eq!(
            b.get(65535, now, Duration::from_secs(1)),
            Some(&[255u8; 20][..])
        );
        assert_eq!(
            b.get(0, now, Duration::from_secs(1)).map(|p| p.len()),
            Some(30)
        );
        // 8 slots: 65528 was never stored and 65530 is overwritten by 2 later.
        assert!(b.get(65528, now, Duration::from_secs(1)).is_none());
        b.store(2, &[1; 10], now);
        assert!(b.get(65530, now, Duration::from_secs(1)).is_none());
        // Too old.
        let later = now + Duration::from_secs(2);
        assert!(b.get(2, later, Duration::from_secs(1)).is_none());
        // Too long to keep.
        b.store(3, &[0; MAX_RTP_PACKET + 1], now);
        assert!(b.get(3, now, Duration::from_secs(1)).is_none());
    }

    #[test]
    fn loss_and_wrap_are_counted() {
        let mut s = ReceiveStats::default();
        let mut ts = 0u32;
        for seq in (65500u16..=65535).chain(0..100) {
            ts = ts.wrapping_add(960);
            if seq % 10 == 3 {
                continue; // lost
            }
            s.update(seq, ts, ts);
        }
        let r = s.report();
        assert_eq!(r.extended_highest, 65536 + 99);
        assert_eq!(r.total_lost, 14);
        assert!(r.fraction_lost > 20 && r.fraction_lost < 30, "{r:?}");
        assert_eq!(r.jitter, 0);
        // Nothing new: no fraction lost.
        assert_eq!(s.report().fraction_lost, 0);
    }
}

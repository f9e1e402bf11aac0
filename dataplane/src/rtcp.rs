//! RTCP the core reads and writes (RFC 3550, RFC 4585, RFC 5104), through the
//! `rtcp` crate: it allocates, which is fine at RTCP rates (a few packets a
//! second per stream).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ::rtcp::packet::Packet;
use ::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use ::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use ::rtcp::receiver_report::ReceiverReport;
use ::rtcp::reception_report::ReceptionReport;
use ::rtcp::sender_report::SenderReport;
use ::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;

pub type RtcpPacket = Box<dyn Packet + Send + Sync>;

/// What the core acts on in an incoming compound packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Feedback {
    /// PLI or FIR for `media_ssrc`.
    KeyFrame { media_ssrc: u32, pli: bool },
    /// Generic NACK: the lost sequence numbers of `media_ssrc`.
    Nack { media_ssrc: u32, lost: Vec<u16> },
    /// A sender report of the peer's stream `ssrc`.
    SenderReport { ssrc: u32, ntp: u64, rtp: u32 },
}

/// Parses a decrypted compound RTCP packet into the feedback the core uses;
/// `None` if it does not parse.
pub fn parse(plain: &[u8]) -> Option<Vec<Feedback>> {
    let mut buf = plain;
    let packets = ::rtcp::packet::unmarshal(&mut buf).ok()?;
    let mut out = Vec::new();
    for p in &packets {
        let any = p.as_any();
        if let Some(pli) = any.downcast_ref::<PictureLossIndication>() {
            out.push(Feedback::KeyFrame {
                media_ssrc: pli.media_ssrc,
                pli: true,
            });
        } else if let Some(fir) = any.downcast_ref::<FullIntraRequest>() {
            for e in &fir.fir {
                out.push(Feedback::KeyFrame {
                    media_ssrc: e.ssrc,
                    pli: false,
                });
            }
        } else if let Some(nack) = any.downcast_ref::<TransportLayerNack>() {
            let lost = nack
                .nacks
                .iter()
                .flat_map(|pair| pair.into_iter())
                .collect();
            out.push(Feedback::Nack {
                media_ssrc: nack.media_ssrc,
                lost,
            });
        } else if let Some(sr) = any.downcast_ref::<SenderReport>() {
            out.push(Feedback::SenderReport {
                ssrc: sr.ssrc,
                ntp: sr.ntp_time,
                rtp: sr.rtp_time,
            });
        }
    }
    Some(out)
}

pub fn pli(sender_ssrc: u32, media_ssrc: u32) -> RtcpPacket {
    Box::new(PictureLossIndication {
        sender_ssrc,
        media_ssrc,
    })
}

/// One reception report block.
pub struct Block {
    pub ssrc: u32,
    pub fraction_lost: u8,
    pub total_lost: u32,
    pub extended_highest: u32,
    pub jitter: u32,
    /// Middle 32 bits of the NTP time of the last SR from this source.
    pub last_sender_report: u32,
    /// Delay since that SR, in 1/65536 s.
    pub delay: u32,
}

pub fn receiver_report(ssrc: u32, blocks: &[Block]) -> RtcpPacket {
    Box::new(ReceiverReport {
        ssrc,
        reports: blocks
            .iter()
            .map(|b| ReceptionReport {
                ssrc: b.ssrc,
                fraction_lost: b.fraction_lost,
                total_lost: b.total_lost,
                last_sequence_number: b.extended_highest,
                jitter: b.jitter,
                last_sender_report: b.last_sender_report,
                delay: b.delay,
            })
            .collect(),
        profile_extensions: bytes::Bytes::new(),
    })
}

pub fn sender_report(ssrc: u32, ntp: u64, rtp: u32, packets: u64, octets: u64) -> RtcpPacket {
    Box::new(SenderReport {
        ssrc,
        ntp_time: ntp,
        rtp_time: rtp,
        packet_count: packets as u32,
        octet_count: octets as u32,
        reports: Vec::new(),
        profile_extensions: bytes::Bytes::new(),
    })
}

/// Serializes a compound packet; `None` if the rtcp crate refuses it.
pub fn marshal(packets: &[RtcpPacket]) -> Option<bytes::Bytes> {
    ::rtcp::packet::marshal(packets).ok()
}

/// NTP seconds between 1900 and 1970.
const NTP_UNIX_OFFSET: u64 = 2_208_988_800;

/// A 64-bit NTP timestamp (32.32 fixed point since 1900).
pub fn ntp_from_system(t: SystemTime) -> u64 {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    ((since.as_secs() + NTP_UNIX_OFFSET) << 32) + ntp_fraction(since)
}

/// `d` as a 32.32 NTP duration.
pub fn ntp_duration(d: Duration) -> u64 {
    (d.as_secs() << 32) + ntp_fraction(d)
}

fn ntp_fraction(d: Duration) -> u64 {
    ((d.subsec_nanos() as u64) << 32) / 1_000_000_000
}

/// `d` in units of `clock_rate` Hz, wrapping like an RTP timestamp.
pub fn rtp_ticks(d: Duration, clock_rate: u32) -> u32 {
    (d.as_nanos() * clock_rate as u128 / 1_000_000_000) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use ::rtcp::transport_feedbacks::transport_layer_nack::NackPair;

    #[test]
    fn feedback_of_a_compound_packet() {
        let packets: Vec<RtcpPacket> = vec![
            sender_report(5, 0x1_0000_0000, 90, 1, 2),
            pli(1, 7),
            Box::new(TransportLayerNack {
                sender_ssrc: 1,
                media_ssrc: 7,
                nacks: vec![NackPair {
                    packet_id: 100,
                    lost_packets: 0b101,
                }],
            }),
        ];
        let raw = marshal(&packets).unwrap();
        let fb = parse(&raw).unwrap();
        assert_eq!(
            fb,
            vec![
                Feedback::SenderReport {
                    ssrc: 5,
                    ntp: 0x1_0000_0000,
                    rtp: 90
                },
                Feedback::KeyFrame {
                    media_ssrc: 7,
                    pli: true
                },
                Feedback::Nack {
                    media_ssrc: 7,
                    lost: vec![100, 101, 103]
                },
            ]
        );
        assert!(parse(&raw[..raw.len() - 3]).is_none());
    }

    #[test]
    fn ntp_conversion() {
        assert_eq!(
            ntp_duration(Duration::from_millis(1500)),
            (1 << 32) + (1 << 31)
        );
        assert_eq!(ntp_from_system(UNIX_EPOCH) >> 32, NTP_UNIX_OFFSET);
        assert_eq!(rtp_ticks(Duration::from_millis(20), 48_000), 960);
    }
}

//! Virtual-time harness: the core between fake peers that speak STUN and SRTP
//! with their own `webrtc-srtp` contexts.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant, UNIX_EPOCH};

use ::rtcp::packet::Packet;
use ::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use ::rtcp::receiver_report::ReceiverReport;
use ::rtcp::sender_report::SenderReport;
use ::rtcp::transport_feedbacks::transport_layer_nack::{NackPair, TransportLayerNack};
use shared::{ChannelKey, Command, ConnId, Event, MediaKind, SrtpProfile};
use webrtc_srtp::context::Context;

use super::{Core, CoreConfig};
use crate::srtp::protection_profile;
use crate::stun;

const VIDEO_PT: u8 = 96;
const AUDIO_PT: u8 = 111;
const OUT_VIDEO: u32 = 0x0A0B_0C0D;
const OUT_AUDIO: u32 = 0x0A0B_0C0E;
const IN_VIDEO: u32 = 0x1111_1111;
const IN_AUDIO: u32 = 0x2222_2222;

struct Peer {
    conn: ConnId,
    addr: SocketAddr,
    ufrag: String,
    pwd: String,
    /// Protects what the peer sends (the core's "remote" keys).
    tx: Context,
    /// Unprotects what the core sends (the core's "local" keys).
    rx: Context,
}

struct Harness {
    core: Core,
    now: Instant,
    inbox: HashMap<SocketAddr, Vec<Vec<u8>>>,
    events: Vec<Event>,
    profile: SrtpProfile,
}

fn keys(conn: ConnId, profile: SrtpProfile) -> (Vec<u8>, Vec<u8>, Vec<u8>, Vec<u8>) {
    let salt_len = protection_profile(profile).salt_len();
    let b = conn.0 as u8;
    (
        vec![b; 16],
        vec![b ^ 0x10; salt_len],
        vec![b ^ 0x20; 16],
        vec![b ^ 0x30; salt_len],
    )
}

fn rtp(pt: u8, seq: u16, ts: u32, ssrc: u32, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0x80, pt];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&ts.to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

impl Harness {
    fn new(profile: SrtpProfile) -> Self {
        let config = CoreConfig {
            wallclock: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            ..CoreConfig::default()
        };
        Harness {
            core: Core::new(0, config),
            now: Instant::now(),
            inbox: HashMap::new(),
            events: Vec::new(),
            profile,
        }
    }

    fn drain(&mut self) {
        while let Some(t) = self.core.poll_transmit() {
            self.inbox
                .entry(t.destination)
                .or_default()
                .push(t.contents.to_vec());
        }
        while let Some(ev) = self.core.poll_event() {
            self.events.push(ev);
        }
    }

    fn command(&mut self, cmd: Command) {
        self.core.handle_command(self.now, cmd);
        self.drain();
    }

    fn send(&mut self, from: SocketAddr, pkt: &[u8]) {
        let mut pkt = pkt.to_vec();
        self.core.handle_datagram(self.now, from, &mut pkt);
        self.drain();
    }

    fn advance(&mut self, d: Duration) {
        let end = self.now + d;
        loop {
            match self.core.poll_timeout() {
                Some(t) if t <= end => {
                    self.now = self.now.max(t);
                    self.core.handle_timeout(self.now);
                    self.drain();
                }
                _ => break,
            }
        }
        self.now = end;
    }

    fn take(&mut self, addr: SocketAddr) -> Vec<Vec<u8>> {
        self.inbox.remove(&addr).unwrap_or_default()
    }

    /// Adds a connection (without keys) and returns its peer.
    fn add_peer(&mut self, id: u32, port: u16) -> Peer {
        let conn = ConnId(id);
        let ufrag = format!("srv{id}");
        let pwd = format!("password-of-connection-{id}");
        self.command(Command::AddConnection {
            conn,
            channel: ChannelKey(1),
            local_ufrag: ufrag.clone(),
            local_pwd: pwd.clone(),
            send: true,
            recv: true,
        });
        let (lk, ls, rk, rs) = keys(conn, self.profile);
        let pp = protection_profile(self.profile);
        Peer {
            conn,
            addr: SocketAddr::from(([192, 0, 2, id as u8], port)),
            ufrag,
            pwd,
            tx: Context::new(&rk, &rs, pp, None, None).unwrap(),
            rx: Context::new(&lk, &ls, pp, None, None).unwrap(),
        }
    }

    fn install_keys(&mut self, peer: &Peer) {
        let (local_key, local_salt, remote_key, remote_salt) = keys(peer.conn, self.profile);
        self.command(Command::SetSrtpKeys {
            conn: peer.conn,
            profile: self.profile,
            local_key,
            local_salt,
            remote_key,
            remote_salt,
        });
    }

    /// One connectivity check from `from`; returns the response, if any.
    fn check(&mut self, peer: &Peer, from: SocketAddr, use_candidate: bool) -> Option<Vec<u8>> {
        let mut req = Vec::new();
        let user = format!("{}:peerfrag", peer.ufrag);
        stun::write_binding_request(
            &mut req,
            &[7; 12],
            user.as_bytes(),
            peer.pwd.as_bytes(),
            use_candidate,
        );
        self.send(from, &req);
        let mut got = self.take(from);
        assert!(got.len() <= 1);
        got.pop()
    }

    /// A connected peer: ICE done, keys installed.
    fn connect(&mut self, id: u32) -> Peer {
        let peer = self.add_peer(id, 50_000 + id as u16);
        let resp = self
            .check(&peer, peer.addr, true)
            .expect("binding response");
        let msg = stun::StunMessage::parse(&resp).unwrap();
        assert_eq!(msg.message_type, stun::BINDING_SUCCESS);
        msg.verify_integrity(peer.pwd.as_bytes()).unwrap();
        assert_eq!(stun::xor_mapped_address(&resp), Some(peer.addr));
        self.install_keys(&peer);
        peer
    }

    /// Publisher 1 with a video and an audio track, subscriber 2 subscribed.
    fn publish_subscribe(&mut self) -> (Peer, Peer) {
        let publisher = self.connect(1);
        let subscriber = self.connect(2);
        for (kind, pt, out_ssrc, clock_rate) in [
            (MediaKind::Video, VIDEO_PT, OUT_VIDEO, 90_000),
            (MediaKind::Audio, AUDIO_PT, OUT_AUDIO, 48_000),
        ] {
            self.command(Command::AddPublisherTrack {
                conn: publisher.conn,
                kind,
                payload_type: pt,
                clock_rate,
                out_ssrc,
            });
        }
        self.command(Command::Subscribe {
            subscriber: subscriber.conn,
            publisher: publisher.conn,
        });
        (publisher, subscriber)
    }

    fn publish(&mut self, publisher: &mut Peer, pt: u8, seq: u16, ssrc: u32) {
        let plain = rtp(pt, seq, seq as u32 * 3000, ssrc, &[seq as u8; 100]);
        let pkt = publisher.tx.encrypt_rtp(&plain).unwrap();
        self.send(publisher.addr, &pkt);
    }
}

fn decrypt_rtcp(peer: &mut Peer, pkt: &[u8]) -> Vec<Box<dyn Packet + Send + Sync>> {
    let plain = peer.rx.decrypt_rtcp(pkt).expect("SRTCP from the core");
    let mut buf = &plain[..];
    ::rtcp::packet::unmarshal(&mut buf).unwrap()
}

fn plis(peer: &mut Peer, pkts: &[Vec<u8>]) -> Vec<u32> {
    let mut out = Vec::new();
    for p in pkts {
        for packet in decrypt_rtcp(peer, p) {
            if let Some(pli) = packet.as_any().downcast_ref::<PictureLossIndication>() {
                out.push(pli.media_ssrc);
            }
        }
    }
    out
}

#[test]
fn ice_publish_and_forward_both_profiles() {
    for profile in [SrtpProfile::Aes128CmHmacSha1_80, SrtpProfile::AeadAes128Gcm] {
        let mut h = Harness::new(profile);
        let (mut publisher, mut subscriber) = h.publish_subscribe();
        assert!(h.events.contains(&Event::IceSelected {
            conn: publisher.conn,
            peer: publisher.addr
        }));
        for seq in 1000..1010u16 {
            h.publish(&mut publisher, VIDEO_PT, seq, IN_VIDEO);
            h.publish(&mut publisher, AUDIO_PT, seq, IN_AUDIO);
        }
        let got = h.take(subscriber.addr);
        assert_eq!(got.len(), 20, "{profile:?}");
        for (i, pkt) in got.iter().enumerate() {
            let plain = subscriber.rx.decrypt_rtp(pkt).expect("subscriber decrypts");
            let seq = 1000 + (i / 2) as u16;
            let (pt, ssrc) = if i % 2 == 0 {
                (VIDEO_PT, OUT_VIDEO)
            } else {
                (AUDIO_PT, OUT_AUDIO)
            };
            assert_eq!(
                &plain[..],
                &rtp(pt, seq, seq as u32 * 3000, ssrc, &[seq as u8; 100])[..]
            );
        }
        let stats = h.core.stats();
        assert_eq!(stats.rtp_received, 20);
        assert_eq!(stats.rtp_forwarded, 20);
        assert_eq!(stats.dropped_srtp, 0);
    }
}

#[test]
fn nack_is_answered_from_the_buffer() {
    let mut h = Harness::new(SrtpProfile::AeadAes128Gcm);
    let (mut publisher, mut subscriber) = h.publish_subscribe();
    for seq in 1..=20u16 {
        h.publish(&mut publisher, VIDEO_PT, seq, IN_VIDEO);
    }
    h.take(subscriber.addr);
    let nack = TransportLayerNack {
        sender_ssrc: 99,
        media_ssrc: OUT_VIDEO,
        // 5, 7 and 2000 (never sent).
        nacks: vec![
            NackPair {
                packet_id: 5,
                lost_packets: 0b10,
            },
            NackPair {
                packet_id: 2000,
                lost_packets: 0,
            },
        ],
    };
    let raw = ::rtcp::packet::marshal(&[Box::new(nack) as Box<dyn Packet + Send + Sync>]).unwrap();
    let pkt = subscriber.tx.encrypt_rtcp(&raw).unwrap();
    h.send(subscriber.addr, &pkt);
    let got = h.take(subscriber.addr);
    let seqs: Vec<u16> = got
        .iter()
        .map(|p| {
            let plain = subscriber.rx.decrypt_rtp(p).unwrap();
            assert_eq!(&plain[8..12], &OUT_VIDEO.to_be_bytes());
            u16::from_be_bytes([plain[2], plain[3]])
        })
        .collect();
    assert_eq!(seqs, vec![5, 7]);
    assert_eq!(h.core.stats().nacks_received, 1);
    assert_eq!(h.core.stats().retransmissions_sent, 2);

    // A NACK for a track the connection does not receive is ignored.
    let nack = TransportLayerNack {
        sender_ssrc: 99,
        media_ssrc: 0xDEAD,
        nacks: vec![NackPair {
            packet_id: 5,
            lost_packets: 0,
        }],
    };
    let raw = ::rtcp::packet::marshal(&[Box::new(nack) as Box<dyn Packet + Send + Sync>]).unwrap();
    let pkt = subscriber.tx.encrypt_rtcp(&raw).unwrap();
    h.send(subscriber.addr, &pkt);
    assert!(h.take(subscriber.addr).is_empty());
}

#[test]
fn pli_is_forwarded_and_rate_limited() {
    let mut h = Harness::new(SrtpProfile::Aes128CmHmacSha1_80);
    let (mut publisher, mut subscriber) = h.publish_subscribe();
    // Subscribe asked for a key frame before the SSRC was known: it goes out
    // with the first video packet.
    assert!(h.take(publisher.addr).is_empty());
    h.publish(&mut publisher, VIDEO_PT, 1, IN_VIDEO);
    let got = h.take(publisher.addr);
    assert_eq!(plis(&mut publisher, &got), vec![IN_VIDEO]);

    let pli = || {
        let p = PictureLossIndication {
            sender_ssrc: 99,
            media_ssrc: OUT_VIDEO,
        };
        ::rtcp::packet::marshal(&[Box::new(p) as Box<dyn Packet + Send + Sync>]).unwrap()
    };
    // Inside the 500 ms interval: deferred, then sent once when it ends.
    h.advance(Duration::from_millis(100));
    for _ in 0..3 {
        let pkt = subscriber.tx.encrypt_rtcp(&pli()).unwrap();
        h.send(subscriber.addr, &pkt);
    }
    assert!({
        let got = h.take(publisher.addr);
        plis(&mut publisher, &got)
    }
    .is_empty());
    h.advance(Duration::from_millis(450));
    let got = h.take(publisher.addr);
    assert_eq!(plis(&mut publisher, &got), vec![IN_VIDEO]);
    assert_eq!(h.core.stats().key_frame_requests_sent, 2);

    // After the interval a PLI goes straight through; RequestKeyFrame too, rate-limited.
    h.advance(Duration::from_millis(600));
    h.take(publisher.addr);
    let pkt = subscriber.tx.encrypt_rtcp(&pli()).unwrap();
    h.send(subscriber.addr, &pkt);
    assert_eq!(
        {
            let got = h.take(publisher.addr);
            plis(&mut publisher, &got)
        },
        vec![IN_VIDEO]
    );
    h.command(Command::RequestKeyFrame {
        conn: publisher.conn,
    });
    assert!({
        let got = h.take(publisher.addr);
        plis(&mut publisher, &got)
    }
    .is_empty());
    assert_eq!(h.core.stats().key_frame_requests_sent, 3);
}

#[test]
fn reports_go_to_publishers_and_subscribers() {
    let mut h = Harness::new(SrtpProfile::AeadAes128Gcm);
    let (mut publisher, mut subscriber) = h.publish_subscribe();
    for seq in 1..=50u16 {
        if seq != 10 && seq != 11 {
            h.publish(&mut publisher, VIDEO_PT, seq, IN_VIDEO);
        }
    }
    h.take(publisher.addr);
    h.take(subscriber.addr);
    h.advance(Duration::from_millis(1001));

    let mut rr = None;
    for p in h.take(publisher.addr) {
        for packet in decrypt_rtcp(&mut publisher, &p) {
            if let Some(r) = packet.as_any().downcast_ref::<ReceiverReport>() {
                rr = Some(r.clone());
            }
        }
    }
    let rr = rr.expect("receiver report to the publisher");
    assert_eq!(rr.reports.len(), 1);
    let block = &rr.reports[0];
    assert_eq!(block.ssrc, IN_VIDEO);
    assert_eq!(block.last_sequence_number, 50);
    assert_eq!(block.total_lost, 2);
    assert_eq!(block.fraction_lost, (2 * 256 / 50) as u8);

    let mut srs = Vec::new();
    for p in h.take(subscriber.addr) {
        for packet in decrypt_rtcp(&mut subscriber, &p) {
            if let Some(sr) = packet.as_any().downcast_ref::<SenderReport>() {
                srs.push(sr.clone());
            }
        }
    }
    assert_eq!(
        srs.len(),
        1,
        "audio has no packets yet: only video gets an SR"
    );
    assert_eq!(srs[0].ssrc, OUT_VIDEO);
    assert_eq!(srs[0].packet_count, 48);
    // RTP time advanced by the clock rate since the last packet (50 * 3000),
    // about 1 s at 90 kHz.
    let advanced = srs[0].rtp_time.wrapping_sub(50 * 3000);
    assert!((89_000..=91_000).contains(&advanced), "{advanced}");
}

#[test]
fn wrong_key_srtp_is_dropped_and_counted() {
    let mut h = Harness::new(SrtpProfile::AeadAes128Gcm);
    let (mut publisher, subscriber) = h.publish_subscribe();
    publisher.tx = Context::new(
        &[0x55; 16],
        &[0x66; 12],
        protection_profile(SrtpProfile::AeadAes128Gcm),
        None,
        None,
    )
    .unwrap();
    h.publish(&mut publisher, VIDEO_PT, 1, IN_VIDEO);
    assert_eq!(h.core.stats().dropped_srtp, 1);
    assert_eq!(h.core.stats().rtp_forwarded, 0);
    assert!(h.take(subscriber.addr).is_empty());
}

#[test]
fn media_before_keys_and_from_strangers_is_dropped() {
    let mut h = Harness::new(SrtpProfile::AeadAes128Gcm);
    let mut peer = h.add_peer(1, 4000);
    h.check(&peer, peer.addr, true).unwrap();
    h.publish(&mut peer, VIDEO_PT, 1, IN_VIDEO);
    assert_eq!(h.core.stats().dropped_srtp, 1);
    let stranger = SocketAddr::from(([203, 0, 113, 1], 9));
    let pkt = peer
        .tx
        .encrypt_rtp(&rtp(VIDEO_PT, 2, 0, 1, &[0; 10]))
        .unwrap();
    h.send(stranger, &pkt);
    h.send(stranger, &[22, 254, 253, 0, 0]);
    assert_eq!(h.core.stats().dropped_unknown_peer, 2);
}

#[test]
fn channel_not_owned_is_not_forwarded() {
    let mut h = Harness::new(SrtpProfile::AeadAes128Gcm);
    let (mut publisher, subscriber) = h.publish_subscribe();
    h.command(Command::SetChannelOwned {
        channel: ChannelKey(1),
        owned: false,
    });
    h.publish(&mut publisher, VIDEO_PT, 1, IN_VIDEO);
    assert!(h.take(subscriber.addr).is_empty());
    h.command(Command::SetChannelOwned {
        channel: ChannelKey(1),
        owned: true,
    });
    h.publish(&mut publisher, VIDEO_PT, 2, IN_VIDEO);
    assert_eq!(h.take(subscriber.addr).len(), 1);
    h.command(Command::Unsubscribe {
        subscriber: subscriber.conn,
        publisher: publisher.conn,
    });
    h.publish(&mut publisher, VIDEO_PT, 3, IN_VIDEO);
    assert!(h.take(subscriber.addr).is_empty());
}

#[test]
fn stun_checks_are_authenticated() {
    let mut h = Harness::new(SrtpProfile::AeadAes128Gcm);
    let peer = h.add_peer(1, 4000);
    // Unknown ufrag.
    let mut req = Vec::new();
    stun::write_binding_request(&mut req, &[1; 12], b"nobody:x", peer.pwd.as_bytes(), true);
    h.send(peer.addr, &req);
    // Wrong password.
    let mut req = Vec::new();
    let user = format!("{}:x", peer.ufrag);
    stun::write_binding_request(&mut req, &[1; 12], user.as_bytes(), b"wrong", true);
    h.send(peer.addr, &req);
    // Broken fingerprint.
    let mut req = Vec::new();
    stun::write_binding_request(
        &mut req,
        &[1; 12],
        user.as_bytes(),
        peer.pwd.as_bytes(),
        true,
    );
    let last = req.len() - 1;
    req[last] ^= 1;
    h.send(peer.addr, &req);
    assert_eq!(h.core.stats().dropped_stun_auth, 3);
    assert!(h.take(peer.addr).is_empty());
    assert!(h.events.is_empty());
}

#[test]
fn peer_reflexive_addresses_and_nomination() {
    let mut h = Harness::new(SrtpProfile::AeadAes128Gcm);
    let peer = h.add_peer(1, 4000);
    let other = SocketAddr::from(([198, 51, 100, 9], 7000));
    // First valid check without USE-CANDIDATE selects its address.
    assert!(h.check(&peer, peer.addr, false).is_some());
    // A check from an address never signalled is answered but does not move
    // the selection until it is nominated.
    let resp = h.check(&peer, other, false).unwrap();
    assert_eq!(stun::xor_mapped_address(&resp), Some(other));
    assert!(h.check(&peer, other, true).is_some());
    assert_eq!(
        h.events,
        vec![
            Event::IceSelected {
                conn: peer.conn,
                peer: peer.addr
            },
            Event::IceSelected {
                conn: peer.conn,
                peer: other
            },
        ]
    );
    // DTLS from either checked address goes up; SendDtls goes to the selected one.
    h.events.clear();
    h.send(peer.addr, &[22, 254, 253, 1]);
    h.send(other, &[23, 254, 253, 2]);
    assert_eq!(
        h.events,
        vec![
            Event::DtlsReceived {
                conn: peer.conn,
                data: vec![22, 254, 253, 1]
            },
            Event::DtlsReceived {
                conn: peer.conn,
                data: vec![23, 254, 253, 2]
            },
        ]
    );
    h.command(Command::SendDtls {
        conn: peer.conn,
        data: vec![22, 1],
    });
    assert_eq!(h.take(other), vec![vec![22, 1]]);
    // Removing the connection forgets its addresses.
    h.command(Command::RemoveConnection { conn: peer.conn });
    h.send(other, &[22, 0]);
    assert_eq!(h.core.stats().dropped_unknown_peer, 1);
}

#[test]
fn consent_expires_once() {
    let mut h = Harness::new(SrtpProfile::AeadAes128Gcm);
    let a = h.add_peer(1, 4000);
    let b = h.add_peer(2, 4001);
    h.check(&a, a.addr, true).unwrap();
    h.check(&b, b.addr, true).unwrap();
    h.events.clear();
    // `a` keeps refreshing consent, `b` goes silent.
    for _ in 0..8 {
        h.advance(Duration::from_secs(5));
        h.check(&a, a.addr, false).unwrap();
    }
    let expired: Vec<&Event> = h
        .events
        .iter()
        .filter(|e| matches!(e, Event::ConsentExpired { .. }))
        .collect();
    assert_eq!(expired, vec![&Event::ConsentExpired { conn: b.conn }]);
    // Stats events flow about once a second.
    let core_stats = h
        .events
        .iter()
        .filter(|e| matches!(e, Event::CoreStats(_)))
        .count();
    assert!((39..=41).contains(&core_stats), "{core_stats}");
    assert!(h
        .events
        .iter()
        .any(|e| matches!(e, Event::ConnStats { conn, .. } if *conn == a.conn)));
}

#[test]
fn garbage_never_panics() {
    let mut h = Harness::new(SrtpProfile::Aes128CmHmacSha1_80);
    let (publisher, subscriber) = h.publish_subscribe();
    let stranger = SocketAddr::from(([203, 0, 113, 1], 9));
    let before = h.core.stats().udp_received;
    let mut seed = 0x1234_5678u32;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        seed
    };
    for len in 0..64usize {
        for first in 0..=255u8 {
            for from in [publisher.addr, subscriber.addr, stranger] {
                let mut pkt: Vec<u8> = (0..len).map(|_| next() as u8).collect();
                if let Some(b) = pkt.first_mut() {
                    *b = first;
                }
                // Make some look like STUN or RTCP past the first checks.
                if len >= 8 && first < 4 {
                    pkt[4..8].copy_from_slice(&stun::MAGIC_COOKIE.to_be_bytes());
                }
                if len >= 2 && first & 0xC0 == 0x80 && next() % 2 == 0 {
                    pkt[1] = 200 + (next() % 8) as u8;
                }
                h.core.handle_datagram(h.now, from, &mut pkt);
            }
        }
    }
    h.drain();
    let stats = h.core.stats();
    assert_eq!(stats.rtp_forwarded, 0);
    assert!(stats.dropped_malformed > 0);
    assert_eq!(stats.udp_received - before, 64 * 256 * 3);
}

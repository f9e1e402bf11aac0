//! The offer/answer state of one connection, without IO: which m-lines the
//! server has offered, which publishers they carry, which of those the data
//! plane forwards, and whether an offer is waiting for its answer.
//!
//! Rules:
//! - m-lines are only appended; a departed publisher's become `inactive`;
//! - one offer is outstanding at a time: changes meanwhile are remembered and
//!   re-offered after the answer;
//! - a publisher is subscribed (forwarded by the data plane) only once the
//!   answer that includes it has arrived *and* DTLS has finished;
//! - a receiver always has at least one m-line pair, so ICE and DTLS run even
//!   in an empty channel.

use std::collections::{BTreeMap, BTreeSet};

use shared::{ConnId, MediaKind};

use crate::channels::PublishedTrack;
use crate::sdp::{Codec, Direction, MediaSection, SsrcInfo};

/// A publisher as a receiver sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublisherView {
    pub conn: ConnId,
    pub connection_id: String,
    pub tracks: Vec<PublishedTrack>,
}

/// What the session must do after a step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Subscribe(ConnId),
    Unsubscribe(ConnId),
    /// Send a `re-offer` built from [`Negotiation::sections`].
    ReOffer,
}

#[derive(Debug)]
pub struct Negotiation {
    receives: bool,
    sections: Vec<MediaSection>,
    /// publisher -> indices of its m-lines.
    forwarded: BTreeMap<ConnId, Vec<usize>>,
    subscribed: BTreeSet<ConnId>,
    /// Publishers added by the outstanding offer; `None` when no offer waits.
    awaiting: Option<Vec<ConnId>>,
    /// The publishers changed while an offer was outstanding.
    dirty: bool,
    established: bool,
}

impl Negotiation {
    /// `upstream`: the codecs the connection itself sends (its first m-lines,
    /// `recvonly` from the server's side). `receives`: it gets the others' media.
    pub fn new(upstream: &[Codec], receives: bool) -> Negotiation {
        let sections = upstream
            .iter()
            .enumerate()
            .map(|(i, c)| MediaSection {
                mid: i.to_string(),
                kind: c.kind(),
                direction: Direction::RecvOnly,
                codec: *c,
                ssrc: None,
            })
            .collect();
        Negotiation {
            receives,
            sections,
            forwarded: BTreeMap::new(),
            subscribed: BTreeSet::new(),
            awaiting: None,
            dirty: false,
            established: false,
        }
    }

    pub fn sections(&self) -> &[MediaSection] {
        &self.sections
    }

    /// The m-lines of the first offer: own upstream, then every publisher, or
    /// two inactive placeholders when there is nothing else.
    pub fn initial_offer(&mut self, publishers: &[PublisherView], placeholder_video: Codec) {
        let added = self.add(publishers);
        if self.sections.is_empty() {
            for codec in [Codec::Opus, placeholder_video] {
                self.push(codec.kind(), Direction::Inactive, codec, None);
            }
        }
        self.awaiting = Some(added);
    }

    /// The client answered the outstanding offer.
    pub fn on_answer(&mut self, publishers: &[PublisherView]) -> Vec<Action> {
        let offered = self.awaiting.take().unwrap_or_default();
        let mut actions = Vec::new();
        if self.established {
            for p in offered {
                self.subscribe(p, &mut actions);
            }
        }
        if std::mem::take(&mut self.dirty) {
            actions.extend(self.reconcile(publishers));
        }
        actions
    }

    /// DTLS finished. The first answer has arrived by then (DTLS checks its
    /// fingerprint); publishers of a re-offer still outstanding wait for its answer.
    pub fn on_established(&mut self) -> Vec<Action> {
        self.established = true;
        let pending: BTreeSet<ConnId> = self.awaiting.iter().flatten().copied().collect();
        let ready: Vec<ConnId> = self
            .forwarded
            .keys()
            .filter(|p| !pending.contains(p))
            .copied()
            .collect();
        let mut actions = Vec::new();
        for p in ready {
            self.subscribe(p, &mut actions);
        }
        actions
    }

    /// The channel's publishers are now `publishers`: add and retire m-lines.
    pub fn reconcile(&mut self, publishers: &[PublisherView]) -> Vec<Action> {
        if !self.receives {
            return Vec::new();
        }
        if self.awaiting.is_some() {
            self.dirty = true;
            return Vec::new();
        }
        let mut actions = Vec::new();
        let gone: Vec<ConnId> = self
            .forwarded
            .keys()
            .filter(|p| !publishers.iter().any(|v| v.conn == **p))
            .copied()
            .collect();
        for p in &gone {
            for i in self.forwarded.remove(p).unwrap_or_default() {
                self.sections[i].direction = Direction::Inactive;
                self.sections[i].ssrc = None;
            }
            if self.subscribed.remove(p) {
                actions.push(Action::Unsubscribe(*p));
            }
        }
        let added = self.add(publishers);
        if gone.is_empty() && added.is_empty() {
            return actions;
        }
        self.awaiting = Some(added);
        actions.push(Action::ReOffer);
        actions
    }

    fn subscribe(&mut self, p: ConnId, actions: &mut Vec<Action>) {
        if self.forwarded.contains_key(&p) && self.subscribed.insert(p) {
            actions.push(Action::Subscribe(p));
        }
    }

    /// Appends m-lines for publishers not offered yet; returns them.
    fn add(&mut self, publishers: &[PublisherView]) -> Vec<ConnId> {
        if !self.receives {
            return Vec::new();
        }
        let mut added = Vec::new();
        for p in publishers {
            if self.forwarded.contains_key(&p.conn) {
                continue;
            }
            let idx: Vec<usize> = p
                .tracks
                .iter()
                .map(|t| {
                    let ssrc = SsrcInfo {
                        ssrc: t.out_ssrc,
                        cname: p.connection_id.clone(),
                        stream_id: p.connection_id.clone(),
                        track_id: t.track_id.clone(),
                    };
                    self.push(t.codec.kind(), Direction::SendOnly, t.codec, Some(ssrc))
                })
                .collect();
            self.forwarded.insert(p.conn, idx);
            added.push(p.conn);
        }
        added
    }

    fn push(
        &mut self,
        kind: MediaKind,
        direction: Direction,
        codec: Codec,
        ssrc: Option<SsrcInfo>,
    ) -> usize {
        let i = self.sections.len();
        self.sections.push(MediaSection {
            mid: i.to_string(),
            kind,
            direction,
            codec,
            ssrc,
        });
        i
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publisher(n: u32) -> PublisherView {
        let track = |codec: Codec, ssrc: u32| PublishedTrack {
            codec,
            out_ssrc: ssrc,
            track_id: format!("t{ssrc}"),
        };
        PublisherView {
            conn: ConnId(n),
            connection_id: format!("PUB{n}"),
            tracks: vec![track(Codec::Opus, n * 10), track(Codec::Vp8, n * 10 + 1)],
        }
    }

    fn directions(n: &Negotiation) -> Vec<Direction> {
        n.sections().iter().map(|s| s.direction).collect()
    }

    #[test]
    fn sender_offers_its_upstream_only() {
        let mut n = Negotiation::new(&[Codec::Opus, Codec::Vp9], false);
        n.initial_offer(&[publisher(1)], Codec::Vp9);
        assert_eq!(directions(&n), [Direction::RecvOnly, Direction::RecvOnly]);
        assert_eq!(n.sections()[1].codec, Codec::Vp9);
        assert!(n.on_answer(&[]).is_empty());
        assert!(n.on_established().is_empty());
        assert!(n.reconcile(&[publisher(1), publisher(2)]).is_empty());
    }

    #[test]
    fn receiver_in_an_empty_channel_gets_placeholders() {
        let mut n = Negotiation::new(&[], true);
        n.initial_offer(&[], Codec::Av1);
        assert_eq!(directions(&n), [Direction::Inactive, Direction::Inactive]);
        assert_eq!(n.sections()[1].codec, Codec::Av1);
        assert_eq!(n.sections()[1].mid, "1");
    }

    #[test]
    fn publishers_in_the_first_offer_are_subscribed_after_dtls() {
        let mut n = Negotiation::new(&[], true);
        n.initial_offer(&[publisher(1)], Codec::Vp9);
        assert_eq!(directions(&n), [Direction::SendOnly, Direction::SendOnly]);
        let s = n.sections()[1].ssrc.as_ref().unwrap();
        assert_eq!((s.ssrc, s.stream_id.as_str()), (11, "PUB1"));
        assert!(n.on_answer(&[publisher(1)]).is_empty(), "no keys yet");
        assert_eq!(n.on_established(), [Action::Subscribe(ConnId(1))]);
    }

    #[test]
    fn a_newcomer_is_re_offered_and_subscribed_on_the_re_answer() {
        let mut n = Negotiation::new(&[Codec::Opus, Codec::Vp8], true);
        n.initial_offer(&[], Codec::Vp9);
        n.on_answer(&[]);
        n.on_established();
        assert_eq!(n.reconcile(&[publisher(2)]), [Action::ReOffer]);
        assert_eq!(n.sections().len(), 4);
        assert_eq!(n.sections()[2].mid, "2");
        assert_eq!(n.on_answer(&[publisher(2)]), [Action::Subscribe(ConnId(2))]);
        assert!(n.reconcile(&[publisher(2)]).is_empty(), "nothing changed");
    }

    #[test]
    fn changes_during_an_outstanding_offer_wait_for_its_answer() {
        let mut n = Negotiation::new(&[], true);
        n.initial_offer(&[publisher(1)], Codec::Vp9);
        assert!(n.reconcile(&[publisher(1), publisher(2)]).is_empty());
        // The answer to the first offer brings the pending change as a re-offer.
        assert_eq!(
            n.on_answer(&[publisher(1), publisher(2)]),
            [Action::ReOffer]
        );
        // DTLS finishes while that re-offer waits: only publisher 1 is ready.
        assert_eq!(n.on_established(), [Action::Subscribe(ConnId(1))]);
        assert_eq!(
            n.on_answer(&[publisher(1), publisher(2)]),
            [Action::Subscribe(ConnId(2))]
        );
    }

    #[test]
    fn a_departed_publisher_is_unsubscribed_and_its_lines_go_inactive() {
        let mut n = Negotiation::new(&[], true);
        n.initial_offer(&[publisher(1), publisher(2)], Codec::Vp9);
        n.on_answer(&[]);
        n.on_established();
        assert_eq!(
            n.reconcile(&[publisher(2)]),
            [Action::Unsubscribe(ConnId(1)), Action::ReOffer]
        );
        assert_eq!(
            directions(&n),
            [
                Direction::Inactive,
                Direction::Inactive,
                Direction::SendOnly,
                Direction::SendOnly
            ]
        );
        assert!(n.sections()[0].ssrc.is_none());
        assert!(n.on_answer(&[publisher(2)]).is_empty());
        // It comes back as a new connection: new m-lines, never reused ones.
        let mut back = publisher(3);
        back.connection_id = "PUB1-again".into();
        assert_eq!(n.reconcile(&[publisher(2), back]), [Action::ReOffer]);
        assert_eq!(n.sections().len(), 6);
    }
}

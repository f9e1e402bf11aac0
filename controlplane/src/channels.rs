//! The node's channels and their connections: who is in which channel, who
//! publishes what, and which data-plane core serves the channel.
//!
//! Plain data, no IO: the signaling sessions and the API read and change it
//! under the node's lock, and act on what it returns.

use std::collections::{BTreeMap, HashMap};
use std::time::SystemTime;

use serde_json::{json, Value};
use shared::{ChannelKey, ConnId};
use tokio::sync::mpsc;

use crate::sdp::Codec;

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Role {
    SendRecv,
    SendOnly,
    RecvOnly,
}

impl Role {
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "sendrecv" => Some(Role::SendRecv),
            "sendonly" => Some(Role::SendOnly),
            "recvonly" => Some(Role::RecvOnly),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Role::SendRecv => "sendrecv",
            Role::SendOnly => "sendonly",
            Role::RecvOnly => "recvonly",
        }
    }
    pub fn sends(self) -> bool {
        matches!(self, Role::SendRecv | Role::SendOnly)
    }
    pub fn receives(self) -> bool {
        matches!(self, Role::SendRecv | Role::RecvOnly)
    }
}

/// One track a connection publishes, as subscribers see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublishedTrack {
    pub codec: Codec,
    /// The SSRC subscribers receive it with.
    pub out_ssrc: u32,
    pub track_id: String,
}

/// What a session is told by the rest of the node.
#[derive(Debug)]
pub enum SessionMsg {
    /// The channel's established publishers changed: compare and re-offer.
    PublishersChanged,
    /// A JSON message to send as is (notify, push).
    Send(Value),
    /// Close the session with this WebSocket close code and reason.
    Close { code: u16, reason: String },
}

#[derive(Debug)]
pub struct Member {
    pub conn: ConnId,
    pub connection_id: String,
    pub client_id: String,
    pub bundle_id: String,
    pub role: Role,
    pub created_at: SystemTime,
    /// DTLS done and keys installed: the connection counts in notifications and
    /// subscribers get its tracks.
    pub established: bool,
    pub audio: Option<PublishedTrack>,
    pub video: Option<PublishedTrack>,
    pub metadata: Option<Value>,
    pub tx: mpsc::UnboundedSender<SessionMsg>,
}

impl Member {
    /// The fields that describe this connection in the API and in webhooks.
    pub fn describe(&self, channel_id: &str) -> Value {
        json!({
            "channel_id": channel_id,
            "connection_id": self.connection_id,
            "client_id": self.client_id,
            "bundle_id": self.bundle_id,
            "role": self.role.as_str(),
            "audio": self.audio.is_some() || self.role.receives(),
            "video": self.video.is_some() || self.role.receives(),
            "multistream": true,
            "simulcast": false,
            "spotlight": false,
        })
    }

    /// The entry for this connection in a notify's `data[]`.
    pub fn notify_entry(&self) -> Value {
        let mut v = json!({
            "connection_id": self.connection_id,
            "client_id": self.client_id,
            "bundle_id": self.bundle_id,
            "role": self.role.as_str(),
        });
        if let Some(m) = &self.metadata {
            v["metadata"] = m.clone();
        }
        v
    }
}

#[derive(Debug)]
pub struct Channel {
    pub key: ChannelKey,
    /// Identifies this life of the channel (from its first connection to its
    /// last), as Sora's `session_id`.
    pub session_id: String,
    pub core: usize,
    pub members: BTreeMap<ConnId, Member>,
}

impl Channel {
    pub fn established(&self) -> impl Iterator<Item = &Member> {
        self.members.values().filter(|m| m.established)
    }
    /// Established publishers other than `except`.
    pub fn publishers(&self, except: ConnId) -> Vec<(ConnId, &Member)> {
        self.established()
            .filter(|m| {
                m.conn != except && m.role.sends() && (m.audio.is_some() || m.video.is_some())
            })
            .map(|m| (m.conn, m))
            .collect()
    }
    /// The connection counters every notify carries.
    pub fn counts(&self) -> Value {
        let est: Vec<&Member> = self.established().collect();
        let by = |r: Role| est.iter().filter(|m| m.role == r).count();
        json!({
            "channel_connections": est.len(),
            "channel_sendrecv_connections": by(Role::SendRecv),
            "channel_sendonly_connections": by(Role::SendOnly),
            "channel_recvonly_connections": by(Role::RecvOnly),
        })
    }
}

/// What [`Registry::leave`] removed.
#[derive(Debug)]
pub struct Left {
    pub channel_id: String,
    pub session_id: String,
    pub member: Member,
    /// The channel has no members left and was removed.
    pub empty: bool,
}

/// All channels of the node.
#[derive(Debug, Default)]
pub struct Registry {
    pub channels: HashMap<String, Channel>,
    /// channel key -> channel_id.
    keys: HashMap<ChannelKey, String>,
    next_key: u32,
    /// conn -> channel_id.
    conns: HashMap<ConnId, String>,
    /// Connections per core, to place new channels on the least loaded core.
    core_load: Vec<usize>,
}

impl Registry {
    pub fn new(cores: usize) -> Self {
        Registry {
            core_load: vec![0; cores.max(1)],
            ..Default::default()
        }
    }

    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Adds a member, creating the channel (on the least loaded core) if needed.
    /// Returns the channel's key and core, and whether the channel is new.
    pub fn join(&mut self, channel_id: &str, member: Member) -> (ChannelKey, usize, bool) {
        let conn = member.conn;
        let mut created = false;
        if !self.channels.contains_key(channel_id) {
            let core = self
                .core_load
                .iter()
                .enumerate()
                .min_by_key(|(_, l)| **l)
                .map(|(i, _)| i)
                .unwrap_or(0);
            self.next_key += 1;
            let key = ChannelKey(self.next_key);
            self.keys.insert(key, channel_id.to_owned());
            self.channels.insert(
                channel_id.to_owned(),
                Channel {
                    key,
                    session_id: crate::ids::new_connection_id(),
                    core,
                    members: BTreeMap::new(),
                },
            );
            created = true;
        }
        let ch = self.channels.get_mut(channel_id).expect("inserted above");
        ch.members.insert(conn, member);
        self.conns.insert(conn, channel_id.to_owned());
        self.core_load[ch.core] += 1;
        (ch.key, ch.core, created)
    }

    /// Removes a member. Returns its channel, the member and whether the channel
    /// is now empty (and was removed).
    pub fn leave(&mut self, conn: ConnId) -> Option<Left> {
        let channel_id = self.conns.remove(&conn)?;
        let ch = self.channels.get_mut(&channel_id)?;
        let member = ch.members.remove(&conn)?;
        self.core_load[ch.core] = self.core_load[ch.core].saturating_sub(1);
        let empty = ch.members.is_empty();
        let session_id = ch.session_id.clone();
        if empty {
            let key = ch.key;
            self.channels.remove(&channel_id);
            self.keys.remove(&key);
        }
        Some(Left {
            channel_id,
            session_id,
            member,
            empty,
        })
    }

    pub fn channel_of(&self, conn: ConnId) -> Option<&Channel> {
        self.channels.get(self.conns.get(&conn)?)
    }

    pub fn member_mut(&mut self, conn: ConnId) -> Option<&mut Member> {
        let id = self.conns.get(&conn)?;
        self.channels.get_mut(id)?.members.get_mut(&conn)
    }

    pub fn find(&self, channel_id: &str, connection_id: &str) -> Option<&Member> {
        self.channels
            .get(channel_id)?
            .members
            .values()
            .find(|m| m.connection_id == connection_id)
    }

    /// Sends `msg` to every member of the channel except `except`.
    pub fn tell_others(&self, channel_id: &str, except: ConnId, msg: impl Fn() -> SessionMsg) {
        if let Some(ch) = self.channels.get(channel_id) {
            for m in ch.members.values().filter(|m| m.conn != except) {
                let _ = m.tx.send(msg());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(conn: u32, role: Role) -> (Member, mpsc::UnboundedReceiver<SessionMsg>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (
            Member {
                conn: ConnId(conn),
                connection_id: format!("C{conn}"),
                client_id: format!("c{conn}"),
                bundle_id: format!("c{conn}"),
                role,
                created_at: SystemTime::now(),
                established: false,
                audio: None,
                video: Some(PublishedTrack {
                    codec: Codec::Vp9,
                    out_ssrc: conn,
                    track_id: "v".into(),
                }),
                metadata: None,
                tx,
            },
            rx,
        )
    }

    #[test]
    fn channels_are_spread_over_cores_and_removed_when_empty() {
        let mut r = Registry::new(2);
        let (a, _ra) = member(1, Role::SendOnly);
        let (b, _rb) = member(2, Role::RecvOnly);
        let (c, _rc) = member(3, Role::SendOnly);
        let (ka, core_a, new_a) = r.join("x", a);
        let (kb, core_b, new_b) = r.join("x", b);
        let (kc, core_c, new_c) = r.join("y", c);
        assert!(new_a && !new_b && new_c);
        assert_eq!((ka, core_a), (kb, core_b));
        assert_ne!(ka, kc);
        assert_ne!(core_a, core_c, "second channel goes to the idle core");
        assert_eq!(r.connection_count(), 3);
        assert!(!r.leave(ConnId(1)).unwrap().empty);
        assert!(r.leave(ConnId(2)).unwrap().empty);
        assert!(!r.channels.contains_key("x"));
        assert!(r.leave(ConnId(2)).is_none());
    }

    #[test]
    fn only_established_publishers_are_visible() {
        let mut r = Registry::new(1);
        let (a, _ra) = member(1, Role::SendOnly);
        let (b, _rb) = member(2, Role::RecvOnly);
        r.join("x", a);
        r.join("x", b);
        assert!(r
            .channel_of(ConnId(2))
            .unwrap()
            .publishers(ConnId(2))
            .is_empty());
        r.member_mut(ConnId(1)).unwrap().established = true;
        let ch = r.channel_of(ConnId(2)).unwrap();
        assert_eq!(ch.publishers(ConnId(2)).len(), 1);
        assert!(ch.publishers(ConnId(1)).is_empty());
        assert_eq!(ch.counts()["channel_connections"], 1);
        assert_eq!(ch.counts()["channel_sendonly_connections"], 1);
    }
}

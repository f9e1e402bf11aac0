//! The replicated cluster state and the pure decisions made on it.
//!
//! Nothing here does IO: [`ClusterState::apply`] is what every member runs on
//! each committed [`Command`], [`pick_owner`] is the leader's placement rule and
//! [`check_licenses`] the membership license rule.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::types::{Command, CommandResponse, Mode};
use super::LicenseInfo;

/// Channel ownership and member modes. Member identity lives in openraft's
/// membership ([`super::types::MemberNode`]); this holds what changes often.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    /// channel_id → owner node_name. One owner per channel by construction.
    pub channels: BTreeMap<String, String>,
    /// Members whose mode is not `normal`.
    pub modes: BTreeMap<String, Mode>,
}

impl ClusterState {
    pub fn apply(&mut self, cmd: &Command) -> CommandResponse {
        match cmd {
            Command::AssignChannel { channel_id, owner } => {
                let owner = self
                    .channels
                    .entry(channel_id.clone())
                    .or_insert_with(|| owner.clone());
                CommandResponse {
                    owner: Some(owner.clone()),
                    released: Vec::new(),
                }
            }
            Command::ReleaseChannel { channel_id, owner } => {
                let mut released = Vec::new();
                if self.channels.get(channel_id) == Some(owner) {
                    self.channels.remove(channel_id);
                    released.push(channel_id.clone());
                }
                CommandResponse {
                    owner: None,
                    released,
                }
            }
            Command::ReleaseOwner { node_name } => CommandResponse {
                owner: None,
                released: self.release_owner(node_name),
            },
            Command::SetMode { node_name, mode } => {
                if *mode == Mode::Normal {
                    self.modes.remove(node_name);
                } else {
                    self.modes.insert(node_name.clone(), *mode);
                }
                CommandResponse::default()
            }
            Command::ForgetNode { node_name } => {
                self.modes.remove(node_name);
                CommandResponse {
                    owner: None,
                    released: self.release_owner(node_name),
                }
            }
        }
    }

    fn release_owner(&mut self, node_name: &str) -> Vec<String> {
        let released: Vec<String> = self
            .channels
            .iter()
            .filter(|(_, owner)| owner.as_str() == node_name)
            .map(|(channel, _)| channel.clone())
            .collect();
        for channel in &released {
            self.channels.remove(channel);
        }
        released
    }

    pub fn owned_by(&self, node_name: &str) -> BTreeSet<String> {
        self.channels
            .iter()
            .filter(|(_, owner)| owner.as_str() == node_name)
            .map(|(channel, _)| channel.clone())
            .collect()
    }
}

/// A node that may receive a new channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub node_name: String,
    pub connections: u64,
    pub max_connections: u64,
}

/// The candidate with the lowest `connections / max_connections`; on a tie the
/// requester wins, then the smaller name (so every caller decides alike).
/// A license without a connection limit (`max_connections == 0`) counts as 1.
pub fn pick_owner(candidates: &[Candidate], requester: &str) -> Option<String> {
    candidates
        .iter()
        .min_by(|a, b| {
            // a/ma < b/mb  ⇔  a·mb < b·ma, in u128 to stay exact.
            let lhs = u128::from(a.connections) * u128::from(b.max_connections.max(1));
            let rhs = u128::from(b.connections) * u128::from(a.max_connections.max(1));
            lhs.cmp(&rhs)
                .then_with(|| (b.node_name == requester).cmp(&(a.node_name == requester)))
                .then_with(|| a.node_name.cmp(&b.node_name))
        })
        .map(|c| c.node_name.clone())
}

/// Two members may share a license serial code only if that license allows
/// several nodes (`max_nodes = N`) and at most N members use it. On violation,
/// returns the names of two members that share it. Empty serial codes (no
/// license) are not compared. The two names come in sorted order.
pub fn check_licenses<'a>(
    members: impl IntoIterator<Item = (&'a str, &'a LicenseInfo)>,
) -> Result<(), (String, String)> {
    let mut by_serial: BTreeMap<&str, Vec<(&str, &LicenseInfo)>> = BTreeMap::new();
    for (name, license) in members {
        if !license.serial_code.is_empty() {
            by_serial
                .entry(license.serial_code.as_str())
                .or_default()
                .push((name, license));
        }
    }
    for users in by_serial.values_mut() {
        users.sort_by_key(|(name, _)| *name);
        if users.len() < 2 {
            continue;
        }
        let allowed = users
            .iter()
            .map(|(_, l)| l.max_nodes.unwrap_or(1))
            .min()
            .unwrap_or(1);
        if users.len() as u64 > allowed {
            return Err((users[0].0.to_string(), users[1].0.to_string()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assign(s: &mut ClusterState, ch: &str, owner: &str) -> Option<String> {
        s.apply(&Command::AssignChannel {
            channel_id: ch.into(),
            owner: owner.into(),
        })
        .owner
    }

    #[test]
    fn a_channel_keeps_its_first_owner() {
        let mut s = ClusterState::default();
        assert_eq!(assign(&mut s, "c", "a@h").as_deref(), Some("a@h"));
        assert_eq!(assign(&mut s, "c", "b@h").as_deref(), Some("a@h"));
        // Only the owner releases it.
        let r = s.apply(&Command::ReleaseChannel {
            channel_id: "c".into(),
            owner: "b@h".into(),
        });
        assert!(r.released.is_empty());
        let r = s.apply(&Command::ReleaseChannel {
            channel_id: "c".into(),
            owner: "a@h".into(),
        });
        assert_eq!(r.released, vec!["c".to_string()]);
        assert_eq!(assign(&mut s, "c", "b@h").as_deref(), Some("b@h"));
    }

    #[test]
    fn release_owner_and_forget() {
        let mut s = ClusterState::default();
        assign(&mut s, "c1", "a@h");
        assign(&mut s, "c2", "b@h");
        assign(&mut s, "c3", "a@h");
        s.apply(&Command::SetMode {
            node_name: "a@h".into(),
            mode: Mode::BlockNewConnection,
        });
        assert_eq!(s.modes.get("a@h"), Some(&Mode::BlockNewConnection));
        assert_eq!(s.owned_by("a@h").len(), 2);
        let r = s.apply(&Command::ForgetNode {
            node_name: "a@h".into(),
        });
        assert_eq!(r.released, vec!["c1".to_string(), "c3".to_string()]);
        assert_eq!(s.modes.get("a@h"), None);
        assert_eq!(s.channels.len(), 1);
        let r = s.apply(&Command::ReleaseOwner {
            node_name: "b@h".into(),
        });
        assert_eq!(r.released, vec!["c2".to_string()]);
    }

    fn cand(name: &str, connections: u64, max: u64) -> Candidate {
        Candidate {
            node_name: name.into(),
            connections,
            max_connections: max,
        }
    }

    #[test]
    fn placement_prefers_least_loaded_then_requester() {
        let c = [cand("a", 10, 100), cand("b", 10, 1000), cand("c", 0, 10)];
        assert_eq!(pick_owner(&c, "a").as_deref(), Some("c"));
        let c = [cand("a", 10, 100), cand("b", 100, 1000)];
        assert_eq!(pick_owner(&c, "b").as_deref(), Some("b"));
        assert_eq!(pick_owner(&c, "a").as_deref(), Some("a"));
        assert_eq!(pick_owner(&c, "x").as_deref(), Some("a"));
        assert_eq!(pick_owner(&[], "x"), None);
    }

    fn lic(serial: &str, max_nodes: Option<u64>) -> LicenseInfo {
        LicenseInfo {
            license_type: "Experimental".into(),
            serial_code: serial.into(),
            max_connections: 100,
            max_nodes,
        }
    }

    #[test]
    fn licenses() {
        let (a, b, c) = (lic("S1", None), lic("S1", None), lic("S2", None));
        assert_eq!(
            check_licenses([("n1", &a), ("n2", &b), ("n3", &c)]),
            Err(("n1".to_string(), "n2".to_string()))
        );
        assert_eq!(check_licenses([("n1", &a), ("n3", &c)]), Ok(()));
        let shared = lic("M", Some(2));
        assert_eq!(check_licenses([("n1", &shared), ("n2", &shared)]), Ok(()));
        assert!(check_licenses([("n1", &shared), ("n2", &shared), ("n3", &shared)]).is_err());
        let none = lic("", None);
        assert_eq!(check_licenses([("n1", &none), ("n2", &none)]), Ok(()));
    }
}

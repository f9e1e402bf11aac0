//! Durable Raft storage in one redb file, `<data_dir>/cluster.redb`.
//!
//! Tables:
//! - `raft_log`: log index (u64) → JSON of the openraft `Entry`.
//! - `raft_meta`: `"vote"`, `"committed"`, `"last_purged"` → JSON of the
//!   openraft value; `"snapshot"` → JSON of [`StoredSnapshot`] (snapshot
//!   metadata plus the serialized [`ClusterState`]).
//!
//! Every write is one redb transaction committed with `Durability::Immediate`
//! (redb's default: fsync before `commit` returns), so a log append is
//! acknowledged to openraft only once it is on disk.
//!
//! The state machine lives in memory. On start it is loaded from the last
//! snapshot and openraft re-applies the committed log after it (the committed
//! index is stored, so this happens before the node serves anything).

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::io::Cursor;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::{Arc, RwLock};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    AnyError, Entry, EntryPayload, LogId, OptionalSend, RaftLogReader, RaftSnapshotBuilder,
    SnapshotMeta, StorageError, StorageIOError, StoredMembership, Vote,
};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::state::ClusterState;
use super::types::{CommandResponse, MemberNode, NodeId, TypeConfig};

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");

const KEY_VOTE: &str = "vote";
const KEY_COMMITTED: &str = "committed";
const KEY_LAST_PURGED: &str = "last_purged";
const KEY_SNAPSHOT: &str = "snapshot";

/// The file name of the store inside `data_dir`.
pub const DB_FILE: &str = "cluster.redb";

type StResult<T> = Result<T, StorageError<NodeId>>;

fn any(e: impl std::fmt::Display) -> AnyError {
    AnyError::error(format!("{e:#}"))
}

/// Opens (or creates) the store under `data_dir`, creating the directory.
pub fn open_db(data_dir: &Path) -> anyhow::Result<Arc<Database>> {
    std::fs::create_dir_all(data_dir)?;
    let db = Database::create(data_dir.join(DB_FILE))?;
    let tx = db.begin_write()?;
    tx.open_table(LOG)?;
    tx.open_table(META)?;
    tx.commit()?;
    Ok(Arc::new(db))
}

/// Whether the store holds any Raft state (a vote or a log entry).
pub fn has_state(db: &Database) -> anyhow::Result<bool> {
    let tx = db.begin_read()?;
    let meta = tx.open_table(META)?;
    let log = tx.open_table(LOG)?;
    Ok(meta.get(KEY_VOTE)?.is_some() || log.last()?.is_some())
}

fn read_meta<T: DeserializeOwned>(db: &Database, key: &str) -> anyhow::Result<Option<T>> {
    let tx = db.begin_read()?;
    let table = tx.open_table(META)?;
    let value = table.get(key)?;
    Ok(match value {
        Some(v) => Some(serde_json::from_slice(v.value())?),
        None => None,
    })
}

fn write_meta<T: Serialize>(db: &Database, key: &str, value: &T) -> anyhow::Result<()> {
    let bytes = serde_json::to_vec(value)?;
    let tx = db.begin_write()?;
    tx.open_table(META)?.insert(key, bytes.as_slice())?;
    tx.commit()?;
    Ok(())
}

/// Runs blocking redb work off the async worker threads.
async fn blocking<T, F>(db: &Arc<Database>, f: F) -> anyhow::Result<T>
where
    T: Send + 'static,
    F: FnOnce(&Database) -> anyhow::Result<T> + Send + 'static,
{
    let db = db.clone();
    tokio::task::spawn_blocking(move || f(&db)).await?
}

fn to_range(range: &impl RangeBounds<u64>) -> Option<(u64, Option<u64>)> {
    let start = match range.start_bound() {
        Bound::Included(s) => *s,
        Bound::Excluded(s) => s.checked_add(1)?,
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(e) => Some(*e),
        Bound::Excluded(e) => Some(e.checked_sub(1)?),
        Bound::Unbounded => None,
    };
    if matches!(end, Some(e) if e < start) {
        return None;
    }
    Some((start, end))
}

/// The Raft log, vote and committed index.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
}

impl LogStore {
    pub fn new(db: Arc<Database>) -> Self {
        LogStore { db }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StResult<Vec<Entry<TypeConfig>>> {
        let Some((start, end)) = to_range(&range) else {
            return Ok(Vec::new());
        };
        let read = |db: &Database| -> anyhow::Result<Vec<Entry<TypeConfig>>> {
            let tx = db.begin_read()?;
            let table = tx.open_table(LOG)?;
            let iter = match end {
                Some(end) => table.range(start..=end)?,
                None => table.range(start..)?,
            };
            let mut entries = Vec::new();
            for item in iter {
                let (_, v) = item?;
                entries.push(serde_json::from_slice(v.value())?);
            }
            Ok(entries)
        };
        read(&self.db).map_err(|e| StorageIOError::read_logs(any(e)).into())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> StResult<LogState<TypeConfig>> {
        let read = |db: &Database| -> anyhow::Result<LogState<TypeConfig>> {
            let last_purged: Option<LogId<NodeId>> = read_meta(db, KEY_LAST_PURGED)?;
            let tx = db.begin_read()?;
            let table = tx.open_table(LOG)?;
            let last = match table.last()? {
                Some((_, v)) => {
                    let entry: Entry<TypeConfig> = serde_json::from_slice(v.value())?;
                    Some(entry.log_id)
                }
                None => last_purged,
            };
            Ok(LogState {
                last_purged_log_id: last_purged,
                last_log_id: last,
            })
        };
        read(&self.db).map_err(|e| StorageIOError::read_logs(any(e)).into())
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> StResult<()> {
        let vote = *vote;
        blocking(&self.db, move |db| write_meta(db, KEY_VOTE, &vote))
            .await
            .map_err(|e| StorageIOError::write_vote(any(e)).into())
    }

    async fn read_vote(&mut self) -> StResult<Option<Vote<NodeId>>> {
        read_meta(&self.db, KEY_VOTE).map_err(|e| StorageIOError::read_vote(any(e)).into())
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> StResult<()> {
        blocking(&self.db, move |db| {
            write_meta(db, KEY_COMMITTED, &committed)
        })
        .await
        .map_err(|e| StorageIOError::write(any(e)).into())
    }

    async fn read_committed(&mut self) -> StResult<Option<LogId<NodeId>>> {
        let committed: Option<Option<LogId<NodeId>>> =
            read_meta(&self.db, KEY_COMMITTED).map_err(|e| StorageIOError::read(any(e)))?;
        Ok(committed.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut encoded = Vec::new();
        for entry in entries {
            let bytes =
                serde_json::to_vec(&entry).map_err(|e| StorageIOError::write_logs(any(e)))?;
            encoded.push((entry.log_id.index, bytes));
        }
        let result = blocking(&self.db, move |db| {
            let tx = db.begin_write()?;
            {
                let mut table = tx.open_table(LOG)?;
                for (index, bytes) in &encoded {
                    table.insert(*index, bytes.as_slice())?;
                }
            }
            tx.commit()?;
            Ok(())
        })
        .await;
        match result {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                let msg = format!("{e:#}");
                callback.log_io_completed(Err(std::io::Error::other(msg.clone())));
                Err(StorageIOError::write_logs(AnyError::error(msg)).into())
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> StResult<()> {
        blocking(&self.db, move |db| {
            let tx = db.begin_write()?;
            tx.open_table(LOG)?
                .retain_in(log_id.index.., |_, _| false)?;
            tx.commit()?;
            Ok(())
        })
        .await
        .map_err(|e| StorageIOError::write_logs(any(e)).into())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> StResult<()> {
        blocking(&self.db, move |db| {
            let bytes = serde_json::to_vec(&Some(log_id))?;
            let tx = db.begin_write()?;
            tx.open_table(META)?
                .insert(KEY_LAST_PURGED, bytes.as_slice())?;
            tx.open_table(LOG)?
                .retain_in(..=log_id.index, |_, _| false)?;
            tx.commit()?;
            Ok(())
        })
        .await
        .map_err(|e| StorageIOError::write_logs(any(e)).into())
    }
}

/// A snapshot as stored in `raft_meta["snapshot"]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, MemberNode>,
    data: Vec<u8>,
}

/// The applied state, shared with the [`super::Cluster`] handle for reads.
#[derive(Debug, Default)]
pub struct Applied {
    pub last_applied: Option<LogId<NodeId>>,
    pub last_membership: StoredMembership<NodeId, MemberNode>,
    pub state: ClusterState,
}

/// What the state machine shares with the rest of the node.
pub struct SmShared {
    pub applied: RwLock<Applied>,
    /// This node's name, to compute `owned`.
    me: String,
    pub owned: watch::Sender<BTreeSet<String>>,
}

impl SmShared {
    pub fn new(me: String) -> Arc<Self> {
        Arc::new(SmShared {
            applied: RwLock::new(Applied::default()),
            me,
            owned: watch::channel(BTreeSet::new()).0,
        })
    }

    fn publish_owned(&self, state: &ClusterState) {
        let owned = state.owned_by(&self.me);
        self.owned.send_if_modified(|cur| {
            if *cur != owned {
                *cur = owned;
                true
            } else {
                false
            }
        });
    }
}

/// The state machine: [`ClusterState`] in memory, snapshots in redb.
#[derive(Clone)]
pub struct StateMachineStore {
    db: Arc<Database>,
    shared: Arc<SmShared>,
}

impl StateMachineStore {
    /// Loads the last stored snapshot, if any, into `shared`.
    pub fn new(db: Arc<Database>, shared: Arc<SmShared>) -> anyhow::Result<Self> {
        if let Some(snap) = read_meta::<StoredSnapshot>(&db, KEY_SNAPSHOT)? {
            let state: ClusterState = serde_json::from_slice(&snap.data)?;
            shared.publish_owned(&state);
            // The lock is never held across a panic-prone call, so it is not poisoned.
            let mut applied = shared.applied.write().expect("state machine lock");
            *applied = Applied {
                last_applied: snap.meta.last_log_id,
                last_membership: snap.meta.last_membership,
                state,
            };
        }
        Ok(StateMachineStore { db, shared })
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> StResult<Snapshot<TypeConfig>> {
        let (meta, data) = {
            let applied = self.shared.applied.read().expect("state machine lock");
            let data = serde_json::to_vec(&applied.state)
                .map_err(|e| StorageIOError::read_state_machine(any(e)))?;
            let snapshot_id = match applied.last_applied {
                Some(l) => format!("{}-{}-{}", l.leader_id.term, l.index, uuid::Uuid::new_v4()),
                None => format!("none-{}", uuid::Uuid::new_v4()),
            };
            let meta = SnapshotMeta {
                last_log_id: applied.last_applied,
                last_membership: applied.last_membership.clone(),
                snapshot_id,
            };
            (meta, data)
        };
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data: data.clone(),
        };
        blocking(&self.db, move |db| write_meta(db, KEY_SNAPSHOT, &stored))
            .await
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), any(e)))?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = StateMachineStore;

    async fn applied_state(
        &mut self,
    ) -> StResult<(Option<LogId<NodeId>>, StoredMembership<NodeId, MemberNode>)> {
        let applied = self.shared.applied.read().expect("state machine lock");
        Ok((applied.last_applied, applied.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> StResult<Vec<CommandResponse>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut applied = self.shared.applied.write().expect("state machine lock");
        let mut responses = Vec::new();
        for entry in entries {
            applied.last_applied = Some(entry.log_id);
            let response = match entry.payload {
                EntryPayload::Blank => CommandResponse::default(),
                EntryPayload::Normal(cmd) => applied.state.apply(&cmd),
                EntryPayload::Membership(m) => {
                    applied.last_membership = StoredMembership::new(Some(entry.log_id), m);
                    CommandResponse::default()
                }
            };
            responses.push(response);
        }
        self.shared.publish_owned(&applied.state);
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> StResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, MemberNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StResult<()> {
        let data = snapshot.into_inner();
        let state: ClusterState = serde_json::from_slice(&data)
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), any(e)))?;
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        blocking(&self.db, move |db| write_meta(db, KEY_SNAPSHOT, &stored))
            .await
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), any(e)))?;
        let mut applied = self.shared.applied.write().expect("state machine lock");
        self.shared.publish_owned(&state);
        *applied = Applied {
            last_applied: meta.last_log_id,
            last_membership: meta.last_membership.clone(),
            state,
        };
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StResult<Option<Snapshot<TypeConfig>>> {
        let stored: Option<StoredSnapshot> = read_meta(&self.db, KEY_SNAPSHOT)
            .map_err(|e| StorageIOError::read_snapshot(None, any(e)))?;
        Ok(stored.map(|s| Snapshot {
            meta: s.meta,
            snapshot: Box::new(Cursor::new(s.data)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::testutil::TempDir;
    use openraft::testing::{StoreBuilder, Suite};

    struct Builder;

    impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for Builder {
        async fn build(&self) -> StResult<(TempDir, LogStore, StateMachineStore)> {
            let dir = TempDir::new("store-suite");
            let db = open_db(dir.path()).map_err(|e| StorageIOError::write(any(e)))?;
            let sm = StateMachineStore::new(db.clone(), SmShared::new("me@127.0.0.1".into()))
                .map_err(|e| StorageIOError::read(any(e)))?;
            Ok((dir, LogStore::new(db), sm))
        }
    }

    #[test]
    fn openraft_storage_suite() {
        Suite::test_all(Builder).expect("openraft storage suite");
    }

    #[test]
    fn state_survives_reopen() {
        let dir = TempDir::new("store-reopen");
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        rt.block_on(async {
            let db = open_db(dir.path()).expect("open");
            assert!(!has_state(&db).expect("has_state"));
            let mut log = LogStore::new(db.clone());
            let vote = Vote::new(3, 7);
            log.save_vote(&vote).await.expect("save vote");
            let committed = Some(LogId::new(openraft::CommittedLeaderId::new(3, 7), 0));
            log.save_committed(committed).await.expect("save committed");
            let shared = SmShared::new("a@127.0.0.1".into());
            let mut sm = StateMachineStore::new(db.clone(), shared.clone()).expect("sm");
            shared.applied.write().unwrap().state.apply(
                &super::super::types::Command::AssignChannel {
                    channel_id: "c".into(),
                    owner: "a@127.0.0.1".into(),
                },
            );
            sm.build_snapshot().await.expect("snapshot");
            drop((log, sm, db));

            let db = open_db(dir.path()).expect("reopen");
            assert!(has_state(&db).expect("has_state"));
            let mut log = LogStore::new(db.clone());
            assert_eq!(log.read_vote().await.expect("vote"), Some(vote));
            assert_eq!(log.read_committed().await.expect("committed"), committed);
            let shared = SmShared::new("a@127.0.0.1".into());
            StateMachineStore::new(db, shared.clone()).expect("sm");
            assert_eq!(shared.owned.borrow().len(), 1);
        });
    }
}

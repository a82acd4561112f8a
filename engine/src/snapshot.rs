//! Hot-read cache of the embedded default (SQLite, no shared bus): workflow and task reads are kept for as long as
//! the database has not changed at all. Any commit, by this process or another one on the same file (a separate
//! worker, a second server), rewrites the WAL-index header at the start of the `-shm` file (documented in SQLite's
//! "WAL-mode file format": it holds the WAL's frame count, checksums and salts, stored twice so that readers can
//! detect a header being written). An entry is stamped with that header as read *before* its rows were read and is
//! served only while the header is still the same, so a hit never returns a state older than the file. Under
//! constant writes it simply misses; an idle or read-mostly database answers from memory.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

use taskorch_domain::WorkflowId;

use crate::model::{TaskRecord, WorkflowRecord};
use crate::store::KeyWithHash;

/// The WAL-index header as read before a database read.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Stamp([u8; HEADER]);

const HEADER: usize = 48;
/// Most workflows kept (of each map); the maps are emptied when they reach it.
const CAPACITY: usize = 10_000;

/// See the module documentation.
pub struct SnapshotCache {
    shm: PathBuf,
    /// The `-shm` file as last opened.
    file: RwLock<Option<Arc<File>>>,
    workflows: Mutex<HashMap<WorkflowId, (Stamp, WorkflowRecord)>>,
    tasks: Mutex<HashMap<WorkflowId, (Stamp, Vec<TaskRecord>)>>,
    /// API keys by prefix: a revocation is a commit, so a key is checked against its row as of the last commit.
    keys: Mutex<HashMap<String, (Stamp, KeyWithHash)>>,
}

impl SnapshotCache {
    /// The cache of a `sqlite://` URL in WAL mode; `None` for an in-memory database.
    pub fn for_url(url: &str) -> Option<Self> {
        let rest = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:"))?;
        let path = rest.split('?').next().unwrap_or_default();
        if path.is_empty() || path.starts_with(":memory:") {
            return None;
        }
        Some(Self {
            shm: PathBuf::from(format!("{path}-shm")),
            file: RwLock::default(),
            workflows: Mutex::default(),
            tasks: Mutex::default(),
            keys: Mutex::default(),
        })
    }

    /// The current header, or `None` when it cannot be trusted (no `-shm`, or a header being written). The file is
    /// kept open between calls, but SQLite deletes it when the last connection to the database closes and a later
    /// one creates a new one: a header read from a file that has no name any more (its link count, read *after*
    /// the header, is 0) is discarded and the path opened again. A file deleted after that check was still the
    /// live one when its header was read.
    pub fn stamp(&self) -> Option<Stamp> {
        let mut buf = [0u8; 2 * HEADER];
        let kept = self.file.read().ok().and_then(|f| f.clone());
        let live = kept.filter(|f| f.read_exact_at(&mut buf, 0).is_ok() && f.metadata().is_ok_and(|m| m.nlink() > 0));
        if live.is_none() {
            let file = Arc::new(File::open(&self.shm).ok()?);
            file.read_exact_at(&mut buf, 0).ok()?;
            if let Ok(mut slot) = self.file.write() {
                *slot = Some(file);
            }
        }
        let (a, b) = buf.split_at(HEADER);
        let mut s = [0u8; HEADER];
        s.copy_from_slice(a);
        (a == b).then_some(Stamp(s))
    }

    pub fn workflow(&self, id: WorkflowId) -> Option<WorkflowRecord> {
        let now = self.stamp()?;
        let map = self.workflows.lock().ok()?;
        map.get(&id).filter(|(s, _)| *s == now).map(|(_, r)| r.clone())
    }

    pub fn put_workflow(&self, stamp: Stamp, record: &WorkflowRecord) {
        if let Ok(mut map) = self.workflows.lock() {
            if map.len() >= CAPACITY {
                map.clear();
            }
            map.insert(record.id, (stamp, record.clone()));
        }
    }

    /// The cached task lists among `ids`, and the ids that missed.
    pub fn tasks(&self, ids: &[WorkflowId]) -> (HashMap<WorkflowId, Vec<TaskRecord>>, Vec<WorkflowId>) {
        let (Some(now), Ok(map)) = (self.stamp(), self.tasks.lock()) else { return (HashMap::new(), ids.to_vec()) };
        let mut hits = HashMap::with_capacity(ids.len());
        let mut missed = Vec::new();
        for id in ids {
            match map.get(id).filter(|(s, _)| *s == now) {
                Some((_, tasks)) => {
                    hits.insert(*id, tasks.clone());
                }
                None => missed.push(*id),
            }
        }
        (hits, missed)
    }

    /// Stores task lists read after `stamp` was taken; `ids` without tasks are stored as empty.
    pub fn put_tasks(&self, stamp: Stamp, ids: &[WorkflowId], tasks: &HashMap<WorkflowId, Vec<TaskRecord>>) {
        if let Ok(mut map) = self.tasks.lock() {
            if map.len() + ids.len() > CAPACITY {
                map.clear();
            }
            for id in ids {
                map.insert(*id, (stamp, tasks.get(id).cloned().unwrap_or_default()));
            }
        }
    }
}

impl SnapshotCache {
    pub(crate) fn api_key(&self, prefix: &str) -> Option<KeyWithHash> {
        let now = self.stamp()?;
        let map = self.keys.lock().ok()?;
        map.get(prefix).filter(|(s, _)| *s == now).map(|(_, k)| k.clone())
    }

    pub(crate) fn put_api_key(&self, stamp: Stamp, prefix: &str, key: &KeyWithHash) {
        if let Ok(mut map) = self.keys.lock() {
            if map.len() >= CAPACITY {
                map.clear();
            }
            map.insert(prefix.to_owned(), (stamp, key.clone()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_file_databases_have_one() {
        assert!(SnapshotCache::for_url("sqlite::memory:").is_none());
        assert!(SnapshotCache::for_url("postgres://x/y").is_none());
        let c = SnapshotCache::for_url("sqlite://data/taskorch.db?mode=rwc").expect("file");
        assert_eq!(c.shm, PathBuf::from("data/taskorch.db-shm"));
    }

    #[test]
    fn a_header_being_written_or_missing_is_no_stamp() {
        let dir = std::env::temp_dir().join(format!("taskorch-snapshot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let db = dir.join("t.db");
        let cache = SnapshotCache::for_url(&format!("sqlite://{}", db.display())).expect("file");
        assert_eq!(cache.stamp(), None, "no -shm yet");
        let mut header = vec![7u8; 2 * HEADER];
        std::fs::write(dir.join("t.db-shm"), &header).expect("write");
        let first = cache.stamp().expect("both copies equal");
        header[HEADER + 3] = 8;
        std::fs::write(dir.join("t.db-shm"), &header).expect("write");
        assert_eq!(cache.stamp(), None, "copies differ: being written");
        header[3] = 8;
        std::fs::write(dir.join("t.db-shm"), &header).expect("write");
        assert_ne!(cache.stamp(), Some(first), "a commit changes the stamp");
        let second = cache.stamp().expect("written in place");
        // SQLite deletes the file when the last connection closes, and the next one creates another.
        std::fs::remove_file(dir.join("t.db-shm")).expect("delete");
        assert_eq!(cache.stamp(), None, "a deleted file is no stamp, though it is still open");
        header[0] = 9;
        header[HEADER] = 9;
        std::fs::write(dir.join("t.db-shm"), &header).expect("recreate");
        let third = cache.stamp().expect("the new file is read");
        assert_ne!(third, second, "the new file's header, not the deleted one's");
        header[5] = 1;
        header[HEADER + 5] = 1;
        std::fs::write(dir.join("t.db-shm"), &header).expect("write in place");
        assert_ne!(cache.stamp(), Some(third), "writes to the reopened file are seen");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

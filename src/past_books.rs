//! The books as they stood at a recorded time, for bitemporal queries (`as_recorded_at` on the
//! QueryService) and the dashboard's `?as_of_recorded`: the read models rebuilt from the log up
//! to that time, kept for the next query at the same log position. A rebuild starts from a
//! copy of the newest kept books recorded before that time, if any, and folds only the events
//! between (`replay::advance`): an auditor stepping forward through time pays for each step,
//! not for the whole prefix again. It goes into a fresh temporary directory, in memory
//! (`/dev/shm`) where the machine has one, never into the live read models and never as a
//! replay output; it is removed when the books are evicted.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use event_store::{EventStore, Position};
use jiff::Timestamp;
use query_service::{PastBooks, ReadModels};
use tokio::sync::Mutex;
use tonic::Status;

/// Past books kept (the least recently built is evicted first).
pub const PAST_BOOKS_KEPT_MAX: usize = 4;

/// Past books rebuilt from one log.
pub struct RebuiltBooks {
    store: Arc<dyn EventStore>,
    /// Newest last; rebuilds are serialized by this lock (each reads the whole prefix).
    kept: Mutex<Vec<Kept>>,
}

struct Kept {
    /// The log prefix `[0, end)` the books hold.
    end: Position,
    models: ReadModels,
    db: sled::Db,
    dir: tempfile::TempDir,
}

impl RebuiltBooks {
    pub fn new(store: Arc<dyn EventStore>) -> Arc<RebuiltBooks> {
        Arc::new(RebuiltBooks { store, kept: Mutex::new(Vec::new()) })
    }
}

/// Where rebuilt books live: memory (`/dev/shm`) when the machine has it, else the temp dir.
fn scratch_dir() -> PathBuf {
    let shm = PathBuf::from("/dev/shm");
    let writable = std::fs::metadata(&shm).is_ok_and(|m| m.is_dir() && !m.permissions().readonly());
    if writable {
        shm
    } else {
        std::env::temp_dir()
    }
}

/// Directories a sled database holds (it has one level: `blobs/`); a deeper tree is refused.
const COPY_DEPTH_MAX: u32 = 4;

/// Copies a flushed, idle sled database directory (what a crash would leave: sled recovers it).
fn copy_dir(from: &Path, to: &Path, depth: u32) -> std::io::Result<()> {
    if depth > COPY_DEPTH_MAX {
        return Err(std::io::Error::other(format!("{} is nested too deep", from.display())));
    }
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target, depth + 1)?;
        } else {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}

#[async_trait::async_trait]
impl PastBooks for RebuiltBooks {
    async fn at(&self, at: Timestamp) -> Result<ReadModels, Status> {
        let cutoff = replay::Cutoff::RecordedAt(at);
        let end = replay::resolve(&self.store, cutoff).await.map_err(|e| {
            Status::internal(format!("finding the log position recorded at {at}: {e}"))
        })?;
        let mut kept = self.kept.lock().await;
        if let Some(i) = kept.iter().position(|b| b.end == end) {
            // Most recently used last: the least recently used is evicted first.
            let books = kept.remove(i);
            let models = books.models.clone();
            kept.push(books);
            return Ok(models);
        }
        let internal = |what: &str, e: &dyn std::fmt::Display| {
            Status::internal(format!("{what} the books as recorded at {at}: {e}"))
        };
        let dir = tempfile::Builder::new()
            .prefix("accrual-past-books-")
            .tempdir_in(scratch_dir())
            .map_err(|e| internal("a directory for", &e))?;
        let path = dir.path().join(replay::READ_MODELS_DIR);
        // Start from the newest kept books before `end` (a copy: they stay as they are for
        // the queries reading them), so only the events between are folded.
        if let Some(base) = kept.iter().filter(|b| b.end < end).max_by_key(|b| b.end) {
            base.db.flush_async().await.map_err(|e| internal("flushing the books before", &e))?;
            // A blocking copy of up to the whole read models: off the async workers.
            let from = base.dir.path().join(replay::READ_MODELS_DIR);
            let to = path.clone();
            tokio::task::spawn_blocking(move || copy_dir(&from, &to, 0))
                .await
                .map_err(|e| internal("copying the books before", &e))?
                .map_err(|e| internal("copying the books before", &e))?;
        }
        let db = projections::open_db(&path).map_err(|e| internal("opening", &e))?;
        replay::advance(self.store.clone(), end, &db)
            .await
            .map_err(|e| internal("rebuilding", &e))?;
        let models =
            crate::serve::open_projections_on(&db, None).map_err(|e| internal("opening", &e))?;
        if kept.len() == PAST_BOOKS_KEPT_MAX {
            kept.remove(0);
        }
        kept.push(Kept { end, models: models.clone(), db, dir });
        Ok(models)
    }
}

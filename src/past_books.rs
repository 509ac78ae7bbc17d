//! The books as they stood at a recorded time, for bitemporal queries (`as_recorded_at` on the
//! QueryService) and the dashboard's `?as_of_recorded`: the read models rebuilt from the log up
//! to that time (`replay::rebuild`), kept for the next query at the same log position. A
//! rebuild goes into a fresh temporary directory, in memory (`/dev/shm`) where the machine has
//! one, never into the live read models and never as a replay output; it is removed when the
//! books are evicted.

use std::path::PathBuf;
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
    _dir: tempfile::TempDir,
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

#[async_trait::async_trait]
impl PastBooks for RebuiltBooks {
    async fn at(&self, at: Timestamp) -> Result<ReadModels, Status> {
        let cutoff = replay::Cutoff::RecordedAt(at);
        let end = replay::resolve(&self.store, cutoff).await.map_err(|e| {
            Status::internal(format!("finding the log position recorded at {at}: {e}"))
        })?;
        let mut kept = self.kept.lock().await;
        if let Some(books) = kept.iter().find(|b| b.end == end) {
            return Ok(books.models.clone());
        }
        let dir = tempfile::Builder::new()
            .prefix("accrual-past-books-")
            .tempdir_in(scratch_dir())
            .map_err(|e| Status::internal(format!("a directory for past books: {e}")))?;
        let out = dir.path().join("replay");
        let rebuilt = replay::rebuild(
            self.store.clone(),
            replay::Cutoff::Position(end),
            &replay::Kind::ALL,
            &out,
            &|_, _| {},
        )
        .await
        .map_err(|e| Status::internal(format!("rebuilding the books as recorded at {at}: {e}")))?;
        let models = crate::serve::open_projections_on(&rebuilt.read_models, None)
            .map_err(|e| Status::internal(format!("opening the books as recorded at {at}: {e}")))?;
        if kept.len() == PAST_BOOKS_KEPT_MAX {
            kept.remove(0);
        }
        kept.push(Kept { end, models: models.clone(), _dir: dir });
        Ok(models)
    }
}

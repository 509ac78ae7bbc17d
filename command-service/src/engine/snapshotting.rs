//! The engine's side of write-model snapshots ([`crate::snapshot`]): open from a snapshot and the
//! log's tail, and write snapshots at graceful shutdown and every
//! [`SnapshotOptions::interval_events`] events from a background task.
//!
//! Invariant: a snapshot at `P` holds exactly the fold of the log's events `[0, P)`. The model
//! is copied under the lock (with what the decision path would have seen), then, off the lock,
//! written only once every append it includes is durable and none of this engine's appends
//! diverged meanwhile ([`Engine::wait_durable`]): a model holding events of a failed append is
//! never saved. The snapshot records the hash the log has at `P - 1`.

use std::sync::Weak;

use serde::{Deserialize, Serialize};

use super::*;
use crate::snapshot::{self, Header, SnapshotOptions};

/// The state a snapshot holds: everything of [`WriteModel`] folded from the log (not
/// `recovered_through`, which counts this process's appends).
#[derive(Serialize, Deserialize)]
pub(super) struct Saved {
    ledger: Ledger,
    stream_versions: HashMap<String, u64>,
    idempotency: HashMap<String, KeyedCommand>,
    last_keyed: Option<(Uuid, String)>,
    next_position: Position,
}

impl Saved {
    fn of(model: &WriteModel) -> Saved {
        Saved {
            ledger: model.ledger.clone(),
            stream_versions: model.stream_versions.clone(),
            idempotency: model.idempotency.clone(),
            last_keyed: model.last_keyed.clone(),
            next_position: model.next_position,
        }
    }

    fn into_model(self) -> WriteModel {
        WriteModel {
            ledger: self.ledger,
            stream_versions: self.stream_versions,
            idempotency: self.idempotency,
            last_keyed: self.last_keyed,
            next_position: self.next_position,
            ..WriteModel::default()
        }
    }
}

/// The write model at open (noting into `dedup`): from a valid snapshot plus the log's tail,
/// else from the whole log;
/// with the position of the snapshot it started from (0: none).
pub(super) async fn open_model(
    store: &dyn EventStore,
    options: Option<&SnapshotOptions>,
    dedup: Arc<DedupIndex>,
) -> Result<(WriteModel, Position), Status> {
    let started = std::time::Instant::now();
    let Some(mut model) = load(store, options).await else {
        let mut model = WriteModel { dedup: Some(dedup), ..WriteModel::default() };
        rebuild(store, &mut model).await?;
        return Ok((model, 0));
    };
    // The dedup index brought itself up to the head when it opened (from its own covered
    // position), so the snapshot needs nothing of it; the tail fold notes nothing new there.
    model.dedup = Some(dedup);
    let loaded_ms = started.elapsed().as_millis() as u64;
    let position = model.next_position;
    fold(store, &mut model).await?;
    tracing::info!(
        snapshot_position = position,
        tail_events = model.next_position - position,
        events = model.next_position,
        load_ms = loaded_ms,
        ms = started.elapsed().as_millis() as u64,
        "write model loaded from a snapshot; folded the log's tail"
    );
    Ok((model, position))
}

/// A valid snapshot's model, or `None` (the reason logged).
async fn load(store: &dyn EventStore, options: Option<&SnapshotOptions>) -> Option<WriteModel> {
    let path = &options?.path;
    let ignored = |reason: String| -> Option<WriteModel> {
        tracing::warn!(path = %path.display(), %reason, "write-model snapshot ignored; rebuilding the write model from the log");
        None
    };
    let (header, payload) = match snapshot::read(path, store).await {
        Ok(Some(found)) => found,
        Ok(None) => {
            tracing::info!(path = %path.display(), "no write-model snapshot; rebuilding the write model from the log");
            return None;
        }
        Err(reason) => return ignored(reason),
    };
    let decoded = tokio::task::spawn_blocking(move || serde_json::from_slice::<Saved>(&payload))
        .await
        .expect("decoding does not panic");
    match decoded {
        Ok(saved) if saved.next_position == header.position => Some(saved.into_model()),
        Ok(saved) => ignored(format!(
            "corrupt: the model is at position {}, the header says {}",
            saved.next_position, header.position
        )),
        Err(e) => ignored(format!("undecodable model: {e}")),
    }
}

impl Engine {
    /// Starts the background task that writes a snapshot once the log grew
    /// [`SnapshotOptions::interval_events`] since the last one; it ends when the engine closes
    /// or is dropped. `None` without snapshots or with an interval of 0.
    pub fn start_snapshots(self: &Arc<Self>) -> Option<tokio::task::JoinHandle<()>> {
        let interval = self.snapshots.as_ref()?.interval_events;
        if interval == 0 {
            return None;
        }
        let engine: Weak<Engine> = Arc::downgrade(self);
        Some(tokio::spawn(async move {
            let check = Duration::from_millis(snapshot::CHECK_INTERVAL_MS);
            loop {
                tokio::time::sleep(check).await;
                let Some(engine) = engine.upgrade() else { return };
                if engine.closing.load(Ordering::SeqCst) {
                    return;
                }
                let last = *engine.snapshot_position.lock().await;
                if engine.store.head() >= last.saturating_add(interval) {
                    engine.write_snapshot().await;
                }
            }
        }))
    }

    /// Writes a snapshot of the model as it is now (without snapshots configured: nothing);
    /// returns the position the latest snapshot covers (0: none).
    pub async fn write_snapshot(&self) -> Position {
        let model = self.lock_model().await;
        if let Ok(model) = model {
            let copying = std::time::Instant::now();
            let (saved, seen) = (Saved::of(&model), self.seen(&model));
            drop(model);
            self.save(saved, seen, copying.elapsed()).await;
        }
        self.snapshot_position().await
    }

    /// The position of the latest snapshot written, or loaded at open (0: none).
    pub async fn snapshot_position(&self) -> Position {
        *self.snapshot_position.lock().await
    }

    /// Writes a snapshot of the model at close (the caller holds the model lock and no
    /// command is decided any more).
    pub(super) async fn snapshot_at_close(&self, model: &WriteModel) {
        if self.snapshots.is_some() && model.next_position > *self.snapshot_position.lock().await {
            let copying = std::time::Instant::now();
            let saved = Saved::of(model);
            self.save(saved, self.seen(model), copying.elapsed()).await;
        }
    }

    /// Writes `saved` once what it holds is the log's prefix `[0, P)` (durable, nothing
    /// diverged); logs the outcome with `copy_ms`, the time the copy held the model lock. One
    /// write at a time.
    async fn save(&self, saved: Saved, seen: Seen, copy: Duration) {
        let Some(options) = self.snapshots.clone() else { return };
        let mut written = self.snapshot_position.lock().await;
        let position = saved.next_position;
        if position <= *written {
            return;
        }
        let started = std::time::Instant::now();
        let outcome = async {
            self.wait_durable(seen).await.map_err(|s| s.message().to_string())?;
            let head_hash = snapshot::head_hash_at(&*self.store, position).await?;
            let header = Header { position, head_hash };
            let write = move || {
                if let Some(flush_through) = &options.flush_through {
                    flush_through(position)
                        .map_err(|e| format!("flush_through({position}): {e}"))?;
                }
                let payload = serde_json::to_vec(&saved).map_err(|e| format!("encoding: {e}"))?;
                let bytes = payload.len();
                snapshot::write(&options.path, header, &payload)
                    .map_err(|e| format!("writing {}: {e}", options.path.display()))?;
                Ok::<_, String>(bytes)
            };
            tokio::task::spawn_blocking(write).await.map_err(|e| format!("writer: {e}"))?
        }
        .await;
        match outcome {
            Ok(bytes) => {
                *written = position;
                let ms = started.elapsed().as_millis() as u64;
                let copy_ms = copy.as_millis() as u64;
                tracing::info!(position, bytes, copy_ms, ms, "write-model snapshot written");
            }
            Err(reason) => {
                tracing::warn!(position, %reason, "write-model snapshot skipped");
            }
        }
    }
}

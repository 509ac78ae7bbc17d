//! Runs the shared conformance suite against both backends.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use event_store::conformance::{run_all, StoreFactory};
use event_store::{Clock, MemoryStore, SledConfig, SledStore};
use parking_lot::Mutex;

struct MemoryFactory;

#[async_trait]
impl StoreFactory for MemoryFactory {
    type Store = MemoryStore;

    async fn create(&self) -> MemoryStore {
        MemoryStore::new()
    }

    async fn reopen(&self) -> Option<MemoryStore> {
        None
    }

    async fn create_with_clock(&self, clock: Clock) -> Option<MemoryStore> {
        Some(MemoryStore::with_clock(clock))
    }
}

struct SledFactory {
    dir: tempfile::TempDir,
    created: AtomicUsize,
    last: Mutex<Option<PathBuf>>,
}

impl SledFactory {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        SledFactory { dir, created: AtomicUsize::new(0), last: Mutex::new(None) }
    }

    fn fresh_config(&self) -> SledConfig {
        let n = self.created.fetch_add(1, Ordering::SeqCst);
        let path = self.dir.path().join(format!("store-{n}"));
        *self.last.lock() = Some(path.clone());
        SledConfig::new(path)
    }
}

#[async_trait]
impl StoreFactory for SledFactory {
    type Store = SledStore;

    async fn create(&self) -> SledStore {
        SledStore::open(self.fresh_config()).expect("open sled store")
    }

    async fn reopen(&self) -> Option<SledStore> {
        let path = self.last.lock().clone().expect("a store was created");
        Some(SledStore::open(SledConfig::new(path)).expect("reopen sled store"))
    }

    async fn create_with_clock(&self, clock: Clock) -> Option<SledStore> {
        let config = SledConfig { clock, ..self.fresh_config() };
        Some(SledStore::open(config).expect("open sled store"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_store_conforms() {
    run_all(&MemoryFactory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sled_store_conforms() {
    run_all(&SledFactory::new()).await;
}

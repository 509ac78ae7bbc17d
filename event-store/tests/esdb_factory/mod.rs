//! The conformance-suite factory over a real `EsdbLog` (real `eventstore` client, real gRPC),
//! shared by `esdb_live.rs` (a live server from `ACCRUAL_ESDB_URL`) and `esdb_wire.rs` (the
//! `esdb-fake` protocol fake). Each store gets a log stream of its own
//! (`accrual-conformance-<uuid>`), so the server need not be empty.

use std::sync::Arc;

use async_trait::async_trait;
use event_store::conformance::StoreFactory;
use event_store::esdb::{EsdbLog, EsdbOptions, RetryPolicy};
use event_store::{Clock, EsdbStore};

pub struct EsdbFactory {
    /// The client's connection string (without Accrual's `stream=`).
    pub connection: String,
    /// `None`: the backend's default policy.
    pub retry: Option<RetryPolicy>,
    last_stream: parking_lot::Mutex<Option<String>>,
}

impl EsdbFactory {
    pub fn new(connection: &str, retry: Option<RetryPolicy>) -> EsdbFactory {
        EsdbFactory {
            connection: connection.to_owned(),
            retry,
            last_stream: parking_lot::Mutex::new(None),
        }
    }

    /// A node: its own client (own connection) on `stream`.
    pub async fn open(&self, stream: &str, clock: Option<Clock>) -> EsdbStore {
        self.try_open(stream, clock).await.expect("open the log stream")
    }

    pub async fn try_open(
        &self,
        stream: &str,
        clock: Option<Clock>,
    ) -> Result<EsdbStore, event_store::StoreError> {
        let log = EsdbLog::connect(&self.connection, stream).expect("client");
        let mut options = EsdbOptions::new(stream);
        if let Some(clock) = clock {
            options.clock = clock;
        }
        if let Some(retry) = self.retry {
            options.retry = retry;
        }
        EsdbStore::open_on(Arc::new(log), options).await
    }

    pub fn fresh_stream(&self) -> String {
        let stream = format!("accrual-conformance-{}", uuid::Uuid::new_v4().simple());
        *self.last_stream.lock() = Some(stream.clone());
        stream
    }
}

#[async_trait]
impl StoreFactory for EsdbFactory {
    type Store = EsdbStore;

    async fn create(&self) -> EsdbStore {
        let stream = self.fresh_stream();
        self.open(&stream, None).await
    }

    async fn reopen(&self) -> Option<EsdbStore> {
        let stream = self.last_stream.lock().clone()?;
        Some(self.open(&stream, None).await)
    }

    async fn create_with_clock(&self, clock: Clock) -> Option<EsdbStore> {
        let stream = self.fresh_stream();
        Some(self.open(&stream, Some(clock)).await)
    }
}

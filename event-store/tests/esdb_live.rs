//! The conformance suite against a live EventStoreDB / KurrentDB server, when
//! `ACCRUAL_ESDB_URL` names one (e.g. `esdb://127.0.0.1:2113?tls=false`). Each case gets a log
//! stream of its own (`accrual-conformance-<uuid>`), so the server need not be empty. Without
//! the variable the test says it was skipped and why.
#![cfg(feature = "esdb")]

use std::sync::Arc;

use async_trait::async_trait;
use event_store::conformance::{run_all, StoreFactory};
use event_store::esdb::{EsdbLog, EsdbOptions};
use event_store::{Clock, EsdbConfig, EsdbStore};

const SKIPPED: &str = "skipped: ACCRUAL_ESDB_URL not set (no EventStoreDB server to run the \
                       conformance suite against; e.g. ACCRUAL_ESDB_URL=esdb://127.0.0.1:2113?tls=false)";

struct Live {
    config: EsdbConfig,
    last_stream: parking_lot::Mutex<Option<String>>,
}

impl Live {
    async fn open(&self, stream: &str, clock: Option<Clock>) -> EsdbStore {
        let log = EsdbLog::connect(&self.config.connection, stream).expect("client");
        let mut options = EsdbOptions::new(stream);
        if let Some(clock) = clock {
            options.clock = clock;
        }
        EsdbStore::open_on(Arc::new(log), options).await.expect("open the log stream")
    }

    fn fresh_stream(&self) -> String {
        let stream = format!("accrual-conformance-{}", uuid::Uuid::new_v4().simple());
        *self.last_stream.lock() = Some(stream.clone());
        stream
    }
}

#[async_trait]
impl StoreFactory for Live {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_against_a_live_eventstoredb() {
    let Ok(url) = std::env::var("ACCRUAL_ESDB_URL") else {
        skipped();
        return;
    };
    let config = EsdbConfig::parse(&url).expect("ACCRUAL_ESDB_URL");
    println!("conformance against {}", config.redacted());
    run_all(&Live { config, last_stream: parking_lot::Mutex::new(None) }).await;
}

/// Says the test was skipped, on the real stderr (not captured by the test harness), so a
/// skipped run is never mistaken for a pass.
fn skipped() {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "{SKIPPED}");
}

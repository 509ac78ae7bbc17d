//! The conformance suite against a live EventStoreDB / KurrentDB server, when
//! `ACCRUAL_ESDB_URL` names one (e.g. `esdb://127.0.0.1:2113?tls=false`). Each case gets a log
//! stream of its own (`accrual-conformance-<uuid>`), so the server need not be empty. Without
//! the variable the test says it was skipped and why.
#![cfg(feature = "esdb")]

mod esdb_factory;

use event_store::conformance::run_all;
use event_store::EsdbConfig;

use esdb_factory::EsdbFactory;

const SKIPPED: &str = "skipped: ACCRUAL_ESDB_URL not set (no EventStoreDB server to run the \
                       conformance suite against; e.g. ACCRUAL_ESDB_URL=esdb://127.0.0.1:2113?tls=false)";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_against_a_live_eventstoredb() {
    let Ok(url) = std::env::var("ACCRUAL_ESDB_URL") else {
        skipped();
        return;
    };
    let config = EsdbConfig::parse(&url).expect("ACCRUAL_ESDB_URL");
    println!("conformance against {}", config.redacted());
    run_all(&EsdbFactory::new(&config.connection, None)).await;
}

/// Says the test was skipped, on the real stderr (not captured by the test harness), so a
/// skipped run is never mistaken for a pass.
fn skipped() {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "{SKIPPED}");
}

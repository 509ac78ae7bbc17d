//! Shared by the examples and the measurement tests (included with `#[path]`): the usage
//! envelopes of the `bench scale` workload and a sequential scan of a whole log.

#![allow(dead_code)] // each includer uses part of it

use std::time::Instant;

use event_store::EventStore;

/// Stream and payload of usage event `n` as the command service stores it: consecutive events
/// on different subscriptions (of `streams`), three metrics, `UsageRecorded` JSON.
pub fn usage(n: u64, streams: u64) -> (String, Vec<u8>) {
    let sub = format!("sub-5f3a9c1e-{:06}", n % streams);
    let (metric, property, value) = match n % 3 {
        0 => ("api_calls", "calls", (n % 97 + 1).to_string()),
        1 => ("storage_gb", "gb", format!("{}.{}", n % 500, n % 10)),
        _ => ("seats", "user", format!("user-{}", n % 5_000)),
    };
    let payload = format!(
        r#"{{"type":"UsageRecorded","subscription_id":"{sub}","transaction_id":"tx-5f3a9c1e-{n:012}","metric_code":"{metric}-5f3a9c1e","occurred_at":"2026-12-03T10:{:02}:{:02}.{:06}Z","properties":{{"{property}":"{value}","region":"eu-west-1"}}}}"#,
        n / 60_000 % 60,
        n / 1_000 % 60,
        n % 1_000 * 997 % 1_000_000
    );
    (format!("usage-{sub}"), payload.into_bytes())
}

/// Reads the whole log in pages of 10,000 events (what a projection does): (events, seconds,
/// payload bytes).
pub async fn scan_all(store: &impl EventStore) -> (u64, f64, usize) {
    let started = Instant::now();
    let (mut from, mut bytes) = (0, 0);
    loop {
        let page = store.read_all(from, 10_000).await.expect("read_all");
        let Some(last) = page.last() else { break };
        from = last.position + 1;
        bytes += page.iter().map(|e| e.payload.len()).sum::<usize>();
    }
    (from, started.elapsed().as_secs_f64(), bytes)
}

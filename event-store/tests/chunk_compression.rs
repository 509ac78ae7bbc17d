//! Measurement, not a check (`#[ignore]`): bytes per usage event and decode speed of realistic
//! usage chunks under the compressor of chunk format 2 (LZ4). zstd levels 1, 3 and 9 were
//! measured the same way and left out (figures in docs/decisions/0026-store-index-and-chunks.md);
//! to compare again, add `zstd` as a dev-dependency and a row to `codecs`.
//!
//! `cargo test --release -p event-store --no-default-features --test chunk_compression -- \
//!     --ignored --nocapture`

use std::time::Instant;

use event_store::envelope::{decode_chunk, encode_chunk};
use event_store::{compute_hash, RecordedEvent, GENESIS_HASH};
use uuid::Uuid;

#[path = "../examples/common/mod.rs"]
mod common;

/// A chunk as the sled backend writes it for the `bench scale` workload: ~96 KiB of records,
/// consecutive events on different subscriptions, one request (correlation id, idempotency key).
fn usage_chunk(first: u64) -> Vec<RecordedEvent> {
    let mut prev = GENESIS_HASH;
    let correlation = Uuid::new_v4();
    let mut out = Vec::new();
    let mut bytes = 0;
    let mut n = first;
    while bytes < 96 * 1024 - 600 {
        let (stream, payload) = common::usage(n, 10_000);
        let mut ev = RecordedEvent {
            event_id: Uuid::new_v4(),
            stream,
            stream_version: n / 10_000,
            position: n,
            event_type: "UsageRecorded".into(),
            schema_version: 1,
            occurred_at_us: 1_796_292_000_000_000 + n as i64 * 1_000,
            recorded_at_us: 1_796_292_000_500_000,
            causation_id: None,
            correlation_id: Some(correlation),
            idempotency_key: Some(format!("ingest-{first}")),
            idempotency_digest: Some([7; 32]),
            payload,
            prev_hash: prev,
            hash: [0; 32],
        };
        ev.hash = compute_hash(&ev);
        prev = ev.hash;
        bytes += event_store::canonical_bytes(&ev).len() + 36;
        out.push(ev);
        n += 1;
    }
    out
}

#[test]
#[ignore = "measurement: prints figures"]
fn compression_of_usage_chunks() {
    let chunks: Vec<Vec<RecordedEvent>> = (0..50).map(|c| usage_chunk(c * 300)).collect();
    let events: usize = chunks.iter().map(Vec::len).sum();
    let raw: Vec<Vec<u8>> = chunks.iter().map(|c| encode_chunk(c)).collect();
    let raw_bytes: usize = raw.iter().map(Vec::len).sum();
    println!(
        "events={events} events_per_chunk={} format1_bytes_per_event={:.1}",
        events / chunks.len(),
        raw_bytes as f64 / events as f64
    );
    let started = Instant::now();
    for _ in 0..10 {
        for (c, bytes) in raw.iter().enumerate() {
            let first = chunks[c][0].position;
            assert_eq!(decode_chunk(first, bytes).unwrap().len(), chunks[c].len());
        }
    }
    let per_s = (events * 10) as f64 / started.elapsed().as_secs_f64();
    println!("format1 decode_events_per_s={per_s:.0}");
    type Codec = (&'static str, fn(&[u8]) -> Vec<u8>, fn(&[u8], usize) -> Vec<u8>);
    let codecs: [Codec; 1] = [(
        "lz4_flex",
        |b| lz4_flex::block::compress(b),
        |c, n| lz4_flex::block::decompress(c, n).unwrap(),
    )];
    for (name, compress, decompress) in codecs {
        let started = Instant::now();
        let packed: Vec<Vec<u8>> = raw.iter().map(|b| compress(&b[13..])).collect();
        let compress_s = started.elapsed().as_secs_f64();
        let bytes: usize = packed.iter().map(|p| p.len() + 17).sum();
        let started = Instant::now();
        for _ in 0..10 {
            for (p, r) in packed.iter().zip(&raw) {
                assert_eq!(decompress(p, r.len() - 13).len(), r.len() - 13);
            }
        }
        let decompress_mb_s = (raw_bytes * 10) as f64 / started.elapsed().as_secs_f64() / 1e6;
        println!(
            "codec={name} bytes_per_event={:.1} ratio={:.2} compress_mb_s={:.0} \
             decompress_mb_s={decompress_mb_s:.0}",
            bytes as f64 / events as f64,
            raw_bytes as f64 / bytes as f64,
            raw_bytes as f64 / compress_s / 1e6
        );
    }
}

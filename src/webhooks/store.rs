//! What webhooks keep, in `<data-dir>/webhooks` (a sled database of its own: the endpoints are
//! configuration with secrets, not billing facts, so they stay out of the log, and out of
//! `read-models/`, which may be deleted and rebuilt). Trees:
//! - `endpoints`: endpoint id → [`Endpoint`] JSON (its cursor included: the next position to
//!   deliver, written after each delivered or dead-lettered event, so a crash re-sends at most
//!   the event in flight: at least once);
//! - `deliveries`: `<id>/<seq 16 hex>` → [`Delivery`] JSON (the newest
//!   [`DELIVERIES_KEPT`] per endpoint);
//! - `redeliver`: `<id>/<position 16 hex>` → "" (manual redeliveries waiting).

use std::path::Path;

use anyhow::Context;
use event_store::Position;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// Delivery-log entries kept per endpoint.
pub const DELIVERIES_KEPT: u64 = 10_000;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub endpoint_id: String,
    pub url: String,
    pub types: Vec<String>,
    pub secret: String,
    pub enabled: bool,
    pub disabled_reason: String,
    /// Next log position to deliver.
    pub position: Position,
    pub failure_streak: u32,
    pub delivered: u64,
    pub dead_letters: u64,
    /// Delivery-log entries written so far (their sequence numbers).
    pub log_seq: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    pub position: Position,
    pub event_id: String,
    pub event_type: String,
    pub attempt: u32,
    pub status_code: u16,
    pub latency_ms: u32,
    /// `delivered`, `failed` or `dead_letter`.
    pub outcome: String,
    pub error: String,
    pub at: Timestamp,
    pub redelivery: bool,
}

#[derive(Clone)]
pub struct Store {
    endpoints: sled::Tree,
    deliveries: sled::Tree,
    redeliver: sled::Tree,
    db: sled::Db,
}

fn json<T: for<'a> Deserialize<'a>>(bytes: &[u8], what: &str) -> anyhow::Result<T> {
    serde_json::from_slice(bytes).with_context(|| {
        format!("webhook store: a {what} record does not decode (the store is damaged)")
    })
}

impl Store {
    pub fn open(path: &Path) -> anyhow::Result<Store> {
        let config = sled::Config::new().path(path).cache_capacity(16 << 20);
        let opened = event_store::contain_panic(|| event_store::open_sled_waiting(&config));
        let db = opened
            .map_err(|detail| anyhow::anyhow!("{detail}"))
            .and_then(|db| db.map_err(anyhow::Error::from))
            .with_context(|| {
                format!(
                    "opening the webhook store {} (if it is damaged, move it away: the endpoints \
                     must then be registered again)",
                    path.display()
                )
            })?;
        Ok(Store {
            endpoints: db.open_tree("endpoints")?,
            deliveries: db.open_tree("deliveries")?,
            redeliver: db.open_tree("redeliver")?,
            db,
        })
    }

    pub fn endpoint(&self, id: &str) -> anyhow::Result<Option<Endpoint>> {
        self.endpoints.get(id)?.map(|b| json(&b, "endpoint")).transpose()
    }

    pub fn endpoints(&self) -> anyhow::Result<Vec<Endpoint>> {
        self.endpoints.iter().values().map(|b| json(&b?, "endpoint")).collect()
    }

    /// Writes the endpoint, durably.
    pub fn put(&self, e: &Endpoint) -> anyhow::Result<()> {
        self.put_cursor(e)?;
        self.flush()
    }

    /// Writes the endpoint without waiting for the disk: a delivery task's cursor moves. A
    /// crash loses at most the moves since the last [`Store::flush`], which are then delivered
    /// again (at least once), never skipped.
    pub fn put_cursor(&self, e: &Endpoint) -> anyhow::Result<()> {
        self.endpoints.insert(e.endpoint_id.as_bytes(), serde_json::to_vec(e)?)?;
        Ok(())
    }

    pub fn flush(&self) -> anyhow::Result<()> {
        self.db.flush()?;
        Ok(())
    }

    pub fn delete(&self, id: &str) -> anyhow::Result<()> {
        self.endpoints.remove(id)?;
        for tree in [&self.deliveries, &self.redeliver] {
            for key in tree.scan_prefix(format!("{id}/")).keys() {
                tree.remove(key?)?;
            }
        }
        self.db.flush()?;
        Ok(())
    }

    /// Appends to the endpoint's delivery log (`e.log_seq` counts it; the caller persists `e`),
    /// dropping the oldest entry past [`DELIVERIES_KEPT`].
    pub fn log(&self, e: &mut Endpoint, d: &Delivery) -> anyhow::Result<()> {
        let key = format!("{}/{:016x}", e.endpoint_id, e.log_seq);
        self.deliveries.insert(key, serde_json::to_vec(d)?)?;
        if e.log_seq >= DELIVERIES_KEPT {
            let old = format!("{}/{:016x}", e.endpoint_id, e.log_seq - DELIVERIES_KEPT);
            self.deliveries.remove(old)?;
        }
        e.log_seq += 1;
        Ok(())
    }

    /// Up to `size` log entries after `after` (a key suffix from a previous page), oldest first;
    /// the last one's key suffix when more may follow.
    pub fn deliveries(
        &self,
        id: &str,
        after: Option<&str>,
        size: usize,
    ) -> anyhow::Result<(Vec<Delivery>, Option<String>)> {
        let prefix = format!("{id}/");
        let start = match after {
            Some(a) => format!("{prefix}{a}\u{0}"),
            None => prefix.clone(),
        };
        let mut out = Vec::new();
        let mut last = None;
        for item in self.deliveries.range(start.into_bytes()..) {
            let (k, v) = item?;
            if !k.starts_with(prefix.as_bytes()) {
                break;
            }
            if out.len() == size {
                return Ok((out, last));
            }
            out.push(json(&v, "delivery")?);
            last = Some(String::from_utf8_lossy(&k[prefix.len()..]).into_owned());
        }
        Ok((out, None))
    }

    pub fn queue_redelivery(&self, id: &str, position: Position) -> anyhow::Result<()> {
        self.redeliver.insert(format!("{id}/{position:016x}"), "")?;
        self.db.flush()?;
        Ok(())
    }

    /// The oldest redelivery waiting for the endpoint.
    pub fn next_redelivery(&self, id: &str) -> anyhow::Result<Option<Position>> {
        let prefix = format!("{id}/");
        let Some(key) = self.redeliver.scan_prefix(&prefix).keys().next().transpose()? else {
            return Ok(None);
        };
        let hex = &key[prefix.len()..];
        let position = u64::from_str_radix(&String::from_utf8_lossy(hex), 16)
            .context("webhook store: a damaged redelivery key")?;
        Ok(Some(position))
    }

    pub fn done_redelivery(&self, id: &str, position: Position) -> anyhow::Result<()> {
        self.redeliver.remove(format!("{id}/{position:016x}"))?;
        self.db.flush()?;
        Ok(())
    }
}

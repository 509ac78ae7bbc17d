//! `replay verify`: rebuild each live read model up to its checkpoint and compare digests.

use std::path::Path;
use std::sync::Arc;

use event_store::{EventStore, Position};
use projections::ReadModel;

use crate::cutoff::Cutoff;
use crate::rebuild::{rebuild, Kind};
use crate::Result;

/// The comparison of one live read model with its rebuild.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Same digest at the same position.
    Equal { projection: Kind, position: Position, sha256: String },
    /// The rebuild differs: the live model is not what the log says.
    Differs { projection: Kind, position: Position, live: String, rebuilt: String },
    /// No live model of the current layout version to compare (never built, or stale).
    Missing { projection: Kind },
}

impl Verdict {
    pub fn is_equal(&self) -> bool {
        matches!(self, Verdict::Equal { .. })
    }
}

/// Compares every live model in `live` (a read-model database nobody writes meanwhile) with a
/// rebuild from `store` up to that model's checkpoint, rebuilt under `scratch` (created, must
/// not exist). Verdicts in [`Kind::ALL`] order.
pub async fn verify(
    store: Arc<dyn EventStore>,
    live: &sled::Db,
    scratch: &Path,
) -> Result<Vec<Verdict>> {
    let mut verdicts = Vec::with_capacity(Kind::ALL.len());
    for (i, kind) in Kind::ALL.into_iter().enumerate() {
        let Some(model) = ReadModel::open_existing(live, kind.name(), kind.version())? else {
            verdicts.push(Verdict::Missing { projection: kind });
            continue;
        };
        let digest = model.digest()?;
        let out = scratch.join(format!("{i}-{}", kind.name()));
        let cutoff = Cutoff::Position(digest.position);
        let rebuilt = rebuild(store.clone(), cutoff, &[kind], &out, &|_, _| {}).await?;
        let mine = &rebuilt.manifest.projections[0];
        let live_hex = hex::encode(digest.sha256);
        verdicts.push(if mine.sha256 == live_hex {
            Verdict::Equal { projection: kind, position: digest.position, sha256: live_hex }
        } else {
            Verdict::Differs {
                projection: kind,
                position: digest.position,
                live: live_hex,
                rebuilt: mine.sha256.clone(),
            }
        });
    }
    Ok(verdicts)
}

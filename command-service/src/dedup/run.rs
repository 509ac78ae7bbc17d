//! One run of the dedup index: an immutable file holding, for every usage event of the log
//! positions `[from, to)`, the 64-bit hash of its key and its position, sorted by hash, with a
//! binary fuse filter over the hashes (so a key not in the run rarely costs a read) and a
//! CRC-32 of the whole.
//!
//! Layout (little-endian):
//! - header, [`HEADER_BYTES`]: magic `ACCDEDUP`, format `u32`, 4 zero bytes, `from u64`,
//!   `to u64`, `entries u64`, the log's hash of the event at `to − 1` (32 bytes; zero when
//!   `to` is 0), the filter's seed `u64`, segment length `u32`, segment length mask `u32`,
//!   segment count length `u32`, fingerprint bytes `u32`;
//! - `entries` × (hash `u64`, position − from `u32`), sorted by (hash, position);
//! - the filter's fingerprints;
//! - the CRC-32 of everything before it (`u32`).
//!
//! A run is named `run-<from>-<to>.dedup` (20 digits each), so the index's runs are found and
//! tiled by name; a run is written to a temporary name, fsynced and renamed, so a name on disk
//! always holds a whole file (damage is still checked: magic, format, sizes, CRC).

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use event_store::Position;
use xorf::{BinaryFuse8, Descriptor, Filter};

/// The run file format this build writes and reads.
pub const FORMAT: u32 = 1;
const MAGIC: &[u8; 8] = b"ACCDEDUP";
pub const HEADER_BYTES: usize = 8 + 4 + 4 + 8 + 8 + 8 + 32 + 8 + 4 + 4 + 4 + 4;
pub const ENTRY_BYTES: usize = 12;
const CRC_BYTES: usize = 4;
/// One in-memory fence (the hash of every this many entries): a probe reads one block of
/// `FENCE_ENTRIES × ENTRY_BYTES` bytes (3 KiB), or two when equal hashes straddle a fence.
pub const FENCE_ENTRIES: usize = 256;
/// Positions a run may span (its entries store `position − from` in 32 bits).
pub const SPAN_POSITIONS_MAX: u64 = u32::MAX as u64;

/// A usage event as a run holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct RunEntry {
    pub hash: u64,
    pub position: Position,
}

/// Where a run's bytes are: a file, or memory (an index without a directory, for tests).
enum Bytes {
    File(File),
    Memory(Vec<u8>),
}

/// See the module documentation.
pub struct Run {
    pub from: Position,
    pub to: Position,
    pub entries: u64,
    /// The log's hash of the event at `to − 1`.
    pub log_hash: [u8; 32],
    path: Option<PathBuf>,
    bytes: Bytes,
    /// `None` for a run without entries.
    filter: Option<BinaryFuse8>,
    fences: Vec<u64>,
}

/// The file name of the run of `[from, to)`.
pub fn file_name(from: Position, to: Position) -> String {
    format!("run-{from:020}-{to:020}.dedup")
}

/// `(from, to)` of a run's file name, if it is one.
pub fn parse_name(name: &str) -> Option<(Position, Position)> {
    let middle = name.strip_prefix("run-")?.strip_suffix(".dedup")?;
    let (from, to) = middle.split_once('-')?;
    let (from, to) = (from.parse().ok()?, to.parse().ok()?);
    (from <= to && file_name(from, to) == name).then_some((from, to))
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn entry_at(b: &[u8], at: usize, from: Position) -> RunEntry {
    RunEntry { hash: u64_at(b, at), position: from + u64::from(u32_at(b, at + 8)) }
}

/// The bytes of a run of `[from, to)` holding `entries` (sorted here).
fn encode(
    from: Position,
    to: Position,
    log_hash: [u8; 32],
    mut entries: Vec<RunEntry>,
) -> Result<Vec<u8>, String> {
    assert!(from <= to, "a run covers [from, to)");
    if to - from > SPAN_POSITIONS_MAX {
        return Err(format!("a run may span {SPAN_POSITIONS_MAX} positions, not {}", to - from));
    }
    entries.sort_unstable();
    let mut hashes: Vec<u64> = entries.iter().map(|e| e.hash).collect();
    hashes.dedup();
    let filter = match hashes.is_empty() {
        true => None,
        false => Some(BinaryFuse8::try_from(&hashes).map_err(|e| format!("filter: {e}"))?),
    };
    drop(hashes);
    let fingerprints: &[u8] = filter.as_ref().map_or(&[], |f| &f.fingerprints);
    let fingerprint_bytes = u32::try_from(fingerprints.len()).map_err(|_| "filter too large")?;
    let d = filter.as_ref().map(|f| f.descriptor.clone());
    let total = HEADER_BYTES + entries.len() * ENTRY_BYTES + fingerprints.len() + CRC_BYTES;
    let mut b = Vec::with_capacity(total);
    b.extend_from_slice(MAGIC);
    b.extend_from_slice(&FORMAT.to_le_bytes());
    b.extend_from_slice(&[0u8; 4]);
    b.extend_from_slice(&from.to_le_bytes());
    b.extend_from_slice(&to.to_le_bytes());
    b.extend_from_slice(&(entries.len() as u64).to_le_bytes());
    b.extend_from_slice(&log_hash);
    b.extend_from_slice(&d.as_ref().map_or(0, |d| d.seed).to_le_bytes());
    b.extend_from_slice(&d.as_ref().map_or(0, |d| d.segment_length).to_le_bytes());
    b.extend_from_slice(&d.as_ref().map_or(0, |d| d.segment_length_mask).to_le_bytes());
    b.extend_from_slice(&d.as_ref().map_or(0, |d| d.segment_count_length).to_le_bytes());
    b.extend_from_slice(&fingerprint_bytes.to_le_bytes());
    debug_assert_eq!(b.len(), HEADER_BYTES);
    for e in &entries {
        assert!(from <= e.position && e.position < to, "an entry outside its run's positions");
        b.extend_from_slice(&e.hash.to_le_bytes());
        b.extend_from_slice(&((e.position - from) as u32).to_le_bytes());
    }
    b.extend_from_slice(fingerprints);
    let crc = crc32fast::hash(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    debug_assert_eq!(b.len(), total);
    Ok(b)
}

/// Writes `bytes` to `dir/name` through a temporary file, fsync and rename (then fsyncs `dir`).
fn write_file(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<PathBuf> {
    let tmp = dir.join(format!("{name}.tmp"));
    let mut f = File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    let path = dir.join(name);
    std::fs::rename(&tmp, &path)?;
    File::open(dir)?.sync_all()?;
    Ok(path)
}

impl Run {
    /// Writes the run of `[from, to)` with `entries` (any order) into `dir` (`None`: kept in
    /// memory) and opens it.
    pub fn write(
        dir: Option<&Path>,
        from: Position,
        to: Position,
        log_hash: [u8; 32],
        entries: Vec<RunEntry>,
    ) -> Result<Run, String> {
        let bytes = encode(from, to, log_hash, entries)?;
        match dir {
            None => Run::decode(bytes, None, None),
            Some(d) => {
                let path = write_file(d, &file_name(from, to), &bytes)
                    .map_err(|e| format!("write {}: {e}", d.display()))?;
                let file = File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
                Run::decode(bytes, Some(path), Some(file))
            }
        }
    }

    /// Opens and checks the run file at `path` (reads it whole once: CRC, fences, filter).
    pub fn open(path: &Path) -> Result<Run, String> {
        let bytes = std::fs::read(path).map_err(|e| format!("read: {e}"))?;
        let file = File::open(path).map_err(|e| format!("open: {e}"))?;
        let run = Run::decode(bytes, Some(path.to_path_buf()), Some(file))?;
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if parse_name(name) != Some((run.from, run.to)) {
            return Err(format!("it holds [{}, {}), its name says otherwise", run.from, run.to));
        }
        Ok(run)
    }

    /// Checks `bytes` and keeps what lookups need; the entries stay in `file` (or in memory).
    fn decode(bytes: Vec<u8>, path: Option<PathBuf>, file: Option<File>) -> Result<Run, String> {
        if bytes.len() < HEADER_BYTES + CRC_BYTES || &bytes[..8] != MAGIC {
            return Err("not a dedup run (magic or size)".into());
        }
        let format = u32_at(&bytes, 8);
        if format != FORMAT {
            return Err(format!("run format {format}, this build reads {FORMAT}"));
        }
        let (from, to, entries) = (u64_at(&bytes, 16), u64_at(&bytes, 24), u64_at(&bytes, 32));
        let log_hash: [u8; 32] = bytes[40..72].try_into().expect("32 bytes");
        let descriptor = Descriptor {
            seed: u64_at(&bytes, 72),
            segment_length: u32_at(&bytes, 80),
            segment_length_mask: u32_at(&bytes, 84),
            segment_count_length: u32_at(&bytes, 88),
        };
        let fingerprint_bytes = u32_at(&bytes, 92) as usize;
        let entry_bytes = usize::try_from(entries)
            .ok()
            .and_then(|n| n.checked_mul(ENTRY_BYTES))
            .ok_or("entry count out of range")?;
        let expected = HEADER_BYTES + entry_bytes + fingerprint_bytes + CRC_BYTES;
        if bytes.len() != expected || from > to || to - from > SPAN_POSITIONS_MAX {
            return Err(format!("{} bytes, its header says {expected}", bytes.len()));
        }
        let body = bytes.len() - CRC_BYTES;
        if crc32fast::hash(&bytes[..body]) != u32_at(&bytes, body) {
            return Err("CRC mismatch (the file is damaged)".into());
        }
        if (entries == 0) != (fingerprint_bytes == 0) {
            return Err("a filter without entries, or entries without a filter".into());
        }
        let fences = (0..entries as usize)
            .step_by(FENCE_ENTRIES)
            .map(|i| u64_at(&bytes, HEADER_BYTES + i * ENTRY_BYTES))
            .collect();
        let fingerprints_at = HEADER_BYTES + entry_bytes;
        let filter = (entries > 0).then(|| BinaryFuse8 {
            descriptor,
            fingerprints: bytes[fingerprints_at..fingerprints_at + fingerprint_bytes].into(),
        });
        let bytes = match file {
            Some(f) => Bytes::File(f),
            None => Bytes::Memory(bytes),
        };
        Ok(Run { from, to, entries, log_hash, path, bytes, filter, fences })
    }

    /// Bytes the run keeps in memory (filter and fences; an in-memory run's entries too).
    pub fn memory_bytes(&self) -> usize {
        let filter = self.filter.as_ref().map_or(0, |f| f.fingerprints.len());
        let memory = match &self.bytes {
            Bytes::Memory(b) => b.len(),
            Bytes::File(_) => 0,
        };
        filter + self.fences.len() * 8 + memory
    }

    fn read_at(&self, buf: &mut [u8], at: usize) -> std::io::Result<()> {
        match &self.bytes {
            Bytes::File(f) => f.read_exact_at(buf, at as u64),
            Bytes::Memory(b) => {
                buf.copy_from_slice(&b[at..at + buf.len()]);
                Ok(())
            }
        }
    }

    /// Positions of the entries whose hash is `hash` (usually none or one; more only when two
    /// keys' hashes collide). The filter answers most misses without a read.
    pub fn positions_of(&self, hash: u64) -> std::io::Result<Vec<Position>> {
        let mut found = Vec::new();
        if !self.filter.as_ref().is_some_and(|f| f.contains(&hash)) {
            return Ok(found);
        }
        // The first block whose fence is ≥ hash may hold it only from its start; equal hashes
        // may also end the block before it.
        let block = self.fences.partition_point(|&f| f < hash).saturating_sub(1);
        let entries = self.entries as usize;
        let mut at = block * FENCE_ENTRIES;
        let mut buf = vec![0u8; FENCE_ENTRIES * ENTRY_BYTES];
        while at < entries {
            let n = FENCE_ENTRIES.min(entries - at);
            let buf = &mut buf[..n * ENTRY_BYTES];
            self.read_at(buf, HEADER_BYTES + at * ENTRY_BYTES)?;
            for i in 0..n {
                let e = entry_at(buf, i * ENTRY_BYTES, self.from);
                if e.hash > hash {
                    return Ok(found);
                }
                if e.hash == hash {
                    found.push(e.position);
                }
            }
            at += n;
        }
        Ok(found)
    }

    /// Every entry, in hash order (reads the run whole).
    pub fn read_entries(&self) -> std::io::Result<Vec<RunEntry>> {
        let mut buf = vec![0u8; self.entries as usize * ENTRY_BYTES];
        self.read_at(&mut buf, HEADER_BYTES)?;
        Ok(buf.chunks_exact(ENTRY_BYTES).map(|c| entry_at(c, 0, self.from)).collect())
    }

    /// Writes one run holding every entry of `runs` (consecutive: each starts where the one
    /// before ends) into `dir` and opens it. The inputs stay until the caller removes them.
    pub fn merge(dir: Option<&Path>, runs: &[std::sync::Arc<Run>]) -> Result<Run, String> {
        assert!(runs.len() >= 2, "a merge takes two runs or more");
        assert!(runs.windows(2).all(|w| w[0].to == w[1].from), "merged runs are consecutive");
        let (first, last) = (&runs[0], &runs[runs.len() - 1]);
        let mut entries = Vec::with_capacity(runs.iter().map(|r| r.entries as usize).sum());
        for r in runs {
            entries.extend(r.read_entries().map_err(|e| format!("read a run: {e}"))?);
        }
        Run::write(dir, first.from, last.to, last.log_hash, entries)
    }

    /// Removes the run's file (a run merged into a larger one, or not usable).
    pub fn remove(&self) {
        if let Some(p) = &self.path {
            if let Err(e) = std::fs::remove_file(p) {
                tracing::warn!(path = %p.display(), error = %e, "dedup run not removed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(n: u64, from: Position) -> Vec<RunEntry> {
        (0..n)
            .map(|i| RunEntry {
                hash: xxhash_rust::xxh3::xxh3_64(&i.to_le_bytes()),
                position: from + i,
            })
            .collect()
    }

    #[test]
    fn names_round_trip_and_other_names_are_refused() {
        assert_eq!(parse_name(&file_name(3, 70)), Some((3, 70)));
        for bad in ["run-1-2.dedup", "run-00000000000000000005-00000000000000000004.dedup", "x"] {
            assert_eq!(parse_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn every_entry_is_found_at_its_position_and_absent_hashes_are_not() {
        let dir = tempfile::tempdir().unwrap();
        for (n, in_dir) in [(0u64, true), (1, true), (1000, true), (5000, false)] {
            let d = in_dir.then_some(dir.path());
            let run = Run::write(d, 100, 100 + n, [7; 32], entries(n, 100)).unwrap();
            let run = match in_dir {
                true => Run::open(&dir.path().join(file_name(100, 100 + n))).unwrap(),
                false => run,
            };
            assert_eq!((run.from, run.to, run.entries, run.log_hash), (100, 100 + n, n, [7; 32]));
            for e in entries(n, 100) {
                assert_eq!(run.positions_of(e.hash).unwrap(), vec![e.position]);
            }
            let absent = (n..n + 2000).filter(|i| {
                let h = xxhash_rust::xxh3::xxh3_64(&i.to_le_bytes());
                !run.positions_of(h).unwrap().is_empty()
            });
            assert_eq!(absent.count(), 0, "{n} entries");
            assert_eq!(run.read_entries().unwrap().len() as u64, n);
        }
    }

    #[test]
    fn colliding_hashes_give_every_position() {
        let mut es = entries(600, 0);
        for e in es.iter_mut().skip(200).step_by(2).take(300) {
            e.hash = 42; // 300 entries share one hash, across fence blocks
        }
        let run = Run::write(None, 0, 600, [0; 32], es.clone()).unwrap();
        let mut want: Vec<_> = es.iter().filter(|e| e.hash == 42).map(|e| e.position).collect();
        want.sort_unstable();
        assert_eq!(run.positions_of(42).unwrap(), want);
    }

    #[test]
    fn a_merge_holds_every_entry_of_its_inputs() {
        let dir = tempfile::tempdir().unwrap();
        let a = std::sync::Arc::new(
            Run::write(Some(dir.path()), 0, 10, [1; 32], entries(10, 0)).unwrap(),
        );
        let b = std::sync::Arc::new(
            Run::write(Some(dir.path()), 10, 25, [2; 32], entries(15, 10)).unwrap(),
        );
        let m = Run::merge(Some(dir.path()), &[a, b]).unwrap();
        assert_eq!((m.from, m.to, m.entries, m.log_hash), (0, 25, 25, [2; 32]));
        for e in entries(10, 0).into_iter().chain(entries(15, 10)) {
            assert!(m.positions_of(e.hash).unwrap().contains(&e.position));
        }
    }

    #[test]
    fn damaged_files_are_refused_with_a_reason_never_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(file_name(0, 50));
        let good = encode(0, 50, [3; 32], entries(50, 0)).unwrap();
        let mut flipped = good.clone();
        flipped[HEADER_BYTES + 5] ^= 1;
        let mut other_format = good.clone();
        other_format[8] = 9;
        let cases: [(&str, Vec<u8>); 5] = [
            ("empty", vec![]),
            ("truncated", good[..good.len() - 7].to_vec()),
            ("flipped", flipped),
            ("format", other_format),
            ("garbage", vec![0xA5; 4096]),
        ];
        for (what, bytes) in cases {
            std::fs::write(&path, &bytes).unwrap();
            assert!(Run::open(&path).is_err(), "{what}");
        }
        std::fs::write(dir.path().join(file_name(0, 51)), &good).unwrap();
        let misnamed = Run::open(&dir.path().join(file_name(0, 51))).err().unwrap();
        assert!(misnamed.contains("name"), "{misnamed}");
    }

    #[test]
    fn a_span_past_32_bits_is_refused() {
        assert!(encode(0, SPAN_POSITIONS_MAX + 1, [0; 32], vec![]).is_err());
    }

    /// Prints the memory a run keeps per transaction and its false positives (figures for the
    /// decision record: `cargo test -p command-service --lib memory_per_transaction -- --nocapture`).
    #[test]
    fn memory_per_transaction_is_about_a_byte_and_false_positives_rare() {
        let n = 200_000u64;
        let run = Run::write(None, 0, n, [0; 32], entries(n, 0)).unwrap();
        let in_memory = run.memory_bytes()
            - match &run.bytes {
                Bytes::Memory(b) => b.len(),
                Bytes::File(_) => 0,
            };
        let per = in_memory as f64 / n as f64;
        let probes = 100_000u64;
        let filter = run.filter.as_ref().unwrap();
        let maybes = (n..n + probes)
            .filter(|i| filter.contains(&xxhash_rust::xxh3::xxh3_64(&i.to_le_bytes())))
            .count();
        println!("{n} transactions: {in_memory} bytes in memory = {per:.3} each; filter maybes for new ids {maybes}/{probes}");
        assert!(per < 1.25, "{per} bytes per transaction");
        assert!(maybes * 100 < probes as usize, "under 1 % of new ids read a block");
    }
}

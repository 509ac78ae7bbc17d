//! One run of the dedup index: an immutable file holding, for every usage event of the log
//! positions `[from, to)`, the 64-bit hash of its key and its position, sorted by hash, with a
//! binary fuse filter over the hashes (so a key not in the run rarely costs a read).
//!
//! Layout (little-endian):
//! - header, [`HEADER_BYTES`]: magic `ACCDEDUP`, format `u32`, 4 zero bytes, `from u64`,
//!   `to u64`, `entries u64`, the log's hash of the event at `to − 1` (32 bytes; zero when
//!   `to` is 0), the filter's seed `u64`, segment length `u32`, segment length mask `u32`,
//!   segment count length `u32`, fingerprint bytes `u32`;
//! - `entries` × (hash `u64`, position − from `u32`), sorted by (hash, position), in blocks of
//!   [`FENCE_ENTRIES`];
//! - the *index tail*: the filter's fingerprints, the first hash of every block (`u64`), the
//!   CRC-32 of every block (`u32`), and the CRC-32 of the header and the index tail before it.
//!
//! The open reads the header and the index tail only (a few percent of the file: its cost does
//! not grow with the entries); a block's CRC is checked each time the block is read, and a
//! damaged block is an error that says to remove the directory (the index is then rebuilt from
//! the log). A run is named `run-<from>-<to>.dedup` (20 digits each), so the index's runs are
//! found and tiled by name; it is written to a temporary name, fsynced and renamed, so a name
//! on disk always holds a whole file.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use event_store::Position;
use xorf::{BinaryFuse8, Descriptor, Filter};

/// The run file format this build writes and reads.
pub const FORMAT: u32 = 2;
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
    /// The CRC-32 of every block of entries.
    block_crcs: Vec<u32>,
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
    let blocks = entries.len().div_ceil(FENCE_ENTRIES);
    let total = HEADER_BYTES
        + entries.len() * ENTRY_BYTES
        + fingerprints.len()
        + blocks * (8 + CRC_BYTES)
        + CRC_BYTES;
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
    let tail_at = b.len();
    b.extend_from_slice(fingerprints);
    for block in entries.chunks(FENCE_ENTRIES) {
        b.extend_from_slice(&block[0].hash.to_le_bytes());
    }
    for i in 0..blocks {
        let at = HEADER_BYTES + i * FENCE_ENTRIES * ENTRY_BYTES;
        let end = (at + FENCE_ENTRIES * ENTRY_BYTES).min(tail_at);
        let crc = crc32fast::hash(&b[at..end]);
        b.extend_from_slice(&crc.to_le_bytes());
    }
    let mut crc = crc32fast::Hasher::new();
    crc.update(&b[..HEADER_BYTES]);
    crc.update(&b[tail_at..]);
    b.extend_from_slice(&crc.finalize().to_le_bytes());
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

/// What a run keeps in memory, read from its header and index tail.
struct Index {
    from: Position,
    to: Position,
    entries: u64,
    log_hash: [u8; 32],
    filter: Option<BinaryFuse8>,
    fences: Vec<u64>,
    block_crcs: Vec<u32>,
}

/// Entries and blocks of a run whose header says `entries`, if the count is sane.
fn sizes(entries: u64) -> Result<(usize, usize), String> {
    let n = usize::try_from(entries).map_err(|_| "entry count out of range")?;
    let bytes = n.checked_mul(ENTRY_BYTES).ok_or("entry count out of range")?;
    Ok((bytes, n.div_ceil(FENCE_ENTRIES)))
}

/// Where the index tail of a file of `len` bytes with this header starts.
fn tail_offset(header: &[u8; HEADER_BYTES], len: u64) -> Result<u64, String> {
    if &header[..8] != MAGIC {
        return Err("not a dedup run (magic)".into());
    }
    let format = u32_at(header, 8);
    if format != FORMAT {
        return Err(format!("run format {format}, this build reads {FORMAT}"));
    }
    let (entry_bytes, _) = sizes(u64_at(header, 32))?;
    let tail_at = (HEADER_BYTES + entry_bytes) as u64;
    if tail_at + CRC_BYTES as u64 > len {
        return Err(format!("{len} bytes, too short for its header"));
    }
    Ok(tail_at)
}

/// The header and index tail of a whole run's bytes.
fn split_index(bytes: &[u8]) -> Result<(&[u8; HEADER_BYTES], &[u8]), String> {
    let header: &[u8; HEADER_BYTES] =
        bytes.get(..HEADER_BYTES).and_then(|h| h.try_into().ok()).ok_or("too short")?;
    let tail_at = tail_offset(header, bytes.len() as u64)? as usize;
    Ok((header, &bytes[tail_at..]))
}

/// Checks a run's header and index tail (sizes against `len`, the file's length, and the CRC)
/// and decodes them.
fn decode_index(header: &[u8; HEADER_BYTES], tail: &[u8], len: u64) -> Result<Index, String> {
    let (from, to, entries) = (u64_at(header, 16), u64_at(header, 24), u64_at(header, 32));
    let log_hash: [u8; 32] = header[40..72].try_into().expect("32 bytes");
    let descriptor = Descriptor {
        seed: u64_at(header, 72),
        segment_length: u32_at(header, 80),
        segment_length_mask: u32_at(header, 84),
        segment_count_length: u32_at(header, 88),
    };
    let fingerprint_bytes = u32_at(header, 92) as usize;
    let (entry_bytes, blocks) = sizes(entries)?;
    let tail_bytes = fingerprint_bytes + blocks * (8 + CRC_BYTES) + CRC_BYTES;
    let expected = (HEADER_BYTES + entry_bytes + tail_bytes) as u64;
    if len != expected || tail.len() != tail_bytes || from > to || to - from > SPAN_POSITIONS_MAX {
        return Err(format!("{len} bytes, its header says {expected}"));
    }
    let body = tail.len() - CRC_BYTES;
    let mut crc = crc32fast::Hasher::new();
    crc.update(header);
    crc.update(&tail[..body]);
    if crc.finalize() != u32_at(tail, body) {
        return Err("CRC mismatch in its header or index (the file is damaged)".into());
    }
    if (entries == 0) != (fingerprint_bytes == 0) {
        return Err("a filter without entries, or entries without a filter".into());
    }
    let filter = (entries > 0)
        .then(|| BinaryFuse8 { descriptor, fingerprints: tail[..fingerprint_bytes].into() });
    let fences_at = fingerprint_bytes;
    let crcs_at = fences_at + blocks * 8;
    let fences = (0..blocks).map(|i| u64_at(tail, fences_at + i * 8)).collect();
    let block_crcs = (0..blocks).map(|i| u32_at(tail, crcs_at + i * 4)).collect();
    Ok(Index { from, to, entries, log_hash, filter, fences, block_crcs })
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
            None => {
                let (header, tail) = split_index(&bytes)?;
                let meta = decode_index(header, tail, bytes.len() as u64)?;
                Ok(Run::with(meta, None, Bytes::Memory(bytes)))
            }
            Some(d) => {
                let path = write_file(d, &file_name(from, to), &bytes)
                    .map_err(|e| format!("write {}: {e}", d.display()))?;
                let file = File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
                let (header, tail) = split_index(&bytes)?;
                let meta = decode_index(header, tail, bytes.len() as u64)?;
                Ok(Run::with(meta, Some(path), Bytes::File(file)))
            }
        }
    }

    /// Opens and checks the run file at `path`: reads its header and index tail (filter,
    /// fences, block CRCs) and checks their CRC; the entries are checked block by block when
    /// read.
    pub fn open(path: &Path) -> Result<Run, String> {
        let file = File::open(path).map_err(|e| format!("open: {e}"))?;
        let len = file.metadata().map_err(|e| format!("stat: {e}"))?.len();
        if len < (HEADER_BYTES + CRC_BYTES) as u64 {
            return Err(format!("not a dedup run ({len} bytes)"));
        }
        let mut header = [0u8; HEADER_BYTES];
        file.read_exact_at(&mut header, 0).map_err(|e| format!("read: {e}"))?;
        let tail_at = tail_offset(&header, len)?;
        let mut tail = vec![0u8; (len - tail_at) as usize];
        file.read_exact_at(&mut tail, tail_at).map_err(|e| format!("read: {e}"))?;
        let meta = decode_index(&header, &tail, len)?;
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if parse_name(name) != Some((meta.from, meta.to)) {
            return Err(format!("it holds [{}, {}), its name says otherwise", meta.from, meta.to));
        }
        Ok(Run::with(meta, Some(path.to_path_buf()), Bytes::File(file)))
    }

    fn with(meta: Index, path: Option<PathBuf>, bytes: Bytes) -> Run {
        let Index { from, to, entries, log_hash, filter, fences, block_crcs } = meta;
        Run { from, to, entries, log_hash, path, bytes, filter, fences, block_crcs }
    }

    /// Bytes the run keeps in memory (filter and fences; an in-memory run's entries too).
    pub fn memory_bytes(&self) -> usize {
        let filter = self.filter.as_ref().map_or(0, |f| f.fingerprints.len());
        let memory = match &self.bytes {
            Bytes::Memory(b) => b.len(),
            Bytes::File(_) => 0,
        };
        filter + self.fences.len() * 8 + self.block_crcs.len() * 4 + memory
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

    /// The entries of block `block` into `buf`, checked against the block's CRC.
    fn read_block<'b>(&self, block: usize, buf: &'b mut Vec<u8>) -> std::io::Result<&'b [u8]> {
        let first = block * FENCE_ENTRIES;
        let n = FENCE_ENTRIES.min(self.entries as usize - first);
        buf.resize(n * ENTRY_BYTES, 0);
        self.read_at(buf, HEADER_BYTES + first * ENTRY_BYTES)?;
        if crc32fast::hash(buf) != self.block_crcs[block] {
            let name = self.path.as_ref().map_or("in memory".into(), |p| p.display().to_string());
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "dedup run {name} is damaged (block {block}); stop the server and remove its \
                     directory: the next start rebuilds the index from the log"
                ),
            ));
        }
        Ok(buf)
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
        let first = self.fences.partition_point(|&f| f < hash).saturating_sub(1);
        let mut buf = Vec::with_capacity(FENCE_ENTRIES * ENTRY_BYTES);
        for block in first..self.fences.len() {
            let bytes = self.read_block(block, &mut buf)?;
            for at in (0..bytes.len()).step_by(ENTRY_BYTES) {
                let e = entry_at(bytes, at, self.from);
                if e.hash > hash {
                    return Ok(found);
                }
                if e.hash == hash {
                    found.push(e.position);
                }
            }
        }
        Ok(found)
    }

    /// Every entry, in hash order (reads the run whole, checking every block).
    pub fn read_entries(&self) -> std::io::Result<Vec<RunEntry>> {
        let mut entries = Vec::with_capacity(self.entries as usize);
        let mut buf = Vec::with_capacity(FENCE_ENTRIES * ENTRY_BYTES);
        for block in 0..self.fences.len() {
            let bytes = self.read_block(block, &mut buf)?;
            entries.extend(bytes.chunks_exact(ENTRY_BYTES).map(|c| entry_at(c, 0, self.from)));
        }
        Ok(entries)
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
        let in_the_filter = HEADER_BYTES + 50 * ENTRY_BYTES + 1;
        flipped[in_the_filter] ^= 1;
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
        // A damaged entry: the open reads only the header and the index tail; the block's CRC
        // refuses it when read, with what to do.
        let mut entry_flipped = good.clone();
        entry_flipped[HEADER_BYTES + 5] ^= 1;
        std::fs::write(&path, &entry_flipped).unwrap();
        let run = Run::open(&path).unwrap();
        let err = run.read_entries().unwrap_err().to_string();
        assert!(err.contains("damaged") && err.contains("remove its directory"), "{err}");
        let in_block_0 = entries(50, 0).iter().map(|e| e.hash).min().unwrap();
        assert!(run.positions_of(in_block_0).is_err());
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

//! Canonical bytes of an envelope, its hash, and the persisted chunk encoding.
//!
//! # Canonical bytes, format 1
//!
//! Deterministic; all integers fixed-width big-endian; `str`/`bytes` are a `u32` length followed
//! by the bytes (strings are UTF-8); an `Option` is a presence byte (`0` absent, `1` present)
//! followed by the value when present.
//!
//! ```text
//! u8        format = 1
//! [u8; 16]  event_id
//! str       stream
//! u64       stream_version
//! u64       position
//! str       event_type
//! u16       schema_version
//! i64       occurred_at_us
//! i64       recorded_at_us
//! opt [u8;16]  causation_id
//! opt [u8;16]  correlation_id
//! opt str      idempotency_key
//! opt [u8;32]  idempotency_digest
//! bytes     payload
//! [u8; 32]  prev_hash
//! ```
//!
//! `hash = SHA-256(prev_hash || canonical_bytes)`; the genesis `prev_hash` is 32 zero bytes.
//!
//! # Chunk encoding, format 1 (the value of one sled key)
//!
//! A group commit is stored as one or more chunks (see `group.rs` for the size bound).
//!
//! ```text
//! u8   format = 1
//! u64  first_position      (equal to the key)
//! u32  event_count         (≥ 1)
//! event_count × { u32 len, [u8; len] canonical_bytes, [u8; 32] hash }
//! ```
//!
//! # Chunk encoding, format 2 (what the sled backend writes since issue 12)
//!
//! ```text
//! u8   format = 2
//! u64  first_position      (equal to the key)
//! u32  event_count         (≥ 1)
//! u32  body_len            (bytes of the records once decompressed, ≤ 4 MiB)
//! [u8] the records of format 1 (`event_count × { u32 len, canonical_bytes, hash }`),
//!      compressed as one block (see `codec.rs`)
//! ```
//!
//! The records, hence the canonical bytes and the hashes, are exactly those of format 1:
//! compression changes how a chunk is stored, never what is hashed. Both formats are read.
//!
//! Events of a chunk have contiguous positions starting at `first_position`. Decoding checks
//! every length, format byte, presence byte, UTF-8 string and position, and returns
//! [`StoreError::Corrupt`] on any mismatch; it never panics on bad input.

use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::{Position, RecordedEvent, StoreError};

/// Format byte of [`canonical_bytes`].
pub const CANONICAL_FORMAT_V1: u8 = 1;
/// Format byte of the chunk encoding, format 1 (records stored as they are).
pub const CHUNK_FORMAT_V1: u8 = 1;
/// Format byte of the chunk encoding, format 2 (records compressed, see the module docs).
pub const CHUNK_FORMAT_V2: u8 = 2;
/// Largest records body a format-2 chunk may claim (a single event of the largest payload
/// fits; larger claims are corrupt, never allocated).
const CHUNK_BODY_BYTES_MAX: usize = 4 << 20;
/// `prev_hash` of the event at position 0.
pub const GENESIS_HASH: [u8; 32] = [0; 32];

const CHUNK_HEADER_LEN: usize = 1 + 8 + 4;
/// Smallest possible stored record (length, fixed-width canonical fields, hash).
const MIN_RECORD_LEN: usize = 4 + 1 + 16 + 4 + 8 + 8 + 4 + 2 + 8 + 8 + 4 + 4 + 32 + 32;

/// Borrowed view of an envelope without its hash (used to encode without copying).
#[derive(Clone, Copy, Debug)]
pub(crate) struct EnvelopeRef<'a> {
    pub event_id: Uuid,
    pub stream: &'a str,
    pub stream_version: u64,
    pub position: Position,
    pub event_type: &'a str,
    pub schema_version: u16,
    pub occurred_at_us: i64,
    pub recorded_at_us: i64,
    pub causation_id: Option<Uuid>,
    pub correlation_id: Option<Uuid>,
    pub idempotency_key: Option<&'a str>,
    pub idempotency_digest: Option<[u8; 32]>,
    pub payload: &'a [u8],
    pub prev_hash: [u8; 32],
}

impl<'a> EnvelopeRef<'a> {
    pub(crate) fn of(ev: &'a RecordedEvent) -> Self {
        EnvelopeRef {
            event_id: ev.event_id,
            stream: &ev.stream,
            stream_version: ev.stream_version,
            position: ev.position,
            event_type: &ev.event_type,
            schema_version: ev.schema_version,
            occurred_at_us: ev.occurred_at_us,
            recorded_at_us: ev.recorded_at_us,
            causation_id: ev.causation_id,
            correlation_id: ev.correlation_id,
            idempotency_key: ev.idempotency_key.as_deref(),
            idempotency_digest: ev.idempotency_digest,
            payload: &ev.payload,
            prev_hash: ev.prev_hash,
        }
    }

    pub(crate) fn to_owned(self, hash: [u8; 32]) -> RecordedEvent {
        RecordedEvent {
            event_id: self.event_id,
            stream: self.stream.to_owned(),
            stream_version: self.stream_version,
            position: self.position,
            event_type: self.event_type.to_owned(),
            schema_version: self.schema_version,
            occurred_at_us: self.occurred_at_us,
            recorded_at_us: self.recorded_at_us,
            causation_id: self.causation_id,
            correlation_id: self.correlation_id,
            idempotency_key: self.idempotency_key.map(str::to_owned),
            idempotency_digest: self.idempotency_digest,
            payload: self.payload.to_vec(),
            prev_hash: self.prev_hash,
            hash,
        }
    }
}

/// The canonical bytes of an envelope without its hash (format 1, see the module docs).
pub fn canonical_bytes(ev: &RecordedEvent) -> Vec<u8> {
    let mut buf = Vec::with_capacity(canonical_len(&EnvelopeRef::of(ev)));
    encode_canonical(&mut buf, &EnvelopeRef::of(ev));
    buf
}

/// `SHA-256(prev_hash || canonical)`.
pub fn event_hash(prev_hash: &[u8; 32], canonical: &[u8]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(prev_hash);
    hasher.update(canonical);
    hasher.finalize().into()
}

/// The hash an event should carry: `SHA-256(ev.prev_hash || canonical_bytes(ev))`.
pub fn compute_hash(ev: &RecordedEvent) -> [u8; 32] {
    event_hash(&ev.prev_hash, &canonical_bytes(ev))
}

/// Exact length of the canonical bytes (format 1).
fn canonical_len(e: &EnvelopeRef<'_>) -> usize {
    const FIXED: usize = 1 + 16 + 4 + 8 + 8 + 4 + 2 + 8 + 8 + 1 + 1 + 1 + 1 + 4 + 32;
    let optional = e.causation_id.map_or(0, |_| 16)
        + e.correlation_id.map_or(0, |_| 16)
        + e.idempotency_key.map_or(0, |k| 4 + k.len())
        + e.idempotency_digest.map_or(0, |_| 32);
    FIXED + e.stream.len() + e.event_type.len() + e.payload.len() + optional
}

/// Bytes one event takes in a chunk (length prefix, canonical bytes, hash).
pub(crate) fn record_len(e: &EnvelopeRef<'_>) -> usize {
    4 + canonical_len(e) + 32
}

pub(crate) fn encode_canonical(buf: &mut Vec<u8>, e: &EnvelopeRef<'_>) {
    buf.push(CANONICAL_FORMAT_V1);
    buf.extend_from_slice(e.event_id.as_bytes());
    put_bytes(buf, e.stream.as_bytes());
    buf.extend_from_slice(&e.stream_version.to_be_bytes());
    buf.extend_from_slice(&e.position.to_be_bytes());
    put_bytes(buf, e.event_type.as_bytes());
    buf.extend_from_slice(&e.schema_version.to_be_bytes());
    buf.extend_from_slice(&e.occurred_at_us.to_be_bytes());
    buf.extend_from_slice(&e.recorded_at_us.to_be_bytes());
    put_opt(buf, e.causation_id.as_ref().map(|u| u.as_bytes().as_slice()));
    put_opt(buf, e.correlation_id.as_ref().map(|u| u.as_bytes().as_slice()));
    match e.idempotency_key {
        Some(key) => {
            buf.push(1);
            put_bytes(buf, key.as_bytes());
        }
        None => buf.push(0),
    }
    put_opt(buf, e.idempotency_digest.as_ref().map(|d| d.as_slice()));
    put_bytes(buf, e.payload);
    buf.extend_from_slice(&e.prev_hash);
}

fn put_bytes(buf: &mut Vec<u8>, bytes: &[u8]) {
    let len = u32::try_from(bytes.len()).expect("field longer than u32::MAX (validated before)");
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(bytes);
}

/// Presence byte then the fixed-width value.
fn put_opt(buf: &mut Vec<u8>, value: Option<&[u8]>) {
    match value {
        Some(v) => {
            buf.push(1);
            buf.extend_from_slice(v);
        }
        None => buf.push(0),
    }
}

/// Decodes canonical bytes (any supported format) into a borrowed envelope.
pub(crate) fn decode_canonical(bytes: &[u8]) -> Result<EnvelopeRef<'_>, String> {
    let mut r = Reader::new(bytes);
    let format = r.u8()?;
    if format != CANONICAL_FORMAT_V1 {
        return Err(format!("unsupported canonical format {format}"));
    }
    let env = decode_canonical_v1(&mut r)?;
    r.finish()?;
    Ok(env)
}

fn decode_canonical_v1<'a>(r: &mut Reader<'a>) -> Result<EnvelopeRef<'a>, String> {
    Ok(EnvelopeRef {
        event_id: r.uuid()?,
        stream: r.str()?,
        stream_version: r.u64()?,
        position: r.u64()?,
        event_type: r.str()?,
        schema_version: u16::from_be_bytes(r.array()?),
        occurred_at_us: i64::from_be_bytes(r.array()?),
        recorded_at_us: i64::from_be_bytes(r.array()?),
        causation_id: r.opt(|r| r.uuid())?,
        correlation_id: r.opt(|r| r.uuid())?,
        idempotency_key: r.opt(|r| r.str())?,
        idempotency_digest: r.opt(|r| r.array())?,
        payload: r.bytes()?,
        prev_hash: r.array()?,
    })
}

/// Bounds-checked big-endian reader; every error is a message, never a panic.
struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf, at: 0 }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.at.checked_add(n).filter(|&end| end <= self.buf.len());
        let end = end.ok_or_else(|| format!("truncated: need {n} bytes at offset {}", self.at))?;
        let out = &self.buf[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.array::<1>()?[0])
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    fn uuid(&mut self) -> Result<Uuid, String> {
        Ok(Uuid::from_bytes(self.array()?))
    }

    fn bytes(&mut self) -> Result<&'a [u8], String> {
        let len = self.u32()? as usize;
        self.take(len)
    }

    fn str(&mut self) -> Result<&'a str, String> {
        let at = self.at;
        std::str::from_utf8(self.bytes()?).map_err(|e| format!("bad UTF-8 at offset {at}: {e}"))
    }

    fn opt<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<T, String>,
    ) -> Result<Option<T>, String> {
        match self.u8()? {
            0 => Ok(None),
            1 => f(self).map(Some),
            other => Err(format!("bad presence byte {other} at offset {}", self.at - 1)),
        }
    }

    fn finish(&self) -> Result<(), String> {
        match self.buf.len() - self.at {
            0 => Ok(()),
            extra => Err(format!("{extra} trailing bytes")),
        }
    }
}

/// Builds the value of one chunk, chaining hashes as events are pushed.
pub(crate) struct ChunkWriter {
    buf: Vec<u8>,
    first: Position,
    count: u32,
}

impl ChunkWriter {
    pub(crate) fn new(first: Position) -> Self {
        let mut buf = Vec::with_capacity(64 * 1024);
        buf.push(CHUNK_FORMAT_V1);
        buf.extend_from_slice(&first.to_be_bytes());
        buf.extend_from_slice(&0u32.to_be_bytes());
        ChunkWriter { buf, first, count: 0 }
    }

    /// Appends the event (its position must be the next one) and returns its hash.
    pub(crate) fn push(&mut self, env: &EnvelopeRef<'_>) -> [u8; 32] {
        assert_eq!(env.position, self.first + u64::from(self.count), "positions contiguous");
        let len_at = self.buf.len();
        self.buf.extend_from_slice(&[0; 4]);
        encode_canonical(&mut self.buf, env);
        let canonical = &self.buf[len_at + 4..];
        debug_assert_eq!(canonical.len(), canonical_len(env), "canonical_len is exact");
        let hash = event_hash(&env.prev_hash, canonical);
        let len = u32::try_from(canonical.len()).expect("event smaller than 4 GiB");
        self.buf[len_at..len_at + 4].copy_from_slice(&len.to_be_bytes());
        self.buf.extend_from_slice(&hash);
        self.count += 1;
        hash
    }

    /// Pushes an already hashed event as is (no re-hashing).
    fn push_recorded(&mut self, ev: &RecordedEvent) {
        let canonical = canonical_bytes(ev);
        self.count += 1;
        put_bytes(&mut self.buf, &canonical);
        self.buf.extend_from_slice(&ev.hash);
    }

    pub(crate) fn count(&self) -> u32 {
        self.count
    }

    pub(crate) fn first(&self) -> Position {
        self.first
    }

    /// Encoded size so far.
    pub(crate) fn len(&self) -> usize {
        self.buf.len()
    }

    /// The chunk in format 1.
    pub(crate) fn finish(mut self) -> Vec<u8> {
        self.buf[9..13].copy_from_slice(&self.count.to_be_bytes());
        self.buf
    }

    /// The chunk in format 2: the same header, the records' length, the records compressed.
    pub(crate) fn finish_compressed(self) -> Vec<u8> {
        let count = self.count;
        let body = &self.buf[CHUNK_HEADER_LEN..];
        let body_len = u32::try_from(body.len()).expect("a chunk body is smaller than 4 GiB");
        let compressed = crate::codec::compress(body);
        let mut out = Vec::with_capacity(CHUNK_HEADER_LEN + 4 + compressed.len());
        out.push(CHUNK_FORMAT_V2);
        out.extend_from_slice(&self.first.to_be_bytes());
        out.extend_from_slice(&count.to_be_bytes());
        out.extend_from_slice(&body_len.to_be_bytes());
        out.extend_from_slice(&compressed);
        out
    }
}

/// Encodes already recorded events (contiguous positions, hashes kept as given) as one chunk
/// in format 1. Panics if `events` is empty or positions are not contiguous.
pub fn encode_chunk(events: &[RecordedEvent]) -> Vec<u8> {
    recorded_writer(events).finish()
}

/// As [`encode_chunk`], in format 2 (compressed; what the sled backend writes).
pub fn encode_chunk_v2(events: &[RecordedEvent]) -> Vec<u8> {
    recorded_writer(events).finish_compressed()
}

fn recorded_writer(events: &[RecordedEvent]) -> ChunkWriter {
    let first = events.first().expect("a chunk holds at least one event").position;
    let mut writer = ChunkWriter::new(first);
    for (i, ev) in events.iter().enumerate() {
        assert_eq!(ev.position, first + i as u64, "positions contiguous");
        writer.push_recorded(ev);
    }
    writer
}

/// Decodes the whole chunk stored under key `key_position`.
pub fn decode_chunk(
    key_position: Position,
    bytes: &[u8],
) -> Result<Vec<RecordedEvent>, StoreError> {
    let chunk = Chunk::parse(key_position, bytes)?;
    let mut records = chunk.records();
    // The count is untrusted: never reserve more than the bytes could hold.
    let mut out = Vec::with_capacity((chunk.count as usize).min(bytes.len() / MIN_RECORD_LEN));
    while let Some(raw) = records.next_raw()? {
        out.push(raw.decode()?.to_owned(raw.hash));
    }
    Ok(out)
}

/// A parsed chunk: its header and its records' bytes (borrowed from the stored value, or owned
/// once decompressed).
#[derive(Clone, Debug)]
pub(crate) struct Chunk<'a> {
    pub first: Position,
    pub count: u32,
    body: std::borrow::Cow<'a, [u8]>,
}

impl<'a> Chunk<'a> {
    pub(crate) fn parse(key_position: Position, bytes: &'a [u8]) -> Result<Self, StoreError> {
        let corrupt = |detail: String| StoreError::Corrupt { position: key_position, detail };
        let mut r = Reader::new(bytes);
        let format = r.u8().map_err(corrupt)?;
        if format != CHUNK_FORMAT_V1 && format != CHUNK_FORMAT_V2 {
            return Err(corrupt(format!("unsupported chunk format {format}")));
        }
        let first = r.u64().map_err(corrupt)?;
        let count = r.u32().map_err(corrupt)?;
        // A count running past u64::MAX would overflow `end()` (found by fuzz/chunk_decode).
        let fits = first.checked_add(u64::from(count)).is_some();
        if first != key_position || count == 0 || !fits {
            return Err(corrupt(format!("chunk header first={first} count={count}")));
        }
        if format == CHUNK_FORMAT_V1 {
            let body = std::borrow::Cow::Borrowed(&bytes[CHUNK_HEADER_LEN..]);
            return Ok(Chunk { first, count, body });
        }
        let body_len = r.u32().map_err(corrupt)? as usize;
        if body_len > CHUNK_BODY_BYTES_MAX {
            return Err(corrupt(format!("chunk claims a body of {body_len} bytes")));
        }
        let compressed = &bytes[CHUNK_HEADER_LEN + 4..];
        let body = crate::codec::decompress(compressed, body_len).map_err(corrupt)?;
        Ok(Chunk { first, count, body: std::borrow::Cow::Owned(body) })
    }

    /// Position one past the last event of the chunk.
    pub(crate) fn end(&self) -> Position {
        self.first + u64::from(self.count)
    }

    pub(crate) fn records(&self) -> Records<'_> {
        Records { reader: Reader::new(&self.body), next: self.first, end: self.end() }
    }
}

/// The stream name of canonical bytes, read without decoding the rest (format 1: the format
/// byte, the 16-byte event id, then the stream as a length-prefixed string). Not checked as
/// UTF-8: for comparisons only.
pub(crate) fn canonical_stream(canonical: &[u8]) -> Result<&[u8], String> {
    let mut r = Reader::new(canonical);
    let format = r.u8()?;
    if format != CANONICAL_FORMAT_V1 {
        return Err(format!("unsupported canonical format {format}"));
    }
    r.take(16)?;
    r.bytes()
}

/// One stored event: its canonical bytes (not yet decoded) and its hash.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RawRecord<'a> {
    pub position: Position,
    pub canonical: &'a [u8],
    pub hash: [u8; 32],
}

impl<'a> RawRecord<'a> {
    /// Decodes the canonical bytes and checks the position they carry.
    pub(crate) fn decode(&self) -> Result<EnvelopeRef<'a>, StoreError> {
        let corrupt = |detail: String| StoreError::Corrupt { position: self.position, detail };
        let env = decode_canonical(self.canonical).map_err(corrupt)?;
        if env.position != self.position {
            return Err(corrupt(format!("event carries position {}", env.position)));
        }
        Ok(env)
    }
}

/// Iterator over the records of a chunk; skipping a record costs one length read.
pub(crate) struct Records<'a> {
    reader: Reader<'a>,
    next: Position,
    end: Position,
}

impl<'a> Records<'a> {
    pub(crate) fn next_raw(&mut self) -> Result<Option<RawRecord<'a>>, StoreError> {
        let position = self.next;
        let corrupt = |detail: String| StoreError::Corrupt { position, detail };
        if position == self.end {
            self.reader.finish().map_err(corrupt)?;
            return Ok(None);
        }
        let canonical = self.reader.bytes().map_err(corrupt)?;
        let hash = self.reader.array().map_err(corrupt)?;
        self.next += 1;
        Ok(Some(RawRecord { position, canonical, hash }))
    }

    /// Skips records until the next one is at `position` (which must lie in the chunk).
    pub(crate) fn skip_to(&mut self, position: Position) -> Result<(), StoreError> {
        while self.next < position {
            if self.next_raw()?.is_none() {
                break;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(position: Position, prev_hash: [u8; 32]) -> RecordedEvent {
        let mut ev = RecordedEvent {
            event_id: Uuid::from_u128(position.into()),
            stream: format!("s-{position}"),
            stream_version: 0,
            position,
            event_type: "T".into(),
            schema_version: 1,
            occurred_at_us: 5,
            recorded_at_us: 6,
            causation_id: Some(Uuid::from_u128(9)),
            correlation_id: None,
            idempotency_key: Some("k".into()),
            idempotency_digest: Some([3; 32]),
            payload: vec![1, 2, 3],
            prev_hash,
            hash: [0; 32],
        };
        ev.hash = compute_hash(&ev);
        ev
    }

    fn chunk() -> (Vec<RecordedEvent>, Vec<u8>) {
        let a = sample(40, GENESIS_HASH);
        let b = sample(41, a.hash);
        let bytes = encode_chunk(&[a.clone(), b.clone()]);
        (vec![a, b], bytes)
    }

    #[test]
    fn chunk_round_trip() {
        let (events, bytes) = chunk();
        assert_eq!(decode_chunk(40, &bytes).unwrap(), events);
    }

    #[test]
    fn wrong_key_is_corrupt() {
        let (_, bytes) = chunk();
        assert!(matches!(decode_chunk(41, &bytes), Err(StoreError::Corrupt { position: 41, .. })));
    }

    #[test]
    fn truncation_is_corrupt_never_panics() {
        let (_, bytes) = chunk();
        for len in 0..bytes.len() {
            let r = decode_chunk(40, &bytes[..len]);
            assert!(matches!(r, Err(StoreError::Corrupt { .. })), "truncated at {len}: {r:?}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(decode_chunk(40, &longer), Err(StoreError::Corrupt { .. })));
    }

    /// Flips bits of every byte of a chunk of `events`: each result is `Corrupt` or events the
    /// hash chain refuses, or (only where `same_allowed`: compressed data, where a flip may
    /// decode to the same records, e.g. a match pointing at equal bytes) the same events.
    fn assert_flips_noticed(events: &[RecordedEvent], bytes: &[u8], same_allowed: bool) {
        for at in 0..bytes.len() {
            for mask in [0x01u8, 0x80, 0xff] {
                let mut bad = bytes.to_vec();
                bad[at] ^= mask;
                match decode_chunk(40, &bad) {
                    Err(StoreError::Corrupt { .. }) => {}
                    Err(e) => panic!("byte {at}: unexpected error {e}"),
                    Ok(decoded) if decoded == events => {
                        assert!(same_allowed, "byte {at} flip went unnoticed")
                    }
                    Ok(decoded) => {
                        let mut chain = crate::ChainVerifier::new(Some(40), GENESIS_HASH);
                        let refused = decoded.iter().any(|ev| chain.push(ev).is_err());
                        assert!(refused, "byte {at}: a changed event passes the chain");
                    }
                }
            }
        }
    }

    #[test]
    fn any_flipped_byte_is_corrupt_or_changes_the_event() {
        let (events, bytes) = chunk();
        assert_flips_noticed(&events, &bytes, false);
    }

    #[test]
    fn unknown_formats_are_corrupt() {
        let (events, mut bytes) = chunk();
        let mut canonical = canonical_bytes(&events[0]);
        canonical[0] = 2;
        assert!(decode_canonical(&canonical).unwrap_err().contains("unsupported canonical format"));
        bytes[0] = 9;
        assert!(matches!(decode_chunk(40, &bytes), Err(StoreError::Corrupt { .. })));
    }

    #[test]
    fn chunk_v2_round_trips_and_is_smaller_for_repetitive_records() {
        let (events, v1) = chunk();
        let v2 = encode_chunk_v2(&events);
        assert_eq!(v2[0], CHUNK_FORMAT_V2);
        assert_eq!(decode_chunk(40, &v2).unwrap(), events);
        assert_eq!(v1[..13][1..], v2[..13][1..], "same header after the format byte");
        let many: Vec<_> = (0..50).fold(Vec::new(), |mut acc: Vec<RecordedEvent>, i| {
            let prev = acc.last().map_or(GENESIS_HASH, |e| e.hash);
            acc.push(sample(40 + i, prev));
            acc
        });
        assert!(encode_chunk_v2(&many).len() * 2 < encode_chunk(&many).len());
    }

    #[test]
    fn damaged_v2_chunks_are_corrupt_never_a_panic() {
        let (events, _) = chunk();
        let bytes = encode_chunk_v2(&events);
        for len in 0..bytes.len() {
            let r = decode_chunk(40, &bytes[..len]);
            assert!(matches!(r, Err(StoreError::Corrupt { .. })), "truncated at {len}: {r:?}");
        }
        assert_flips_noticed(&events, &bytes, true);
        let mut huge = bytes.clone();
        huge[13..17].copy_from_slice(&u32::MAX.to_be_bytes());
        let r = decode_chunk(40, &huge);
        assert!(
            matches!(r, Err(StoreError::Corrupt { ref detail, .. }) if detail.contains("claims"))
        );
    }

    /// Regression (fuzz/chunk_decode): a header whose first position + count passes u64::MAX
    /// made `Chunk::end` overflow (a panic with overflow checks, a wrapped end without).
    #[test]
    fn a_count_past_u64_max_is_corrupt() {
        let (_, mut bytes) = chunk();
        let first = u64::MAX - 1;
        bytes[1..9].copy_from_slice(&first.to_be_bytes());
        let r = decode_chunk(first, &bytes);
        assert!(
            matches!(r, Err(StoreError::Corrupt { position, .. }) if position == first),
            "{r:?}"
        );
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// Arbitrary bytes under any key: an error or events, never a panic; what decodes
            /// re-encodes to the same bytes.
            #[test]
            fn decode_chunk_of_any_bytes_never_panics(
                key in any::<u64>(),
                claim_key in any::<bool>(),
                bytes in prop::collection::vec(any::<u8>(), 0..512),
            ) {
                let key = match (claim_key, bytes.get(1..9)) {
                    (true, Some(header)) => u64::from_be_bytes(header.try_into().unwrap()),
                    _ => key,
                };
                if let Ok(events) = decode_chunk(key, &bytes) {
                    prop_assert_eq!(encode_chunk(&events), bytes);
                }
            }

            /// A valid chunk with one byte changed: corrupt or different, never a panic.
            #[test]
            fn mutated_chunks_never_panic(at in any::<prop::sample::Index>(), byte in any::<u8>()) {
                let (events, mut bytes) = chunk();
                let at = at.index(bytes.len());
                bytes[at] = byte;
                if let Ok(decoded) = decode_chunk(40, &bytes) {
                    prop_assert!(decoded.len() == events.len());
                }
            }
        }
    }
}

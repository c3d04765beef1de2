//! The write-ahead log: every Upsert and Delete, framed, checksummed and synced before it is
//! acknowledged, so a crash loses nothing that was acknowledged.
//!
//! Layout: `wal/wal-<first sequence, 20 digits>.log` segments, appended in sequence order and
//! rotated at [`SEGMENT_BYTES`]. A record on disk is
//! `len: u32 | crc32(body): u32 | body`, body = `sequence: u64 | kind: u8 | payload`, all
//! little-endian. Upsert payload: `count: u32`, then per point `id: u64 | dims: u32 |
//! dims x f32 | entries: u32 | (len: u32, key)(len: u32, value)...`. Delete payload:
//! `count: u32 | ids: count x u64`.
//!
//! Reading stops at the first record that is short (a torn write) or fails its checksum; in
//! the last segment the file is truncated there, with a warning, and appending resumes. A bad
//! record anywhere else means the disk lost data after it was synced: a copy of that segment as
//! found and the segments after it are set aside (`.corrupt`) for a person to look at, never
//! silently deleted, and the damaged segment is cut like a torn tail, so the records before the
//! damage are replayed on every open, not only the first.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use crate::index::store::Payload;

/// A segment is closed and a new one started once it holds this many bytes.
pub const SEGMENT_BYTES: u64 = 64 << 20;
/// Largest record accepted when reading: anything claiming more is damage, not data.
const MAX_RECORD_BYTES: usize = 1 << 30;
const KIND_UPSERT: u8 = 1;
const KIND_DELETE: u8 = 2;

pub use crate::engine::Record;

/// Why the log could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// A file system operation failed.
    #[error("write-ahead log {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> WalError + '_ {
    move |source| WalError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn put_bytes(buf: &mut Vec<u8>, bytes: &[u8]) {
    buf.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    buf.extend_from_slice(bytes);
}

/// Appends the framed encoding of `record` at `sequence` to `buf`.
pub fn encode(sequence: u64, record: &Record, buf: &mut Vec<u8>) {
    let start = buf.len();
    buf.extend_from_slice(&[0u8; 8]); // len and crc, filled in below
    buf.extend_from_slice(&sequence.to_le_bytes());
    match record {
        Record::Upsert(points) => {
            buf.push(KIND_UPSERT);
            buf.extend_from_slice(&(points.len() as u32).to_le_bytes());
            for (id, vector, payload) in points {
                buf.extend_from_slice(&id.to_le_bytes());
                buf.extend_from_slice(&(vector.len() as u32).to_le_bytes());
                for v in vector {
                    buf.extend_from_slice(&v.to_le_bytes());
                }
                buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
                // Sorted, so the same write always encodes to the same bytes.
                let mut entries: Vec<_> = payload.iter().collect();
                entries.sort();
                for (k, v) in entries {
                    put_bytes(buf, k.as_bytes());
                    put_bytes(buf, v.as_bytes());
                }
            }
        }
        Record::Delete(ids) => {
            buf.push(KIND_DELETE);
            buf.extend_from_slice(&(ids.len() as u32).to_le_bytes());
            for id in ids {
                buf.extend_from_slice(&id.to_le_bytes());
            }
        }
    }
    let body_len = (buf.len() - start - 8) as u32;
    let crc = crc32fast::hash(&buf[start + 8..]);
    buf[start..start + 4].copy_from_slice(&body_len.to_le_bytes());
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// The result of decoding one frame at the start of a buffer.
#[derive(Debug, PartialEq)]
pub enum Decoded {
    /// A whole, valid record, and how many bytes it took.
    Record {
        /// Its sequence number.
        sequence: u64,
        /// The write.
        record: Record,
        /// Bytes consumed.
        len: usize,
    },
    /// The buffer ends inside the frame: a torn write.
    Torn,
    /// The frame is damaged (bad checksum or impossible contents).
    Corrupt(String),
}

struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Cursor<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        let end = self.at.checked_add(n)?;
        let slice = self.bytes.get(self.at..end)?;
        self.at = end;
        Some(slice)
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8).map(|b| {
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            u64::from_le_bytes(a)
        })
    }
    fn string(&mut self) -> Option<String> {
        let len = self.u32()? as usize;
        String::from_utf8(self.take(len)?.to_vec()).ok()
    }
}

fn decode_body(body: &[u8]) -> Option<(u64, Record)> {
    let mut c = Cursor { bytes: body, at: 0 };
    let sequence = c.u64()?;
    let kind = *c.take(1)?.first()?;
    let count = c.u32()? as usize;
    let record = match kind {
        KIND_UPSERT => {
            let mut points = Vec::with_capacity(count.min(4096));
            for _ in 0..count {
                let id = c.u64()?;
                let dims = c.u32()? as usize;
                let raw = c.take(dims.checked_mul(4)?)?;
                let vector = raw
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect();
                let entries = c.u32()? as usize;
                let mut payload = Payload::with_capacity(entries.min(1024));
                for _ in 0..entries {
                    let k = c.string()?;
                    let v = c.string()?;
                    payload.insert(k, v);
                }
                points.push((id, vector, payload));
            }
            Record::Upsert(points)
        }
        KIND_DELETE => {
            let mut ids = Vec::with_capacity(count.min(1 << 16));
            for _ in 0..count {
                ids.push(c.u64()?);
            }
            Record::Delete(ids)
        }
        _ => return None,
    };
    (c.at == body.len()).then_some((sequence, record))
}

/// Decodes the frame at the start of `bytes`. Never panics, whatever the bytes.
pub fn decode(bytes: &[u8]) -> Decoded {
    if bytes.len() < 8 {
        return Decoded::Torn;
    }
    let len = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
    let crc = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
    if len > MAX_RECORD_BYTES {
        return Decoded::Corrupt(format!("record claims {len} bytes"));
    }
    let Some(body) = bytes.get(8..8 + len) else {
        return Decoded::Torn;
    };
    if crc32fast::hash(body) != crc {
        return Decoded::Corrupt("checksum mismatch".into());
    }
    match decode_body(body) {
        Some((sequence, record)) => Decoded::Record {
            sequence,
            record,
            len: 8 + len,
        },
        None => Decoded::Corrupt("checksum matches but the contents do not parse".into()),
    }
}

fn segment_name(first_sequence: u64) -> String {
    format!("wal-{first_sequence:020}.log")
}

/// Segments in `dir`, by first sequence.
fn segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, WalError> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if let Some(first) = name
            .strip_prefix("wal-")
            .and_then(|rest| rest.strip_suffix(".log"))
            .and_then(|n| n.parse::<u64>().ok())
        {
            found.push((first, entry.path()));
        }
    }
    found.sort();
    Ok(found)
}

fn sync_dir(dir: &Path) -> Result<(), WalError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// The open log: replayed on open, then appended to by one writer.
#[derive(Debug)]
pub struct Wal {
    dir: PathBuf,
    file: File,
    path: PathBuf,
    bytes: u64,
    next_sequence: u64,
    buf: Vec<u8>,
    appended: u64,
    /// The current segment was unlinked under us (the directory was removed or wiped):
    /// the next append starts a new segment instead of writing into a file nobody will read.
    lost: bool,
}

/// What opening the log found.
#[derive(Debug)]
pub struct Replay {
    /// Records after the snapshot, in sequence order.
    pub records: Vec<(u64, Record)>,
    /// Whether a damaged tail was cut off.
    pub truncated: bool,
}

impl Wal {
    /// Opens the log in `dir` (created if missing), returning every record with a sequence
    /// above `snapshot_sequence`. A torn or corrupt tail is truncated with a warning.
    pub fn open(dir: &Path, snapshot_sequence: u64) -> Result<(Self, Replay), WalError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let segments = segments(dir)?;
        let mut records = Vec::new();
        let mut truncated = false;
        let mut last_sequence = snapshot_sequence;
        let mut tail: Option<(PathBuf, u64)> = None;
        for (i, (_, path)) in segments.iter().enumerate() {
            let mut bytes = Vec::new();
            File::open(path)
                .and_then(|mut f| f.read_to_end(&mut bytes))
                .map_err(io_err(path))?;
            let mut at = 0;
            let mut damage = None;
            while at < bytes.len() {
                match decode(&bytes[at..]) {
                    Decoded::Record {
                        sequence,
                        record,
                        len,
                    } => {
                        if sequence > last_sequence {
                            last_sequence = sequence;
                            if sequence > snapshot_sequence {
                                records.push((sequence, record));
                            }
                        }
                        at += len;
                    }
                    Decoded::Torn => {
                        damage = Some("torn record".to_string());
                        break;
                    }
                    Decoded::Corrupt(why) => {
                        damage = Some(why);
                        break;
                    }
                }
            }
            if let Some(why) = damage {
                truncated = true;
                let is_last = i + 1 == segments.len();
                tracing::warn!(
                    segment = %path.display(),
                    offset = at,
                    reason = %why,
                    "write-ahead log damaged; keeping the records before it"
                );
                if !is_last {
                    // The records before the damage were just replayed, so every later open must
                    // replay them too: they stay in place, cut like a torn tail, and what is set
                    // aside is a copy of this segment as found, and every segment after it.
                    let aside = path.with_extension("log.corrupt");
                    tracing::error!(
                        segment = %path.display(),
                        copy = %aside.display(),
                        "setting aside a copy of a damaged segment"
                    );
                    fs::copy(path, &aside)
                        .and_then(|_| File::open(&aside)?.sync_all())
                        .map_err(io_err(&aside))?;
                    for (_, later) in &segments[i + 1..] {
                        let aside = later.with_extension("log.corrupt");
                        tracing::error!(
                            segment = %later.display(),
                            "setting aside a segment after damage"
                        );
                        fs::rename(later, &aside).map_err(io_err(later))?;
                    }
                }
                let f = OpenOptions::new()
                    .write(true)
                    .open(path)
                    .map_err(io_err(path))?;
                f.set_len(at as u64).map_err(io_err(path))?;
                f.sync_all().map_err(io_err(path))?;
                if !is_last {
                    sync_dir(dir)?;
                }
                tail = Some((path.clone(), at as u64));
                break;
            }
            tail = Some((path.clone(), bytes.len() as u64));
        }
        let next_sequence = last_sequence + 1;
        let (path, bytes) = match tail {
            Some((path, bytes)) if bytes < SEGMENT_BYTES => (path, bytes),
            _ => (dir.join(segment_name(next_sequence)), 0),
        };
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io_err(&path))?;
        sync_dir(dir)?;
        Ok((
            Self {
                dir: dir.to_path_buf(),
                file,
                path,
                bytes,
                next_sequence,
                buf: Vec::new(),
                appended: 0,
                lost: false,
            },
            Replay { records, truncated },
        ))
    }

    /// The sequence the next record will get.
    pub fn next_sequence(&self) -> u64 {
        self.next_sequence
    }

    /// Appends `records` with consecutive sequence numbers and syncs them to disk with one
    /// `fdatasync` (group commit). Returns the first sequence. On failure nothing is
    /// acknowledged, the sequence numbers are not used, and the segment is cut back to where it
    /// was, so the next append starts clean once the fault is gone.
    pub fn append(&mut self, records: &[&Record]) -> Result<u64, WalError> {
        if self.lost {
            self.rotate()?;
            self.lost = false;
        }
        let first = self.next_sequence;
        self.buf.clear();
        for (i, record) in records.iter().enumerate() {
            encode(first + i as u64, record, &mut self.buf);
        }
        let written = self
            .file
            .write_all(&self.buf)
            .and_then(|()| self.file.sync_data())
            .and_then(|()| self.check_linked());
        if let Err(source) = written {
            // Best effort: drop whatever part of the batch reached the file. If even this fails,
            // reading stops at the torn record anyway, and the next open truncates it.
            if self.file.set_len(self.bytes).is_err() {
                tracing::warn!(segment = %self.path.display(), "could not cut back a failed append");
            }
            return Err(WalError::Io {
                path: self.path.clone(),
                source,
            });
        }
        self.bytes += self.buf.len() as u64;
        self.appended += self.buf.len() as u64;
        self.next_sequence += records.len() as u64;
        if self.bytes >= SEGMENT_BYTES {
            self.rotate()?;
        }
        Ok(first)
    }

    /// A write into a segment that no longer has a name is not durable: fail it.
    fn check_linked(&mut self) -> io::Result<()> {
        use std::os::unix::fs::MetadataExt;
        if self.file.metadata()?.nlink() == 0 {
            self.lost = true;
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                "the log segment was removed from the data directory",
            ));
        }
        Ok(())
    }

    fn rotate(&mut self) -> Result<(), WalError> {
        // The data directory may have been removed and recreated empty: make our log directory
        // again, but never the data directory itself (a missing one is an operator's fault).
        match fs::create_dir(&self.dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_err(&self.dir)(e)),
        }
        let path = self.dir.join(segment_name(self.next_sequence));
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io_err(&path))?;
        sync_dir(&self.dir)?;
        self.file = file;
        self.path = path;
        self.bytes = 0;
        Ok(())
    }

    /// Removes segments whose every record is at or below `sequence` (covered by a snapshot).
    /// Starts a fresh segment first when the current one is fully covered, so it can go too.
    pub fn remove_covered(&mut self, sequence: u64) -> Result<usize, WalError> {
        if self.bytes > 0 && self.next_sequence <= sequence + 1 {
            self.rotate()?;
        }
        let segments = segments(&self.dir)?;
        let mut removed = 0;
        for pair in segments.windows(2) {
            let ((_, path), (next_first, _)) = (&pair[0], &pair[1]);
            if *next_first <= sequence + 1 && *path != self.path {
                fs::remove_file(path).map_err(io_err(path))?;
                removed += 1;
            }
        }
        if removed > 0 {
            sync_dir(&self.dir)?;
        }
        Ok(removed)
    }

    /// Bytes appended since the log was opened.
    pub fn appended_bytes(&self) -> u64 {
        self.appended
    }

    /// Continues numbering after `sequence`, for writes made durable without the log (a
    /// preload followed by a snapshot at `sequence`), and drops what that snapshot covers.
    pub fn restart_after(&mut self, sequence: u64) -> Result<(), WalError> {
        if sequence >= self.next_sequence {
            self.next_sequence = sequence + 1;
            if self.bytes > 0 {
                self.rotate()?;
            }
        }
        self.remove_covered(sequence).map(drop)
    }

    /// Bytes of log on disk.
    pub fn disk_bytes(&self) -> u64 {
        segments(&self.dir)
            .map(|s| {
                s.iter()
                    .filter_map(|(_, p)| fs::metadata(p).ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upsert(id: u64) -> Record {
        Record::Upsert(vec![(
            id,
            vec![id as f32, -1.5, f32::MIN_POSITIVE],
            Payload::from([("k".to_string(), format!("v{id}"))]),
        )])
    }

    fn sequences(replay: &Replay) -> Vec<u64> {
        replay.records.iter().map(|(s, _)| *s).collect()
    }

    #[test]
    fn round_trip_and_resume() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut wal, replay) = Wal::open(dir.path(), 0).expect("open");
        assert!(replay.records.is_empty() && !replay.truncated);
        let a = upsert(1);
        let b = Record::Delete(vec![1, 2, 3]);
        assert_eq!(wal.append(&[&a, &b]).expect("append"), 1);
        assert_eq!(wal.append(&[&upsert(7)]).expect("append"), 3);
        drop(wal);
        let (wal, replay) = Wal::open(dir.path(), 0).expect("reopen");
        assert_eq!(replay.records, vec![(1, a), (2, b), (3, upsert(7))]);
        assert_eq!(wal.next_sequence(), 4);
        let (_, replay) = Wal::open(dir.path(), 2).expect("after a snapshot at 2");
        assert_eq!(sequences(&replay), vec![3]);
    }

    #[test]
    fn empty_file_is_an_empty_log() {
        let dir = tempfile::tempdir().expect("tempdir");
        File::create(dir.path().join(segment_name(1))).expect("create");
        let (mut wal, replay) = Wal::open(dir.path(), 0).expect("open");
        assert!(replay.records.is_empty() && !replay.truncated);
        assert_eq!(wal.append(&[&upsert(1)]).expect("append"), 1);
    }

    #[test]
    fn torn_tail_is_truncated_and_appending_resumes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut wal, _) = Wal::open(dir.path(), 0).expect("open");
        for id in 1..=3 {
            wal.append(&[&upsert(id)]).expect("append");
        }
        let path = wal.path.clone();
        drop(wal);
        let full = fs::read(&path).expect("read");
        // Every possible cut inside the last record keeps exactly the first two.
        let mut one = Vec::new();
        encode(3, &upsert(3), &mut one);
        for cut in 1..one.len() {
            fs::write(&path, &full[..full.len() - cut]).expect("write");
            let (mut wal, replay) = Wal::open(dir.path(), 0).expect("open torn");
            assert_eq!(sequences(&replay), vec![1, 2], "cut {cut}");
            assert!(replay.truncated);
            assert_eq!(wal.append(&[&upsert(9)]).expect("append after torn"), 3);
            drop(wal);
            let (_, replay) = Wal::open(dir.path(), 0).expect("reopen");
            assert_eq!(sequences(&replay), vec![1, 2, 3]);
            assert!(!replay.truncated);
        }
    }

    #[test]
    fn flipped_bits_are_detected_never_replayed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut wal, _) = Wal::open(dir.path(), 0).expect("open");
        for id in 1..=3 {
            wal.append(&[&upsert(id)]).expect("append");
        }
        let path = wal.path.clone();
        drop(wal);
        let full = fs::read(&path).expect("read");
        let mut first = Vec::new();
        encode(1, &upsert(1), &mut first);
        // Flip each bit of the second record in turn: the first always survives, the damaged
        // one never comes back as a record.
        for byte in first.len()..2 * first.len() {
            for bit in 0..8 {
                let mut damaged = full.clone();
                damaged[byte] ^= 1 << bit;
                fs::write(&path, &damaged).expect("write");
                let (_, replay) = Wal::open(dir.path(), 0).expect("open damaged");
                assert_eq!(sequences(&replay), vec![1], "byte {byte} bit {bit}");
            }
        }
    }

    #[test]
    fn damage_in_an_earlier_segment_keeps_its_prefix_on_every_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut wal, _) = Wal::open(dir.path(), 0).expect("open");
        wal.append(&[&upsert(1), &upsert(2)]).expect("append");
        wal.rotate().expect("rotate");
        wal.append(&[&upsert(3)]).expect("append");
        drop(wal);
        let first = dir.path().join(segment_name(1));
        let mut bytes = fs::read(&first).expect("read");
        let last = bytes.len() - 1;
        bytes[last] ^= 1; // inside record 2
        fs::write(&first, &bytes).expect("write");
        for open in 0..2 {
            let (_, replay) = Wal::open(dir.path(), 0).expect("open");
            assert_eq!(sequences(&replay), vec![1], "open {open}");
            assert_eq!(replay.truncated, open == 0);
        }
        assert_eq!(
            fs::read(first.with_extension("log.corrupt")).expect("the copy set aside"),
            bytes
        );
        assert!(
            dir.path()
                .join("wal-00000000000000000003.log.corrupt")
                .exists()
        );
    }

    #[test]
    fn decoder_never_panics_on_garbage() {
        let mut seed = 0x1234_5678_u64;
        for len in 0..400 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect();
            let _ = decode(&bytes);
        }
        // A valid header around a nonsense body.
        let mut frame = vec![];
        let body = [0xffu8; 20];
        frame.extend_from_slice(&(body.len() as u32).to_le_bytes());
        frame.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        frame.extend_from_slice(&body);
        assert!(matches!(decode(&frame), Decoded::Corrupt(_)));
    }

    #[test]
    fn covered_segments_are_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut wal, _) = Wal::open(dir.path(), 0).expect("open");
        for id in 1..=5 {
            wal.append(&[&upsert(id)]).expect("append");
        }
        wal.rotate().expect("rotate");
        for id in 6..=7 {
            wal.append(&[&upsert(id)]).expect("append");
        }
        assert_eq!(segments(dir.path()).expect("list").len(), 2);
        assert_eq!(
            wal.remove_covered(4).expect("remove"),
            0,
            "5 is not covered yet"
        );
        assert_eq!(wal.remove_covered(5).expect("remove"), 1);
        assert_eq!(
            wal.remove_covered(7).expect("remove"),
            1,
            "the current one rotates out"
        );
        drop(wal);
        let (_, replay) = Wal::open(dir.path(), 7).expect("reopen");
        assert!(replay.records.is_empty());
        let (wal, _) = Wal::open(dir.path(), 7).expect("reopen");
        assert_eq!(wal.next_sequence(), 8);
    }

    /// Properties of the decoder and of recovery over random records, random bytes, and valid
    /// logs with random damage. Records are compared by their encoding, which is canonical
    /// (payload entries sorted) and bit-exact for every float, NaNs included.
    mod properties {
        use super::*;
        use proptest::prelude::*;
        use proptest::sample::Index;

        /// `cases` per property, unless `PROPTEST_CASES` asks for more (or fewer) for a deep
        /// local run. Kept small: these run in CI on every push.
        fn config(cases: u32) -> ProptestConfig {
            let mut config = ProptestConfig::default();
            if std::env::var_os("PROPTEST_CASES").is_none() {
                config.cases = cases;
            }
            config
        }

        fn text() -> impl Strategy<Value = String> {
            ".{0,6}"
        }

        /// Any record, with floats from every bit pattern (NaNs, infinities, subnormals).
        fn record() -> impl Strategy<Value = Record> {
            let float = any::<u32>().prop_map(f32::from_bits);
            let point = (
                any::<u64>(),
                prop::collection::vec(float, 0..6),
                prop::collection::hash_map(text(), text(), 0..4),
            );
            prop_oneof![
                prop::collection::vec(point, 0..4).prop_map(Record::Upsert),
                prop::collection::vec(any::<u64>(), 0..6).prop_map(Record::Delete),
            ]
        }

        fn frame(sequence: u64, record: &Record) -> Vec<u8> {
            let mut buf = Vec::new();
            encode(sequence, record, &mut buf);
            buf
        }

        /// A log: records at sequences 1, 2, ... back to back.
        struct Log {
            bytes: Vec<u8>,
            frames: Vec<Vec<u8>>,
            /// `ends[i]`: the offset just past record `i`.
            ends: Vec<usize>,
        }

        impl Log {
            fn new(records: &[Record]) -> Self {
                let frames: Vec<Vec<u8>> = records
                    .iter()
                    .enumerate()
                    .map(|(i, r)| frame(i as u64 + 1, r))
                    .collect();
                let bytes = frames.concat();
                let ends = frames
                    .iter()
                    .scan(0, |end, f| {
                        *end += f.len();
                        Some(*end)
                    })
                    .collect();
                Self {
                    bytes,
                    frames,
                    ends,
                }
            }

            /// How many records lie wholly before `offset`.
            fn whole_before(&self, offset: usize) -> usize {
                self.ends.iter().take_while(|&&end| end <= offset).count()
            }

            fn end_of(&self, records: usize) -> usize {
                records.checked_sub(1).map_or(0, |i| self.ends[i])
            }
        }

        /// What reading a segment yields: the frames of the records read (re-encoded), where
        /// reading stopped, and whether it stopped at damage. The same loop as `Wal::open`.
        fn scan(bytes: &[u8]) -> (Vec<Vec<u8>>, usize, bool) {
            let mut frames = Vec::new();
            let mut at = 0;
            while at < bytes.len() {
                match decode(&bytes[at..]) {
                    Decoded::Record {
                        sequence,
                        record,
                        len,
                    } => {
                        assert!(len >= 8 && len <= bytes.len() - at, "len {len} at {at}");
                        frames.push(frame(sequence, &record));
                        at += len;
                    }
                    Decoded::Torn | Decoded::Corrupt(_) => return (frames, at, true),
                }
            }
            (frames, at, false)
        }

        /// Damage done to a valid log.
        #[derive(Debug, Clone)]
        enum Damage {
            None,
            /// Cut at any offset (a torn write, or a lost tail).
            Truncate(Index),
            /// One bit flipped anywhere.
            Flip(Index, u8),
            /// Bytes overwritten at random places, each changed (xor with a non-zero mask).
            Overwrite(Vec<(Index, u8)>),
            /// Junk after the last record (a preallocated or recycled tail).
            Append(Vec<u8>),
        }

        fn damage() -> impl Strategy<Value = Damage> {
            prop_oneof![
                Just(Damage::None),
                any::<Index>().prop_map(Damage::Truncate),
                (any::<Index>(), 0..8u8).prop_map(|(at, bit)| Damage::Flip(at, bit)),
                prop::collection::vec((any::<Index>(), 1..=255u8), 1..5)
                    .prop_map(Damage::Overwrite),
                prop::collection::vec(any::<u8>(), 1..64).prop_map(Damage::Append),
            ]
        }

        /// Applies `damage` to `log`; returns the bytes and how many records must survive.
        /// A record with any changed byte, or not wholly present, never survives, and nor does
        /// anything after it (a damaged frame could be accepted only by a CRC-32 collision).
        fn apply(log: &Log, damage: &Damage) -> (Vec<u8>, usize, bool) {
            let mut bytes = log.bytes.clone();
            let n = log.frames.len();
            match damage {
                Damage::None => (bytes, n, false),
                Damage::Truncate(at) => {
                    let cut = at.index(bytes.len() + 1);
                    bytes.truncate(cut);
                    let whole = log.whole_before(cut);
                    (bytes, whole, cut != log.end_of(whole))
                }
                Damage::Flip(at, bit) if !bytes.is_empty() => {
                    let at = at.index(bytes.len());
                    bytes[at] ^= 1 << bit;
                    (bytes, log.whole_before(at), true)
                }
                Damage::Overwrite(changes) if !bytes.is_empty() => {
                    for (at, mask) in changes {
                        let at = at.index(bytes.len());
                        bytes[at] ^= mask;
                    }
                    // Two changes to one byte may cancel out: the first byte that differs counts.
                    match bytes.iter().zip(&log.bytes).position(|(a, b)| a != b) {
                        Some(first) => (bytes, log.whole_before(first), true),
                        None => (bytes, n, false),
                    }
                }
                Damage::Append(junk) => {
                    bytes.extend_from_slice(junk);
                    (bytes, n, true)
                }
                Damage::Flip(..) | Damage::Overwrite(_) => (bytes, 0, false),
            }
        }

        proptest! {
            #![proptest_config(config(256))]

            /// Encoding then decoding gives the record back, bit for bit, and consumes exactly
            /// its frame even with more bytes after it.
            #[test]
            fn encode_decode_round_trip(
                sequence in any::<u64>(),
                record in record(),
                after in prop::collection::vec(any::<u8>(), 0..16),
            ) {
                let framed = frame(sequence, &record);
                let mut bytes = framed.clone();
                bytes.extend_from_slice(&after);
                match decode(&bytes) {
                    Decoded::Record { sequence: s, record: r, len } => {
                        prop_assert_eq!(s, sequence);
                        prop_assert_eq!(len, framed.len());
                        prop_assert_eq!(frame(s, &r), framed);
                    }
                    other => prop_assert!(false, "decoded {:?}", other),
                }
            }

            /// Arbitrary bytes: never a panic, and a record only if the frame is in the buffer.
            #[test]
            fn decode_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
                if let Decoded::Record { len, .. } = decode(&bytes) {
                    prop_assert!(len <= bytes.len());
                }
            }

            /// A well-framed, correctly checksummed body of arbitrary bytes reaches the body
            /// parser: it yields a record or `Corrupt` (never `Torn`, never a panic), and a
            /// record it yields encodes canonically to something that decodes to itself.
            #[test]
            fn decode_arbitrary_checksummed_body(
                body in prop::collection::vec(any::<u8>(), 0..256),
            ) {
                check_checksummed_body(&body)?;
            }

            /// A valid body with a few bytes changed, cut or extended, checksum fixed up:
            /// counts, dimensions and string lengths that lie, with the checksum vouching for
            /// them. The same guarantees as for arbitrary bodies.
            #[test]
            fn decode_mutated_checksummed_body(
                record in record(),
                changes in prop::collection::vec((any::<Index>(), any::<u8>()), 0..4),
                resize in prop_oneof![Just(None), any::<Index>().prop_map(Some)],
                extra in prop::collection::vec(any::<u8>(), 0..8),
            ) {
                let mut body = frame(7, &record).split_off(8);
                for (at, value) in changes {
                    let at = at.index(body.len());
                    body[at] = value;
                }
                match resize {
                    Some(at) => body.truncate(at.index(body.len() + 1)),
                    None => body.extend_from_slice(&extra),
                }
                check_checksummed_body(&body)?;
            }

            /// Reading a damaged log returns exactly the records wholly before the first damaged
            /// byte, in order, none invented; it reports damage exactly when there is some.
            #[test]
            fn damaged_log_yields_the_clean_prefix(
                records in prop::collection::vec(record(), 0..6),
                damage in damage(),
            ) {
                let log = Log::new(&records);
                let (bytes, survivors, damaged) = apply(&log, &damage);
                let (frames, end, stopped) = scan(&bytes);
                prop_assert_eq!(&frames[..], &log.frames[..survivors]);
                prop_assert_eq!(end, log.end_of(survivors));
                prop_assert_eq!(stopped, damaged);
            }
        }

        fn check_checksummed_body(body: &[u8]) -> Result<(), TestCaseError> {
            let mut bytes = (body.len() as u32).to_le_bytes().to_vec();
            bytes.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
            bytes.extend_from_slice(body);
            match decode(&bytes) {
                Decoded::Record {
                    sequence,
                    record,
                    len,
                } => {
                    prop_assert_eq!(len, bytes.len());
                    let again = frame(sequence, &record);
                    match decode(&again) {
                        Decoded::Record { record: r, .. } => {
                            prop_assert_eq!(frame(sequence, &r), again)
                        }
                        other => prop_assert!(false, "re-encoding decoded as {:?}", other),
                    }
                }
                Decoded::Corrupt(_) => {}
                Decoded::Torn => prop_assert!(false, "a whole frame read as torn"),
            }
            Ok(())
        }

        proptest! {
            // Each case writes, opens and reopens a log on disk: fewer of them.
            #![proptest_config(config(64))]

            /// Recovery from a damaged last segment: the clean prefix is replayed (above the
            /// snapshot's sequence), the damage is cut off on disk, appending resumes right
            /// after the last sequence seen, and the next open finds exactly that.
            #[test]
            fn open_recovers_the_clean_prefix_and_resumes(
                records in prop::collection::vec(record(), 0..6),
                damage in damage(),
                snapshot in 0..8u64,
            ) {
                let log = Log::new(&records);
                let (bytes, survivors, damaged) = apply(&log, &damage);
                let dir = tempfile::tempdir().expect("tempdir");
                let path = dir.path().join(segment_name(1));
                fs::write(&path, &bytes).expect("write");

                let (mut wal, replay) = Wal::open(dir.path(), snapshot).expect("open");
                let replayed: Vec<Vec<u8>> =
                    replay.records.iter().map(|(s, r)| frame(*s, r)).collect();
                let kept = (snapshot as usize).min(survivors);
                prop_assert_eq!(&replayed[..], &log.frames[kept..survivors]);
                prop_assert_eq!(replay.truncated, damaged);
                prop_assert_eq!(
                    fs::metadata(&path).expect("stat").len(),
                    log.end_of(survivors) as u64
                );

                let next = (survivors as u64).max(snapshot) + 1;
                prop_assert_eq!(wal.append(&[&upsert(99)]).expect("append"), next);
                drop(wal);
                let (_, replay) = Wal::open(dir.path(), snapshot).expect("reopen");
                let mut expected = log.frames[kept..survivors].to_vec();
                expected.push(frame(next, &upsert(99)));
                let replayed: Vec<Vec<u8>> =
                    replay.records.iter().map(|(s, r)| frame(*s, r)).collect();
                prop_assert_eq!(replayed, expected);
                prop_assert!(!replay.truncated);
            }

            /// Damage in a segment that is not the last: what the first open replays, every
            /// later open replays too (acknowledged records must not come back once and then
            /// vanish), and nothing after the damage is ever replayed.
            #[test]
            fn open_after_damage_in_an_earlier_segment_is_stable(
                first in prop::collection::vec(record(), 1..5),
                second in prop::collection::vec(record(), 1..4),
                damage in damage(),
            ) {
                let log = Log::new(&first);
                let (bytes, survivors, damaged) = apply(&log, &damage);
                let dir = tempfile::tempdir().expect("tempdir");
                fs::write(dir.path().join(segment_name(1)), &bytes).expect("write");
                let second_first = first.len() as u64 + 1;
                let later: Vec<u8> = second
                    .iter()
                    .enumerate()
                    .flat_map(|(i, r)| frame(second_first + i as u64, r))
                    .collect();
                fs::write(dir.path().join(segment_name(second_first)), &later).expect("write");

                let (wal, replay) = Wal::open(dir.path(), 0).expect("open");
                let replayed: Vec<Vec<u8>> =
                    replay.records.iter().map(|(s, r)| frame(*s, r)).collect();
                let mut expected = log.frames[..survivors].to_vec();
                if !damaged {
                    // Whole records only (perhaps fewer, cut at a record boundary): reading
                    // goes on into the next segment.
                    let later = second.iter().enumerate();
                    expected.extend(later.map(|(i, r)| frame(second_first + i as u64, r)));
                }
                prop_assert_eq!(&replayed, &expected);
                prop_assert_eq!(replay.truncated, damaged);
                drop(wal);
                let (_, again) = Wal::open(dir.path(), 0).expect("reopen");
                let replayed_again: Vec<Vec<u8>> =
                    again.records.iter().map(|(s, r)| frame(*s, r)).collect();
                prop_assert_eq!(replayed_again, replayed);
                prop_assert!(!again.truncated);
            }
        }
    }
}

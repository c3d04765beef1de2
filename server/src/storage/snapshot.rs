//! Snapshots: the whole index saved to `--data-dir` and loaded on start.
//!
//! Two files make a snapshot: `ann-<sequence>.usearch` (the HNSW graph, so start-up does not
//! rebuild it) and `points.snap` (every point, and the name of its graph file). Both are written
//! to a temporary name, synced, renamed into place and the directory synced, graph first: the
//! points file is the commit point. A graph file that is missing, unreadable or disagrees with
//! the points is rebuilt from the points instead of trusted.
//!
//! `points.snap` layout (little-endian): magic `VRSNAP01`, dimensions u32, metric (u8 len +
//! name), sequence u64, graph file name (u32 len + bytes), count u64, then per point: id u64,
//! `dimensions` f32, payload entries u32, each as (u32 len + key, u32 len + value); finally the
//! CRC-32 of everything before it.

use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use crate::engine::Engine;
use crate::index::Metric;
use crate::index::store::{Payload, PointStore};

const MAGIC: &[u8; 8] = b"VRSNAP01";
/// Longest key or value accepted while reading, so a damaged length cannot ask for gigabytes.
const MAX_STRING: usize = 64 << 20;
/// Name of the points file inside the data directory.
pub const POINTS_FILE: &str = "points.snap";

/// What a snapshot holds besides the graph.
#[derive(Debug)]
pub struct Loaded {
    /// Every point.
    pub store: PointStore,
    /// Sequence number of the last write included.
    pub sequence: u64,
    /// The graph file saved with these points, if it exists.
    pub graph: Option<PathBuf>,
}

/// Snapshot read or write failure.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// File system error.
    #[error("{path}: {source}")]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The file is not a snapshot we can read, or is damaged.
    #[error("{path}: {reason}")]
    Corrupt {
        /// The file involved.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The snapshot was made with other dimensions or metric than configured.
    #[error("data directory holds a {found} index but the server is configured for {expected}")]
    Mismatch {
        /// What the snapshot holds.
        found: String,
        /// What the configuration asks for.
        expected: String,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SnapshotError + '_ {
    move |source| SnapshotError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Graph file name for a snapshot at `sequence`.
pub fn graph_file_name(sequence: u64) -> String {
    format!("ann-{sequence:020}.usearch")
}

/// Fsyncs a directory so renames inside it survive a crash.
pub fn sync_dir(dir: &Path) -> Result<(), SnapshotError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// Syncs a file that another library wrote, then renames it to its final name.
pub fn commit_file(tmp: &Path, final_path: &Path) -> Result<(), SnapshotError> {
    File::open(tmp)
        .and_then(|f| f.sync_all())
        .map_err(io_err(tmp))?;
    fs::rename(tmp, final_path).map_err(io_err(final_path))
}

struct CrcWriter<W: Write> {
    inner: W,
    crc: crc32fast::Hasher,
}

impl<W: Write> Write for CrcWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn write_bytes(w: &mut impl Write, bytes: &[u8]) -> io::Result<()> {
    w.write_all(&(bytes.len() as u32).to_le_bytes())?;
    w.write_all(bytes)
}

/// Writes `points.snap` atomically into `dir`, naming `graph` as its graph file.
pub fn write_points(
    dir: &Path,
    store: &PointStore,
    metric: Metric,
    sequence: u64,
    graph: &str,
) -> Result<(), SnapshotError> {
    let final_path = dir.join(POINTS_FILE);
    let tmp = dir.join(format!("{POINTS_FILE}.tmp"));
    let file = File::create(&tmp).map_err(io_err(&tmp))?;
    let mut w = CrcWriter {
        inner: BufWriter::with_capacity(1 << 20, file),
        crc: crc32fast::Hasher::new(),
    };
    let write = |w: &mut CrcWriter<BufWriter<File>>| -> io::Result<()> {
        w.write_all(MAGIC)?;
        w.write_all(&(store.dimensions() as u32).to_le_bytes())?;
        let name = metric.as_str().as_bytes();
        w.write_all(&[name.len() as u8])?;
        w.write_all(name)?;
        w.write_all(&sequence.to_le_bytes())?;
        write_bytes(w, graph.as_bytes())?;
        w.write_all(&(store.len() as u64).to_le_bytes())?;
        for (id, vector, payload) in store.iter() {
            w.write_all(&id.to_le_bytes())?;
            for v in vector {
                w.write_all(&v.to_le_bytes())?;
            }
            w.write_all(&(payload.len() as u32).to_le_bytes())?;
            for (k, v) in payload {
                write_bytes(w, k.as_bytes())?;
                write_bytes(w, v.as_bytes())?;
            }
        }
        Ok(())
    };
    write(&mut w).map_err(io_err(&tmp))?;
    let crc = w.crc.clone().finalize();
    let mut inner = w.inner;
    inner.write_all(&crc.to_le_bytes()).map_err(io_err(&tmp))?;
    let file = inner
        .into_inner()
        .map_err(|e| io_err(&tmp)(e.into_error()))?;
    file.sync_all().map_err(io_err(&tmp))?;
    drop(file);
    fs::rename(&tmp, &final_path).map_err(io_err(&final_path))?;
    sync_dir(dir)
}

struct CrcReader<R: Read> {
    inner: R,
    crc: crc32fast::Hasher,
}

impl<R: Read> Read for CrcReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.crc.update(&buf[..n]);
        Ok(n)
    }
}

fn read_array<const N: usize>(r: &mut impl Read) -> io::Result<[u8; N]> {
    let mut buf = [0u8; N];
    r.read_exact(&mut buf)?;
    Ok(buf)
}

fn read_string(r: &mut impl Read, limit: usize) -> io::Result<String> {
    let len = u32::from_le_bytes(read_array(r)?) as usize;
    if len > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("string of {len} bytes exceeds {limit}"),
        ));
    }
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf)?;
    String::from_utf8(buf).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Reads `points.snap` from `dir`; `Ok(None)` when there is none (a fresh directory).
pub fn read_points(
    dir: &Path,
    dimensions: usize,
    metric: Metric,
) -> Result<Option<Loaded>, SnapshotError> {
    let path = dir.join(POINTS_FILE);
    let file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(&path)(e)),
    };
    let corrupt = |reason: String| SnapshotError::Corrupt {
        path: path.clone(),
        reason,
    };
    let mut r = CrcReader {
        inner: BufReader::with_capacity(1 << 20, file),
        crc: crc32fast::Hasher::new(),
    };
    let mut read = || -> io::Result<Result<Loaded, SnapshotError>> {
        if &read_array::<8>(&mut r)? != MAGIC {
            return Ok(Err(corrupt("not a vecrig snapshot (bad magic)".into())));
        }
        let dims = u32::from_le_bytes(read_array(&mut r)?) as usize;
        let name_len = read_array::<1>(&mut r)?[0] as usize;
        let mut name = vec![0u8; name_len];
        r.read_exact(&mut name)?;
        let found_metric: Metric = match String::from_utf8_lossy(&name).parse() {
            Ok(m) => m,
            Err(e) => return Ok(Err(corrupt(e))),
        };
        if dims != dimensions || found_metric != metric {
            return Ok(Err(SnapshotError::Mismatch {
                found: format!("{dims}-dimension {found_metric}"),
                expected: format!("{dimensions}-dimension {metric}"),
            }));
        }
        let sequence = u64::from_le_bytes(read_array(&mut r)?);
        let graph = read_string(&mut r, 4096)?;
        let count = u64::from_le_bytes(read_array(&mut r)?);
        let mut store = PointStore::new(dims, metric);
        let mut vector = vec![0f32; dims];
        let mut raw = vec![0u8; dims * 4];
        for _ in 0..count {
            let id = u64::from_le_bytes(read_array(&mut r)?);
            r.read_exact(&mut raw)?;
            for (v, b) in vector.iter_mut().zip(raw.chunks_exact(4)) {
                *v = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
            let entries = u32::from_le_bytes(read_array(&mut r)?);
            let mut payload = Payload::with_capacity(entries.min(1024) as usize);
            for _ in 0..entries {
                let k = read_string(&mut r, MAX_STRING)?;
                let v = read_string(&mut r, MAX_STRING)?;
                payload.insert(k, v);
            }
            store.upsert(id, &vector, payload);
        }
        let computed = r.crc.clone().finalize();
        let stored = u32::from_le_bytes(read_array(&mut r.inner)?);
        if computed != stored {
            return Ok(Err(corrupt(format!(
                "checksum mismatch: stored {stored:08x}, computed {computed:08x}"
            ))));
        }
        let graph = (!graph.is_empty()).then(|| dir.join(graph));
        Ok(Ok(Loaded {
            store,
            sequence,
            graph,
        }))
    };
    match read() {
        Ok(result) => result.map(Some),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(corrupt("truncated".into())),
        Err(e) if e.kind() == io::ErrorKind::InvalidData => Err(corrupt(e.to_string())),
        Err(e) => Err(io_err(&path)(e)),
    }
}

/// Removes graph files other than `keep` (left behind by earlier snapshots).
pub fn remove_stale_graphs(dir: &Path, keep: &str) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let stale = name.starts_with("ann-") && name.ends_with(".usearch") && name != keep;
        if stale && let Err(e) = fs::remove_file(entry.path()) {
            tracing::warn!(file = %name, error = %e, "could not remove stale graph file");
        }
    }
}

/// Writes a snapshot of everything in `engine` to `dir`. Blocks writes while it runs.
pub fn save(engine: &Engine, dir: &Path) -> Result<(), SnapshotError> {
    let frozen = engine.freeze().map_err(|e| SnapshotError::Corrupt {
        path: dir.to_path_buf(),
        reason: e.to_string(),
    })?;
    let sequence = frozen.sequence();
    let graph_name = graph_file_name(sequence);
    let tmp = dir.join(format!("{graph_name}.tmp"));
    frozen
        .ann()
        .save(&tmp)
        .map_err(|e| SnapshotError::Corrupt {
            path: tmp.clone(),
            reason: e.to_string(),
        })?;
    commit_file(&tmp, &dir.join(&graph_name))?;
    let store = frozen.store();
    write_points(dir, &store, frozen.shape().metric, sequence, &graph_name)?;
    drop(store);
    remove_stale_graphs(dir, &graph_name);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> PointStore {
        let mut store = PointStore::new(3, Metric::L2);
        store.upsert(
            1,
            &[1.0, 2.0, 3.0],
            Payload::from([("k".into(), "v".into())]),
        );
        store.upsert(u64::MAX, &[-1.0, 0.5, f32::MIN_POSITIVE], Payload::new());
        store
    }

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_points(dir.path(), &sample(), Metric::L2, 77, "ann-x.usearch").expect("write");
        let loaded = read_points(dir.path(), 3, Metric::L2)
            .expect("read")
            .expect("present");
        assert_eq!(loaded.sequence, 77);
        assert_eq!(loaded.store.len(), 2);
        assert_eq!(loaded.store.get(1), sample().get(1));
        assert_eq!(loaded.store.get(u64::MAX), sample().get(u64::MAX));
        assert_eq!(loaded.graph, Some(dir.path().join("ann-x.usearch")));
    }

    #[test]
    fn missing_is_none_and_mismatch_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(
            read_points(dir.path(), 3, Metric::L2)
                .expect("read")
                .is_none()
        );
        write_points(dir.path(), &sample(), Metric::L2, 1, "").expect("write");
        assert!(matches!(
            read_points(dir.path(), 4, Metric::L2),
            Err(SnapshotError::Mismatch { .. })
        ));
        assert!(matches!(
            read_points(dir.path(), 3, Metric::Cosine),
            Err(SnapshotError::Mismatch { .. })
        ));
    }

    #[test]
    fn damage_is_detected() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_points(dir.path(), &sample(), Metric::L2, 1, "").expect("write");
        let path = dir.path().join(POINTS_FILE);
        let mut bytes = fs::read(&path).expect("read");
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x40;
        fs::write(&path, &bytes).expect("write");
        assert!(matches!(
            read_points(dir.path(), 3, Metric::L2),
            Err(SnapshotError::Corrupt { .. })
        ));
        fs::write(&path, &bytes[..bytes.len() - 7]).expect("write");
        assert!(matches!(
            read_points(dir.path(), 3, Metric::L2),
            Err(SnapshotError::Corrupt { .. })
        ));
    }

    /// Properties of the loader over random snapshots, damaged ones, and arbitrary bytes: it
    /// returns exactly what was written, or an error, and never panics.
    mod properties {
        use super::*;
        use proptest::prelude::*;
        use proptest::sample::Index;

        /// `cases` per property, unless `PROPTEST_CASES` asks for more (or fewer) for a deep
        /// local run. Kept small: these run in CI on every push, and each writes files.
        fn config(cases: u32) -> ProptestConfig {
            let mut config = ProptestConfig::default();
            if std::env::var_os("PROPTEST_CASES").is_none() {
                config.cases = cases;
            }
            config
        }

        type Point = (u64, Vec<f32>, Payload);

        /// A snapshot's contents: width, metric, sequence, graph file name and points (floats
        /// from every bit pattern, ids repeating so some points replace others).
        #[derive(Debug, Clone)]
        struct Contents {
            dimensions: usize,
            metric: Metric,
            sequence: u64,
            graph: String,
            points: Vec<Point>,
        }

        fn contents() -> impl Strategy<Value = Contents> {
            let metric = prop::sample::select(vec![Metric::Cosine, Metric::L2, Metric::Ip]);
            (1..5usize, metric, any::<u64>(), "[a-z0-9.-]{0,12}").prop_flat_map(
                |(dimensions, metric, sequence, graph)| {
                    let point = (
                        prop_oneof![0..8u64, any::<u64>()],
                        prop::collection::vec(any::<u32>().prop_map(f32::from_bits), dimensions),
                        prop::collection::hash_map(".{0,4}", ".{0,6}", 0..3),
                    );
                    prop::collection::vec(point, 0..6).prop_map(move |points| Contents {
                        dimensions,
                        metric,
                        sequence,
                        graph: graph.clone(),
                        points,
                    })
                },
            )
        }

        fn store(contents: &Contents) -> PointStore {
            let mut store = PointStore::new(contents.dimensions, contents.metric);
            for (id, vector, payload) in &contents.points {
                store.upsert(*id, vector, payload.clone());
            }
            store
        }

        /// A point as compared: floats as bits so that NaNs compare, payload sorted.
        type Exact = (u64, Vec<u32>, Vec<(String, String)>);

        /// Every point of `store`, by id.
        fn points(store: &PointStore) -> Vec<Exact> {
            let mut points: Vec<_> = store
                .iter()
                .map(|(id, vector, payload)| {
                    let mut payload: Vec<_> = payload
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect();
                    payload.sort();
                    (id, vector.iter().map(|v| v.to_bits()).collect(), payload)
                })
                .collect();
            points.sort_by_key(|p| p.0);
            points
        }

        /// Writes `contents` to a new directory; returns it and the bytes of the points file.
        fn written(contents: &Contents) -> (tempfile::TempDir, Vec<u8>) {
            let dir = tempfile::tempdir().expect("tempdir");
            write_points(
                dir.path(),
                &store(contents),
                contents.metric,
                contents.sequence,
                &contents.graph,
            )
            .expect("write");
            let bytes = fs::read(dir.path().join(POINTS_FILE)).expect("read");
            (dir, bytes)
        }

        /// Damage to a snapshot file.
        #[derive(Debug, Clone)]
        enum Damage {
            Truncate(Index),
            Flip(Index, u8),
            Overwrite(Vec<(Index, u8)>),
        }

        fn damage() -> impl Strategy<Value = Damage> {
            prop_oneof![
                any::<Index>().prop_map(Damage::Truncate),
                (any::<Index>(), 0..8u8).prop_map(|(at, bit)| Damage::Flip(at, bit)),
                prop::collection::vec((any::<Index>(), 1..=255u8), 1..5)
                    .prop_map(Damage::Overwrite),
            ]
        }

        proptest! {
            #![proptest_config(config(128))]

            /// What is written is read back: every point bit for bit, sequence, graph name.
            #[test]
            fn round_trip(contents in contents()) {
                let (dir, _) = written(&contents);
                let loaded = read_points(dir.path(), contents.dimensions, contents.metric)
                    .expect("read")
                    .expect("present");
                prop_assert_eq!(points(&loaded.store), points(&store(&contents)));
                prop_assert_eq!(loaded.sequence, contents.sequence);
                let graph = (!contents.graph.is_empty()).then(|| dir.path().join(&contents.graph));
                prop_assert_eq!(loaded.graph, graph);
            }

            /// A snapshot cut short or with any byte changed is refused, as damaged or (when
            /// the change hit the width or metric) as made for another index; never loaded,
            /// never a panic.
            #[test]
            fn damaged_snapshot_is_refused(contents in contents(), damage in damage()) {
                let (dir, mut bytes) = written(&contents);
                let original = bytes.clone();
                match &damage {
                    Damage::Truncate(at) => bytes.truncate(at.index(bytes.len())),
                    Damage::Flip(at, bit) => {
                        let at = at.index(bytes.len());
                        bytes[at] ^= 1 << bit;
                    }
                    Damage::Overwrite(changes) => {
                        for (at, mask) in changes {
                            let at = at.index(bytes.len());
                            bytes[at] ^= mask;
                        }
                    }
                }
                prop_assume!(bytes != original, "two changes cancelled out");
                fs::write(dir.path().join(POINTS_FILE), &bytes).expect("write");
                match read_points(dir.path(), contents.dimensions, contents.metric) {
                    Err(SnapshotError::Corrupt { .. } | SnapshotError::Mismatch { .. }) => {}
                    other => prop_assert!(false, "damaged snapshot gave {:?}", other),
                }
            }

            /// Arbitrary bytes, bare or behind a valid header (so the loader reaches the
            /// graph name, counts, vectors and payload lengths): an error, never a panic.
            #[test]
            fn arbitrary_bytes_are_refused(
                header in any::<bool>(),
                rest in prop::collection::vec(any::<u8>(), 0..512),
            ) {
                let dir = tempfile::tempdir().expect("tempdir");
                let mut bytes = Vec::new();
                if header {
                    bytes.extend_from_slice(MAGIC);
                    bytes.extend_from_slice(&3u32.to_le_bytes());
                    bytes.extend_from_slice(&[2]);
                    bytes.extend_from_slice(b"l2");
                }
                bytes.extend_from_slice(&rest);
                fs::write(dir.path().join(POINTS_FILE), &bytes).expect("write");
                match read_points(dir.path(), 3, Metric::L2) {
                    Err(SnapshotError::Corrupt { .. } | SnapshotError::Mismatch { .. }) => {}
                    other => prop_assert!(false, "arbitrary bytes gave {:?}", other),
                }
            }
        }
    }
}

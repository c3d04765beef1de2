//! Durability: the engine, its write-ahead log, its snapshots, and the one writer thread that
//! ties them together.
//!
//! A write is embedded (for texts) on the blocking pool, then handed to the writer thread. The
//! writer takes every write waiting at that moment, appends them to the log with one
//! `fdatasync` between them all (group commit: concurrent writers share a disk flush), applies
//! them in sequence order to the point store and the engine's tail (cheap: no graph insert),
//! and only then answers, so an acknowledged write is durable and searchable (`wait` is kept
//! for the wire: every write now waits). A delete reports how many of its ids existed. When
//! the tail is full, the writer waits for the indexer before applying an upsert, and with it
//! every writer behind it. The indexer threads, started here (one per CPU for our graph), move
//! the tail into the graph.
//!
//! Snapshots are taken by the same thread, between batches, once enough log has accumulated or
//! enough time has passed, and on shutdown; log segments the snapshot covers are then removed,
//! so disk use stays bounded under a long write load. Start-up loads the newest snapshot and
//! replays the log after it into the store and the tail, then serves while the indexer
//! catches up. A `LOCK` file (flock) keeps a second server off the directory.
//!
//! All of the server's disk I/O lives in this folder: this module (the lock, the writer
//! thread, group commit), [`wal`] (the log's format and segments), [`snapshot`] (the snapshot
//! files, and saving the engine into them) and [`recovery`] (the engine rebuilt from them on
//! start). The engine itself ([`crate::engine`]) is in memory only.

pub mod recovery;
pub mod snapshot;
pub mod wal;

pub use recovery::{OpenError, Options};

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};
use tokio::sync::oneshot;

use crate::engine::{Engine, NewPoint};
use crate::error::Error;
use snapshot::SnapshotError;
use wal::{Record, Wal};

/// The storage flags (flattened into the server's); their defaults are written here only.
#[derive(Debug, Clone, clap::Args)]
#[group(skip)]
pub struct Args {
    /// Fill an empty index with N seeded synthetic points (clustered vectors with texts).
    #[arg(long, env = "VECRIG_PRELOAD", default_value_t = 0)]
    pub preload: u64,
    /// Seed of the synthetic data (the loadgen's `--seed` must match to query the same data).
    #[arg(long, env = "VECRIG_PRELOAD_SEED", default_value_t = vecrig::synthetic::Synthetic::DEFAULT_SEED)]
    pub preload_seed: u64,
    /// Fill an empty index with a dataset's train points instead (.fvecs, .bvecs, .npy,
    /// .parquet, .hdf5, a VectorDBBench directory), ids its row numbers [default: none].
    #[arg(long, env = "VECRIG_PRELOAD_FROM")]
    pub preload_from: Option<PathBuf>,
    /// Take a snapshot once this much write-ahead log has accumulated (bytes).
    #[arg(long, env = "VECRIG_SNAPSHOT_WAL_BYTES", default_value_t = 128 << 20)]
    pub snapshot_wal_bytes: u64,
    /// Take a snapshot at least this often while writes arrive.
    #[arg(long, env = "VECRIG_SNAPSHOT_INTERVAL", default_value = "5m", value_parser = humantime::parse_duration)]
    pub snapshot_interval: Duration,
}

/// A cell for the storage, set once it is opened: empty while the server is starting
/// (recovering data), then set once. The service and the metrics endpoint read it.
pub type StorageCell = Arc<OnceLock<Arc<Storage>>>;

/// Writes taken into one group commit at most.
const MAX_GROUP: usize = 4096;

/// When to take a snapshot.
#[derive(Debug, Clone, Copy)]
pub struct SnapshotPolicy {
    /// After this many bytes of log since the last snapshot.
    pub wal_bytes: u64,
    /// After this long since the last snapshot, if anything was written.
    pub interval: Duration,
}

impl Default for SnapshotPolicy {
    /// The command line's defaults.
    fn default() -> Self {
        Self::from(&crate::flags::defaults::<Args>())
    }
}

impl From<&Args> for SnapshotPolicy {
    fn from(args: &Args) -> Self {
        Self {
            wal_bytes: args.snapshot_wal_bytes.max(1 << 20),
            interval: args.snapshot_interval,
        }
    }
}

/// What a write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// Its sequence number in the log.
    pub sequence: u64,
    /// Points written, or for a delete, ids that existed.
    pub touched: usize,
}

struct Pending {
    record: Record,
    reply: oneshot::Sender<Result<Applied, Error>>,
}

/// The engine with its durability.
pub struct Storage {
    engine: Arc<Engine>,
    durable: Arc<AtomicU64>,
    queue: Mutex<Option<mpsc::Sender<Pending>>>,
    writer: Mutex<Option<std::thread::JoinHandle<Wal>>>,
    /// Set to stop the indexers (and a writer waiting for tail room) on close or drop.
    stop: Arc<AtomicBool>,
    indexers: Mutex<Vec<std::thread::JoinHandle<()>>>,
    dir: PathBuf,
    _lock: Flock<File>,
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Storage")
            .field("engine", &self.engine)
            .field("durable", &self.durable_sequence())
            .finish()
    }
}

fn lock(dir: &Path) -> Result<Flock<File>, OpenError> {
    let path = dir.join("LOCK");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| OpenError::DataDir {
            path: path.display().to_string(),
            source,
        })?;
    Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|_| OpenError::Locked {
        path: dir.display().to_string(),
    })
}

impl Storage {
    /// Opens the data directory: lock, snapshot, log replay, preload of an empty index; then
    /// starts the writer. Blocking: call it from a blocking context.
    pub fn open(options: impl Into<Options>, policy: SnapshotPolicy) -> Result<Self, OpenError> {
        let options = options.into();
        let dir = options.data_dir.clone();
        std::fs::create_dir_all(&dir).map_err(|source| OpenError::DataDir {
            path: dir.display().to_string(),
            source,
        })?;
        let lock = lock(&dir)?;
        // A dataset to preload is checked against the index's shape before anything else.
        let dataset = options
            .preload_from
            .as_deref()
            .map(|path| recovery::open_dataset(path, options.shape))
            .transpose()?;
        let started = Instant::now();
        let engine = Arc::new(recovery::open_engine(&options)?);
        let (mut wal, replay) = Wal::open(&dir.join("wal"), engine.sequence())?;
        let replayed = replay.records.len();
        for (sequence, record) in &replay.records {
            engine.apply(*sequence, record).map_err(OpenError::Replay)?;
        }
        if replayed > 0 || replay.truncated {
            tracing::info!(
                records = replayed,
                truncated = replay.truncated,
                sequence = engine.sequence(),
                elapsed = ?started.elapsed(),
                "replayed the write-ahead log"
            );
        }
        if let Some(dataset) = dataset.filter(|_| engine.is_empty() && replayed == 0) {
            tracing::info!(points = dataset.points(), "preloading a dataset");
            let points = dataset.read_points()?.into_iter();
            for reader in points {
                engine.preload_from(reader)?;
            }
            snapshot::save(&engine, &dir)?;
            wal.restart_after(engine.sequence())?;
            tracing::info!(points = engine.len(), elapsed = ?started.elapsed(), "preloaded");
        } else if engine.is_empty() && replayed == 0 && options.preload > 0 {
            tracing::info!(points = options.preload, "preloading synthetic data");
            engine
                .preload(options.preload, options.preload_seed)
                .map_err(OpenError::Replay)?;
            snapshot::save(&engine, &dir)?;
            wal.restart_after(engine.sequence())?;
        }
        let durable = Arc::new(AtomicU64::new(
            engine.sequence().max(wal.next_sequence() - 1),
        ));
        let stop = Arc::new(AtomicBool::new(false));
        let mut indexers = Vec::with_capacity(engine.indexers());
        for n in 0..engine.indexers() {
            let (engine, stop) = (Arc::clone(&engine), Arc::clone(&stop));
            let indexer = std::thread::Builder::new()
                .name(format!("vecrig-indexer-{n}"))
                .spawn(move || {
                    crate::priority::as_index_work();
                    engine.run_indexer(&stop)
                })
                .map_err(|source| OpenError::DataDir {
                    path: "indexer thread".into(),
                    source,
                })?;
            indexers.push(indexer);
        }
        let (queue, pending) = mpsc::channel();
        let writer = {
            let (engine, durable, dir) = (Arc::clone(&engine), Arc::clone(&durable), dir.clone());
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name("vecrig-writer".into())
                .spawn(move || {
                    crate::priority::as_index_work();
                    write_loop(&engine, &dir, wal, &pending, &durable, policy, &stop)
                })
                .map_err(|source| OpenError::DataDir {
                    path: "writer thread".into(),
                    source,
                })?
        };
        Ok(Self {
            engine,
            durable,
            queue: Mutex::new(Some(queue)),
            writer: Mutex::new(Some(writer)),
            stop,
            indexers: Mutex::new(indexers),
            dir,
            _lock: lock,
        })
    }

    /// The in-memory index, for searches and reads.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// Sequence number of the last write on disk.
    pub fn durable_sequence(&self) -> u64 {
        self.durable.load(Ordering::Acquire)
    }

    /// Upserts points; answers once durable and visible to searches. `wait` (the wire's
    /// promise of visibility) is kept by every upsert now, so it changes nothing.
    pub async fn upsert(&self, points: Vec<NewPoint>, wait: bool) -> Result<Applied, Error> {
        let _ = wait;
        let engine = Arc::clone(&self.engine);
        let record = tokio::task::spawn_blocking(move || {
            let _work = crate::cpu::IndexWork::begin();
            engine.prepare(points)
        })
        .await
        .map_err(|e| Error::Worker(e.to_string()))?;
        self.submit(record).await
    }

    /// Deletes ids; answers once durable and applied.
    pub async fn delete(&self, ids: Vec<u64>) -> Result<Applied, Error> {
        self.submit(Record::Delete(ids)).await
    }

    async fn submit(&self, record: Record) -> Result<Applied, Error> {
        let (reply, answer) = oneshot::channel();
        let queue = self
            .queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| Error::Unavailable("server is shutting down".into()))?;
        queue
            .send(Pending { record, reply })
            .map_err(|_| Error::Unavailable("server is shutting down".into()))?;
        answer
            .await
            .map_err(|_| Error::Unavailable("the writer stopped before answering".into()))?
    }

    /// Stops taking writes, lets the writer finish what it has, stops the indexer, and takes
    /// a final snapshot (whose graph may lack the tail: the next start indexes it). Blocking.
    pub fn close(&self) -> Result<(), SnapshotError> {
        drop(self.queue.lock().unwrap_or_else(|p| p.into_inner()).take());
        let writer = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
        let writer = writer.map(|w| w.join());
        self.stop_indexer();
        match writer {
            Some(Ok(mut wal)) => snapshot(&self.engine, &self.dir, &mut wal),
            Some(Err(_)) => Err(SnapshotError::Corrupt {
                path: PathBuf::from("writer thread"),
                reason: "the writer thread panicked".into(),
            }),
            None => Ok(()),
        }
    }
}

impl Storage {
    /// Stops the indexer threads and waits for them (each finishes the point it is inserting).
    fn stop_indexer(&self) {
        self.stop.store(true, Ordering::Release);
        let indexers =
            std::mem::take(&mut *self.indexers.lock().unwrap_or_else(|p| p.into_inner()));
        for indexer in indexers {
            if indexer.join().is_err() {
                tracing::error!("an indexer thread panicked");
            }
        }
    }
}

impl Drop for Storage {
    fn drop(&mut self) {
        // Dropped without close (a failed start, a test playing crash): the writer finishes
        // what it has and stops; no snapshot, so the next start replays the log, as after a
        // crash. The stop flag also releases a writer waiting for tail room.
        drop(self.queue.lock().unwrap_or_else(|p| p.into_inner()).take());
        self.stop.store(true, Ordering::Release);
    }
}

/// The writer thread: group commits, in-order application, snapshots. Returns the log when
/// the queue closes, for the final snapshot.
fn write_loop(
    engine: &Engine,
    dir: &Path,
    mut wal: Wal,
    pending: &mpsc::Receiver<Pending>,
    durable: &AtomicU64,
    policy: SnapshotPolicy,
    stop: &AtomicBool,
) -> Wal {
    let mut last_snapshot = Instant::now();
    let mut logged_at_snapshot = wal.appended_bytes();
    // After a failed append the directory may have lost files (removed, wiped): once writing
    // works again, a snapshot re-establishes a complete copy on disk.
    let mut snapshot_due = false;
    while let Ok(first) = pending.recv() {
        let _work = crate::cpu::IndexWork::begin();
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match pending.try_recv() {
                Ok(next) => group.push(next),
                Err(_) => break,
            }
        }
        let records: Vec<&Record> = group.iter().map(|p| &p.record).collect();
        let first_sequence = match wal.append(&records) {
            Ok(sequence) => sequence,
            Err(e) => {
                tracing::error!(error = %e, "write-ahead log append failed; refusing these writes");
                for p in group {
                    let _ = p.reply.send(Err(Error::Unavailable(format!(
                        "cannot write to the data directory: {e}"
                    ))));
                }
                snapshot_due = true;
                continue;
            }
        };
        durable.store(first_sequence + group.len() as u64 - 1, Ordering::Release);
        // Durable now. Applying costs no graph insert (the tail takes the points), so every
        // write is answered once applied: acknowledged means searchable, `wait` or not.
        for (i, p) in group.into_iter().enumerate() {
            let sequence = first_sequence + i as u64;
            if matches!(p.record, Record::Upsert(_)) {
                engine.wait_for_room(stop);
            }
            let result = engine
                .apply(sequence, &p.record)
                .map(|touched| Applied { sequence, touched });
            if let Err(e) = &result {
                tracing::error!(sequence, error = %e, "applying a logged write failed");
            }
            let _ = p.reply.send(result);
        }
        let logged = wal.appended_bytes() - logged_at_snapshot;
        if snapshot_due
            || logged >= policy.wal_bytes
            || (logged > 0 && last_snapshot.elapsed() >= policy.interval)
        {
            match snapshot(engine, dir, &mut wal) {
                Ok(()) => {
                    last_snapshot = Instant::now();
                    logged_at_snapshot = wal.appended_bytes();
                    snapshot_due = false;
                }
                // The log still holds everything; try again after the next batch.
                Err(e) => tracing::warn!(error = %e, "snapshot failed; keeping the log"),
            }
        }
    }
    wal
}

fn snapshot(engine: &Engine, dir: &Path, wal: &mut Wal) -> Result<(), SnapshotError> {
    let started = Instant::now();
    snapshot::save(engine, dir)?;
    let removed = wal
        .remove_covered(engine.sequence())
        .map_err(|e| SnapshotError::Corrupt {
            path: dir.join("wal"),
            reason: e.to_string(),
        })?;
    tracing::info!(
        sequence = engine.sequence(),
        points = engine.len(),
        segments_removed = removed,
        elapsed = ?started.elapsed(),
        "snapshot taken"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::engine::PointData;
    use crate::index::store::Payload;

    fn point(id: u64) -> NewPoint {
        NewPoint {
            id,
            data: PointData::Vector(vec![id as f32 + 1.0, 1.0, 0.5, -2.0]),
            payload: Payload::from([("id".to_string(), id.to_string())]),
        }
    }

    /// A log left by a crash under another `--dimensions`, before any snapshot: start-up
    /// refuses it with an error naming the point, instead of panicking while replaying it.
    #[test]
    fn replaying_a_log_of_another_width_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut wal, _) = Wal::open(&dir.path().join("wal"), 0).expect("wal");
        let four_wide = Record::Upsert(vec![(7, vec![1.0, 2.0, 3.0, 4.0], Payload::new())]);
        wal.append(&[&four_wide]).expect("append");
        drop(wal);
        match Storage::open(&Config::new(dir.path(), 3), SnapshotPolicy::default()) {
            Err(OpenError::Replay(Error::InvalidArgument { field, .. })) => {
                assert_eq!(field, "point 7")
            }
            other => panic!("expected a replay error, got {other:?}"),
        }
    }

    /// Directions spread over the sphere, so each point is its own vector's only nearest.
    fn spread(id: u64) -> Vec<f32> {
        let x = id as f32;
        vec![x.sin(), x.cos(), (2.3 * x).sin(), (1.7 * x).cos()]
    }

    fn by_vector(vector: Vec<f32>) -> crate::engine::Search {
        crate::engine::Search {
            query: crate::engine::Query::Vector(vector),
            k: 1,
            ef: None,
            exact: false,
            with_payload: false,
        }
    }

    /// Acknowledged without `wait` while the indexer is behind: found by its own vector at
    /// once; after a crash with points only in the tail (and the log), all of them are back,
    /// searchable at once, and the indexer takes them into the graph after the restart.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_acknowledged_point_is_found_at_once_and_survives_a_crash_from_the_tail() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = Config::new(dir.path(), 4);
        let open = |config: Config| {
            tokio::task::spawn_blocking(move || Storage::open(&config, SnapshotPolicy::default()))
        };
        let storage = open(config.clone()).await.expect("task").expect("open");
        let mut in_tail_at_some_ack = false;
        for batch in 0..20u64 {
            let points: Vec<NewPoint> = (0..100)
                .map(|i| NewPoint {
                    id: batch * 100 + i,
                    data: PointData::Vector(spread(batch * 100 + i)),
                    payload: Payload::new(),
                })
                .collect();
            storage.upsert(points, false).await.expect("upsert");
            in_tail_at_some_ack |= storage.engine().tail_len() > 0;
            let id = batch * 100 + 99;
            let vector = spread(id);
            let hits = storage
                .engine()
                .search(by_vector(vector))
                .await
                .expect("search");
            assert_eq!(
                hits[0].id, id,
                "found by its own vector right after the ack"
            );
        }
        assert!(in_tail_at_some_ack, "the acks ran ahead of the indexer");
        // Play crash: no final snapshot; the log and the tail are all there is.
        let writer = storage.writer.lock().expect("lock").take().expect("writer");
        drop(storage);
        drop(writer.join().expect("writer stops"));
        let reopened = open(config).await.expect("task").expect("reopen");
        let engine = Arc::clone(reopened.engine());
        assert_eq!(engine.len(), 2000);
        for id in [0, 777, 1999] {
            let vector = spread(id);
            let hits = engine.search(by_vector(vector)).await.expect("search");
            assert_eq!(hits[0].id, id);
        }
        let started = Instant::now();
        while engine.tail_len() > 0 {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "indexed after restart"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        reopened.close().expect("close");
    }

    /// Many writers at once: every acknowledged write gets its own sequence number, group
    /// commits share syncs, and all of it is there after a reopen that replays the log only.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writers_are_all_durable_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = Config::new(dir.path(), 4);
        let storage = Arc::new(
            tokio::task::spawn_blocking({
                let config = config.clone();
                move || Storage::open(&config, SnapshotPolicy::default())
            })
            .await
            .expect("task")
            .expect("open"),
        );
        let mut tasks = Vec::new();
        for writer in 0..16u64 {
            let storage = Arc::clone(&storage);
            tasks.push(tokio::spawn(async move {
                let mut sequences = Vec::new();
                for i in 0..25u64 {
                    let id = writer * 1000 + i;
                    let applied = storage
                        .upsert(vec![point(id)], i % 2 == 0)
                        .await
                        .expect("upsert");
                    assert_eq!(applied.touched, 1);
                    sequences.push(applied.sequence);
                }
                let deleted = storage
                    .delete(vec![writer * 1000, 999_999])
                    .await
                    .expect("delete");
                assert_eq!(deleted.touched, 1);
                sequences.push(deleted.sequence);
                sequences
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            let mine = t.await.expect("writer");
            assert!(
                mine.windows(2).all(|w| w[0] < w[1]),
                "one writer's sequences increase"
            );
            all.extend(mine);
        }
        all.sort_unstable();
        all.dedup();
        assert_eq!(
            all.len(),
            16 * 26,
            "every write has its own sequence number"
        );
        assert_eq!(storage.durable_sequence(), 16 * 26);
        // Play crash: dropped without close, so no final snapshot; the log carries it all.
        let writer = storage.writer.lock().expect("lock").take().expect("writer");
        drop(storage);
        drop(writer.join().expect("writer stops"));
        assert!(
            !dir.path()
                .join(crate::storage::snapshot::POINTS_FILE)
                .exists()
        );
        let reopened =
            tokio::task::spawn_blocking(move || Storage::open(&config, SnapshotPolicy::default()))
                .await
                .expect("task")
                .expect("reopen");
        let engine = reopened.engine();
        assert_eq!(engine.len(), 16 * 24);
        for writer in 0..16u64 {
            assert!(engine.get(writer * 1000).is_err(), "deleted stays deleted");
            let p = engine.get(writer * 1000 + 24).expect("present");
            assert_eq!(
                p.vector,
                vec![(writer * 1000 + 24) as f32 + 1.0, 1.0, 0.5, -2.0]
            );
        }
        reopened.close().expect("close");
    }
}

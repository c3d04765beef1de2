//! The write path: points prepared into logged records, applied in sequence order to the
//! store and the tail, and writers held while the tail is full.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::state::Engine;
use super::types::{NewPoint, PointData, Record};
use crate::error::Error;
use crate::index::store::Payload;

impl Engine {
    /// Blocks while the tail is full, until the indexer makes room or `stop` is set. The
    /// storage writer calls it before applying an upsert, so writers wait instead of the
    /// tail (and every search's scan of it) growing without bound.
    pub fn wait_for_room(&self, stop: &AtomicBool) {
        let mut signal = self.tail_signal.lock().unwrap_or_else(|p| p.into_inner());
        while self.tail_len() >= self.tail_limit && !stop.load(Ordering::Acquire) {
            // Timed: a signal sent between the check and the wait is not lost for long.
            signal = self
                .tail_changed
                .wait_timeout(signal, Duration::from_millis(10))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Turns validated points into what the log records: text embedded, vectors as indexed.
    /// Blocking (embedding long texts costs real CPU): call it from a blocking context.
    pub fn prepare(&self, points: Vec<NewPoint>) -> Record {
        Record::Upsert(
            points
                .into_iter()
                .map(|p| {
                    let vector = match p.data {
                        PointData::Vector(v) => v,
                        PointData::Text(t) => self.embedder.embed(&t),
                    };
                    (p.id, vector, p.payload)
                })
                .collect(),
        )
    }

    /// Applies one logged write at `sequence`; returns how many points it touched (for a
    /// delete: how many of its ids existed). Writes must be applied in sequence order, by one
    /// writer at a time (the storage writer, or recovery).
    pub fn apply(&self, sequence: u64, record: &Record) -> Result<usize, Error> {
        // Requests are validated, so only a log written under other `--dimensions` (a crash
        // before any snapshot, then a restart with a new width) gets here with another width:
        // refuse the record whole, before touching the index, instead of panicking in the store.
        if let Record::Upsert(points) = record
            && let Some((id, vector, _)) = points
                .iter()
                .find(|(_, vector, _)| vector.len() != self.shape.dimensions)
        {
            return Err(Error::invalid(
                format!("point {id}"),
                format!(
                    "has {} values, the index has {} dimensions",
                    vector.len(),
                    self.shape.dimensions
                ),
            ));
        }
        let _writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let touched = {
            // Store and tail change under both locks, so a search sees a point in both or in
            // neither. The graph is left to the indexer.
            let mut store = self
                .store
                .write()
                .map_err(|_| Error::Worker("point store lock poisoned".into()))?;
            let mut tail = self.tail_write()?;
            match record {
                Record::Upsert(points) => {
                    for (id, vector, payload) in points {
                        // Stored and not in the tail: the graph holds its older vector.
                        let in_graph = store.contains(*id) && !tail.contains(*id);
                        store.upsert(*id, vector, payload.clone());
                        tail.upsert(*id, vector, in_graph);
                    }
                    points.len()
                }
                Record::Delete(ids) => {
                    let mut deleted = 0;
                    for &id in ids {
                        if store.remove(id) {
                            let in_graph = !tail.contains(id);
                            tail.delete(id, in_graph);
                            deleted += 1;
                        }
                    }
                    deleted
                }
            }
        };
        self.signal_tail();
        self.sequence.fetch_max(sequence, Ordering::AcqRel);
        Ok(touched)
    }

    /// Fills the index with `count` synthetic points (ids `0..count`) from the seeded
    /// distribution shared with the loadgen, in batches, bypassing the log: the caller must
    /// snapshot afterwards. Blocking.
    pub fn preload(&self, count: u64, seed: u64) -> Result<(), Error> {
        let data = vecrig::synthetic::Synthetic::new(
            self.shape.dimensions,
            vecrig::synthetic::Synthetic::DEFAULT_CLUSTERS,
            seed,
        );
        let mut batch = Vec::with_capacity(1024);
        for id in 0..count {
            let p = data.point(id);
            batch.push((
                id,
                p.vector,
                Payload::from([
                    ("text".to_string(), p.text),
                    ("cluster".to_string(), p.cluster.to_string()),
                ]),
            ));
            if batch.len() == 1024 || id + 1 == count {
                // Not logged: the caller snapshots right after, which makes it durable.
                let sequence = self.sequence() + 1;
                self.apply(sequence, &Record::Upsert(std::mem::take(&mut batch)))?;
                self.index_all()?;
            }
        }
        Ok(())
    }

    /// Fills the index with the points `reader` streams, a batch at a time, ids as the file
    /// gives them; not logged, as [`preload`](Self::preload).
    pub fn preload_from(
        &self,
        mut reader: Box<dyn vecrig::dataset::PointReader>,
    ) -> Result<(), PreloadError> {
        let dimensions = self.shape.dimensions;
        let mut read = vecrig::dataset::Batch::default();
        loop {
            reader.next_batch(1024, &mut read)?;
            if read.is_empty() {
                return Ok(());
            }
            let batch = read
                .ids
                .iter()
                .zip(read.vectors.chunks_exact(dimensions))
                .map(|(&id, vector)| (id, vector.to_vec(), Payload::default()))
                .collect();
            let sequence = self.sequence() + 1;
            self.apply(sequence, &Record::Upsert(batch))?;
            self.index_all()?;
        }
    }
}

/// Why a dataset preload stopped.
#[derive(Debug, thiserror::Error)]
pub enum PreloadError {
    /// The file could not be read through.
    #[error(transparent)]
    Dataset(#[from] vecrig::dataset::Error),
    /// The index refused a point.
    #[error(transparent)]
    Index(#[from] Error),
}

//! ann-benchmarks' HDF5 files: datasets `train` and `test` (float32 rows), `neighbors` (int32
//! rows, nearest first), `distances`, and the root attribute `distance` (`euclidean`,
//! `angular`, `dot`).
//!
//! Read with `hdf5-pure`, a reader in Rust alone: no libhdf5, no C build. The file is opened
//! for streaming reads (metadata and the rows asked for, never the whole file), and the train
//! set is read a window of rows at a time.

use std::path::{Path, PathBuf};

use hdf5_pure::File;

use crate::dataset::error::{Problem, Result};
use crate::dataset::rows::{Batch, Matrix, Metric, Parts, PointReader, corrupt, fail};

fn shape(path: &Path, dataset: &hdf5_pure::Dataset, name: &str) -> Result<(u64, usize)> {
    let shape = dataset.shape().map_err(|e| corrupt(path, e))?;
    match shape[..] {
        [rows, width] => Ok((rows, width as usize)),
        _ => Err(corrupt(path, format!("{name} is not 2-D: shape {shape:?}"))),
    }
}

/// Streams the `train` dataset; ids are row numbers.
pub struct Points {
    path: PathBuf,
    dataset: hdf5_pure::Dataset,
    rows: u64,
    width: usize,
    next: u64,
}

impl PointReader for Points {
    fn len(&self) -> u64 {
        self.rows
    }

    fn dimensions(&self) -> usize {
        self.width
    }

    fn next_batch(&mut self, max: usize, batch: &mut Batch) -> Result<()> {
        batch.ids.clear();
        let count = (max as u64).min(self.rows - self.next);
        batch.vectors = if count == 0 {
            Vec::new()
        } else {
            self.dataset
                .read_f32_rows(self.next, count)
                .map_err(|e| corrupt(&self.path, e))?
        };
        if batch.vectors.len() as u64 != count * self.width as u64 {
            return Err(corrupt(&self.path, "train rows shorter than their shape"));
        }
        batch.ids.extend(self.next..self.next + count);
        self.next += count;
        Ok(())
    }
}

/// Opens an ann-benchmarks file: the train set streamed, the queries and neighbours read whole.
pub fn open(path: &Path) -> Result<Parts> {
    let file = File::open_streaming(path).map_err(|e| match e {
        hdf5_pure::Error::Io(e) => fail(path, Problem::Io(e)),
        e => corrupt(path, e),
    })?;
    let mut parts = Parts::empty();
    let attrs = file.root().attrs().map_err(|e| corrupt(path, e))?;
    if let Some(name) = attrs.get("distance").and_then(|v| v.as_str()) {
        parts.metric = Some(
            Metric::parse(name).ok_or_else(|| fail(path, Problem::UnknownMetric(name.into())))?,
        );
    }
    if let Ok(dataset) = file.dataset("train") {
        let (rows, width) = shape(path, &dataset, "train")?;
        // The last row read now: a file cut short fails here, before any load.
        if rows > 0 {
            let last = dataset
                .read_f32_rows(rows - 1, 1)
                .map_err(|e| corrupt(path, e))?;
            if last.len() != width {
                return Err(corrupt(path, "the last train row is incomplete"));
            }
        }
        parts.train = Some(Box::new(Points {
            path: path.to_path_buf(),
            dataset,
            rows,
            width,
            next: 0,
        }));
    }
    if let Ok(dataset) = file.dataset("test") {
        let (rows, width) = shape(path, &dataset, "test")?;
        let values = if rows == 0 {
            Vec::new()
        } else {
            dataset
                .read_f32_rows(0, rows)
                .map_err(|e| corrupt(path, e))?
        };
        parts.test = Some(Matrix { width, values });
    }
    if let Ok(dataset) = file.dataset("neighbors") {
        let (rows, width) = shape(path, &dataset, "neighbors")?;
        let values = if rows == 0 {
            Vec::new()
        } else {
            dataset
                .read_i64_rows(0, rows)
                .map_err(|e| corrupt(path, e))?
        };
        parts.neighbors = Some(Matrix { width, values });
    }
    Ok(parts)
}

//! The shapes every format reads into: a metric, an in-memory matrix (queries, neighbours) and
//! a streamed reader of the train points, which are never held whole.

use std::path::{Path, PathBuf};

use crate::dataset::error::{Error, Problem, Result};

/// How a dataset ranks neighbours (ann-benchmarks' `distance` attribute).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    /// Euclidean distance, nearest first.
    L2,
    /// Cosine similarity (ann-benchmarks' `angular`), highest first.
    Cosine,
    /// Inner product, highest first.
    Ip,
}

impl Metric {
    /// The metric a file names: ann-benchmarks' `euclidean`, `angular`, `dot`, or ours.
    pub fn parse(name: &str) -> Option<Self> {
        match name.trim().to_ascii_lowercase().as_str() {
            "euclidean" | "l2" => Some(Self::L2),
            "angular" | "cosine" => Some(Self::Cosine),
            "dot" | "ip" | "inner_product" => Some(Self::Ip),
            _ => None,
        }
    }

    /// The name vecrig's flags and scenario files use.
    pub fn name(self) -> &'static str {
        match self {
            Self::L2 => "l2",
            Self::Cosine => "cosine",
            Self::Ip => "ip",
        }
    }
}

/// A row-major matrix held in memory: queries (f32) or neighbour ids (i64).
#[derive(Debug, Clone, PartialEq)]
pub struct Matrix<T> {
    /// Values per row.
    pub width: usize,
    /// `rows x width` values, row after row.
    pub values: Vec<T>,
}

impl<T> Matrix<T> {
    /// Rows held.
    pub fn rows(&self) -> usize {
        self.values.len().checked_div(self.width).unwrap_or(0)
    }

    /// Row `i`.
    pub fn row(&self, i: usize) -> &[T] {
        &self.values[i * self.width..(i + 1) * self.width]
    }
}

/// A batch of train points read from a file: their ids and their vectors, row after row.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Batch {
    /// One id per point: the row number, or the file's own `id` column.
    pub ids: Vec<u64>,
    /// `ids.len() x dimensions` values.
    pub vectors: Vec<f32>,
}

impl Batch {
    /// Points in the batch.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether the batch has no point.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// Reads the train points of one file in order, a batch at a time, from the first row on.
pub trait PointReader: Send {
    /// Points in the file.
    fn len(&self) -> u64;
    /// Whether the file holds no point.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Values per point.
    fn dimensions(&self) -> usize;
    /// Replaces `batch` with the next `max` points at most; empty past the end.
    fn next_batch(&mut self, max: usize, batch: &mut Batch) -> Result<()>;
}

/// What one file yields: its parts that are present.
pub struct Parts {
    /// The train points, streamed.
    pub train: Option<Box<dyn PointReader>>,
    /// The test queries.
    pub test: Option<Matrix<f32>>,
    /// The ground-truth neighbours, one row per query, nearest first.
    pub neighbors: Option<Matrix<i64>>,
    /// The metric the file names, if it names one.
    pub metric: Option<Metric>,
}

impl Parts {
    /// Nothing yet.
    pub fn empty() -> Self {
        Self {
            train: None,
            test: None,
            neighbors: None,
            metric: None,
        }
    }
}

/// An error in the file at `path`.
pub fn fail(path: &Path, problem: Problem) -> Error {
    Error::new(path, problem)
}

/// The file at `path` does not hold what its format says: `what` is how.
pub fn corrupt(path: &Path, what: impl std::fmt::Display) -> Error {
    Error::new(path, Problem::Corrupt(what.to_string()))
}

/// An I/O error in the file at `path`.
pub fn io(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |e| Error::new(path, Problem::Io(e))
}

/// The bytes of a file, or its error.
pub fn file_len(path: &Path) -> Result<u64> {
    Ok(std::fs::metadata(path).map_err(io(path))?.len())
}

/// A path kept by a reader for its errors.
pub type Named = PathBuf;

//! What can be wrong with a dataset file: one error type, shown as one line that names the
//! file and the problem, so a bad input stops a run before any load.

use std::path::{Path, PathBuf};

/// A dataset file that cannot be used, and why.
#[derive(Debug, thiserror::Error)]
#[error("dataset {}: {problem}", path.display())]
pub struct Error {
    /// The file at fault.
    pub path: PathBuf,
    /// What is wrong with it.
    pub problem: Problem,
}

impl Error {
    /// `problem` in the file at `path`.
    pub fn new(path: &Path, problem: Problem) -> Self {
        Self {
            path: path.to_path_buf(),
            problem,
        }
    }
}

/// What is wrong with a dataset file.
#[derive(Debug, thiserror::Error)]
pub enum Problem {
    /// The file could not be opened or read.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The file's name says no format the rig reads.
    #[error(
        "unknown format (expected .fvecs, .bvecs, .ivecs, .npy, .parquet, .hdf5/.h5 or a directory of parquet files)"
    )]
    UnknownFormat,
    /// The file ends before the rows its header or its first row announce.
    #[error("truncated: {expected} bytes expected, {got} found")]
    Truncated {
        /// Bytes the header or row size call for.
        expected: u64,
        /// Bytes in the file.
        got: u64,
    },
    /// The bytes are not what the format says they should be.
    #[error("corrupt: {0}")]
    Corrupt(String),
    /// A part that a run needs is not in the file.
    #[error("no {0} in the file")]
    Missing(&'static str),
    /// Vectors of another width than expected (another part of the dataset, or the target).
    #[error("{what} has {got} dimensions, {expected} expected")]
    DimensionMismatch {
        /// Which vectors.
        what: &'static str,
        /// The width expected.
        expected: usize,
        /// The width found.
        got: usize,
    },
    /// A ground-truth neighbour that is not a point of the train set.
    #[error("neighbour {id} of query {query} is past the train set ({train} points)")]
    NeighborOutOfRange {
        /// The query's row.
        query: usize,
        /// The id it names.
        id: i64,
        /// Points in the train set.
        train: u64,
    },
    /// As many neighbour rows as queries are needed.
    #[error("{neighbors} rows of neighbours for {queries} queries")]
    NeighborRows {
        /// Rows of neighbours.
        neighbors: usize,
        /// Rows of queries.
        queries: usize,
    },
    /// A metric name the rig does not know.
    #[error("unknown distance '{0}' (expected euclidean/l2, angular/cosine or dot/ip)")]
    UnknownMetric(String),
}

/// `Result` of reading a dataset.
pub type Result<T> = std::result::Result<T, Error>;

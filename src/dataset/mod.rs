//! Datasets from the files people already have: the points to ingest, the queries to send and
//! their ground-truth neighbours, so a run measures a service on a team's own data.
//!
//! One file per format, each turning its file into the shapes of [`rows`]:
//! - [`texmex`]: `.fvecs`, `.bvecs`, `.ivecs` (SIFT, GIST);
//! - [`npy`]: NumPy `.npy`, 2-D float vectors or integer neighbour ids;
//! - [`vectordbbench`]: VectorDBBench's parquet (`train`, `test`, `neighbors`);
//! - [`ann_benchmarks`]: ann-benchmarks' HDF5 (`train`, `test`, `neighbors`, `distance`);
//! - [`texts`]: query texts for the text workloads (lines, or a parquet column).
//!
//! Train points are streamed ([`PointReader`]), never held whole; queries and neighbours,
//! which are small beside them, are read whole. [`Dataset::open`] checks what can be checked
//! without reading the train set through (shapes, lengths, that queries and points have one
//! width, that every neighbour is a train point), so a bad file fails before any load, with
//! one line naming it.

pub mod ann_benchmarks;
pub mod error;
pub mod npy;
pub mod rows;
pub mod texmex;
pub mod texts;
pub mod vectordbbench;

use std::path::{Path, PathBuf};

pub use error::{Error, Problem, Result};
pub use rows::{Batch, Matrix, Metric, PointReader};

use rows::{Parts, fail};
use texmex::Element;

/// The files a dataset is read from: one file holding every part (HDF5, a VectorDBBench
/// directory), or one per part.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sources {
    /// The train points, or every part (an HDF5 file, a VectorDBBench directory).
    pub dataset: Option<PathBuf>,
    /// The test queries, when not in `dataset`.
    pub queries: Option<PathBuf>,
    /// The ground-truth neighbours, when not in `dataset`.
    pub neighbors: Option<PathBuf>,
}

impl Sources {
    /// Whether any file is named.
    pub fn is_empty(&self) -> bool {
        self.dataset.is_none() && self.queries.is_none() && self.neighbors.is_none()
    }
}

/// The format of a file, from its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Texmex(Element),
    Npy,
    Parquet,
    ParquetDir,
    Hdf5,
}

impl Format {
    fn of(path: &Path) -> Result<Self> {
        if path.is_dir() {
            return Ok(Self::ParquetDir);
        }
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or("")
            .to_ascii_lowercase();
        match ext.as_str() {
            "fvecs" => Ok(Self::Texmex(Element::F32)),
            "bvecs" => Ok(Self::Texmex(Element::U8)),
            "ivecs" => Ok(Self::Texmex(Element::I32)),
            "npy" => Ok(Self::Npy),
            "parquet" => Ok(Self::Parquet),
            "hdf5" | "h5" => Ok(Self::Hdf5),
            _ if !path.exists() => Err(fail(
                path,
                Problem::Io(std::io::Error::from(std::io::ErrorKind::NotFound)),
            )),
            _ => Err(fail(path, Problem::UnknownFormat)),
        }
    }
}

/// Where the train points are, so they can be read through more than once (ingest, and the
/// exact answer where the file has no neighbours).
#[derive(Debug, Clone, PartialEq)]
enum Train {
    Texmex(PathBuf, Element),
    Npy(PathBuf),
    Parquet(Vec<PathBuf>),
    Hdf5(PathBuf),
}

/// A dataset, checked: its train points (streamed on demand), queries, neighbours and metric.
#[derive(Debug)]
pub struct Dataset {
    train: Option<Train>,
    points: u64,
    dimensions: usize,
    /// The test queries, if any file holds them.
    pub queries: Option<Matrix<f32>>,
    /// The ground-truth neighbours of each query, nearest first, if any file holds them.
    pub neighbors: Option<Matrix<i64>>,
    /// The metric the file names (ann-benchmarks' `distance`).
    pub metric: Option<Metric>,
}

fn open_train(train: &Train) -> Result<Box<dyn PointReader>> {
    Ok(match train {
        Train::Texmex(path, element) => Box::new(texmex::Points::open(path, *element)?),
        Train::Npy(path) => Box::new(npy::Points::open(path)?),
        Train::Parquet(files) => Box::new(vectordbbench::Points::open(files.clone())?),
        Train::Hdf5(path) => ann_benchmarks::open(path)?
            .train
            .ok_or_else(|| fail(path, Problem::Missing("train dataset")))?,
    })
}

fn read_queries(path: &Path) -> Result<Matrix<f32>> {
    match Format::of(path)? {
        Format::Texmex(Element::I32) => Err(fail(
            path,
            Problem::Corrupt("an .ivecs file holds neighbour ids, not queries".into()),
        )),
        Format::Texmex(element) => texmex::read_queries(path, element),
        Format::Npy => npy::read_queries(path),
        Format::Parquet => vectordbbench::read_queries(path),
        Format::ParquetDir | Format::Hdf5 => {
            let parts = parts_of(path)?;
            parts
                .test
                .ok_or_else(|| fail(path, Problem::Missing("test queries")))
        }
    }
}

fn read_neighbors(path: &Path) -> Result<Matrix<i64>> {
    match Format::of(path)? {
        Format::Texmex(Element::I32) => texmex::read_neighbors(path),
        Format::Texmex(_) => Err(fail(
            path,
            Problem::Corrupt("neighbour ids are read from .ivecs, not vectors".into()),
        )),
        Format::Npy => npy::read_neighbors(path),
        Format::Parquet => vectordbbench::read_neighbors(path),
        Format::ParquetDir | Format::Hdf5 => {
            let parts = parts_of(path)?;
            parts
                .neighbors
                .ok_or_else(|| fail(path, Problem::Missing("neighbors")))
        }
    }
}

/// Every part a multi-part file or directory holds.
fn parts_of(path: &Path) -> Result<Parts> {
    match Format::of(path)? {
        Format::Hdf5 => ann_benchmarks::open(path),
        Format::ParquetDir => {
            let mut parts = Parts::empty();
            let files = vectordbbench::train_files(path)?;
            if !files.is_empty() {
                parts.train = Some(Box::new(vectordbbench::Points::open(files)?));
            }
            let test = path.join("test.parquet");
            if test.exists() {
                parts.test = Some(vectordbbench::read_queries(&test)?);
            }
            let neighbors = path.join("neighbors.parquet");
            if neighbors.exists() {
                parts.neighbors = Some(vectordbbench::read_neighbors(&neighbors)?);
            }
            Ok(parts)
        }
        _ => Ok(Parts::empty()),
    }
}

impl Dataset {
    /// Opens and checks the files of `sources`: shapes, lengths, widths, and that every
    /// neighbour is a point of the train set. Reads queries and neighbours whole, train points
    /// not at all.
    pub fn open(sources: &Sources) -> Result<Self> {
        let mut dataset = Self {
            train: None,
            points: 0,
            dimensions: 0,
            queries: None,
            neighbors: None,
            metric: None,
        };
        let mut reader = None;
        if let Some(path) = &sources.dataset {
            let train = match Format::of(path)? {
                Format::Texmex(Element::I32) => {
                    return Err(fail(
                        path,
                        Problem::Corrupt("an .ivecs file holds neighbour ids, not points".into()),
                    ));
                }
                Format::Texmex(element) => Some(Train::Texmex(path.clone(), element)),
                Format::Npy => Some(Train::Npy(path.clone())),
                Format::Parquet => Some(Train::Parquet(vec![path.clone()])),
                Format::Hdf5 | Format::ParquetDir => {
                    let parts = parts_of(path)?;
                    dataset.queries = parts.test;
                    dataset.neighbors = parts.neighbors;
                    dataset.metric = parts.metric;
                    reader = parts.train;
                    match Format::of(path)? {
                        Format::Hdf5 if reader.is_some() => Some(Train::Hdf5(path.clone())),
                        Format::ParquetDir if reader.is_some() => {
                            Some(Train::Parquet(vectordbbench::train_files(path)?))
                        }
                        _ => None,
                    }
                }
            };
            let reader = match reader.take() {
                Some(reader) => reader,
                None => match &train {
                    Some(train) => open_train(train)?,
                    None => return Err(fail(path, Problem::Missing("train points"))),
                },
            };
            dataset.points = reader.len();
            dataset.dimensions = reader.dimensions();
            dataset.train = train;
        }
        if let Some(path) = &sources.queries {
            dataset.queries = Some(read_queries(path)?);
        }
        if let Some(path) = &sources.neighbors {
            dataset.neighbors = Some(read_neighbors(path)?);
        }
        dataset.check(sources)?;
        Ok(dataset)
    }

    fn check(&mut self, sources: &Sources) -> Result<()> {
        let named = |part: &Option<PathBuf>| {
            part.clone()
                .or_else(|| sources.dataset.clone())
                .unwrap_or_default()
        };
        if let Some(queries) = &self.queries {
            let path = named(&sources.queries);
            if self.train.is_some() && queries.width != self.dimensions {
                return Err(fail(
                    &path,
                    Problem::DimensionMismatch {
                        what: "the queries",
                        expected: self.dimensions,
                        got: queries.width,
                    },
                ));
            }
            if self.train.is_none() {
                self.dimensions = queries.width;
            }
        }
        if let Some(neighbors) = &self.neighbors {
            let path = named(&sources.neighbors);
            if let Some(queries) = &self.queries
                && neighbors.rows() != queries.rows()
            {
                return Err(fail(
                    &path,
                    Problem::NeighborRows {
                        neighbors: neighbors.rows(),
                        queries: queries.rows(),
                    },
                ));
            }
            if self.train.is_some()
                && let Some(at) = neighbors
                    .values
                    .iter()
                    .position(|&id| id < 0 || id as u64 >= self.points)
            {
                return Err(fail(
                    &path,
                    Problem::NeighborOutOfRange {
                        query: at / neighbors.width.max(1),
                        id: neighbors.values[at],
                        train: self.points,
                    },
                ));
            }
        }
        Ok(())
    }

    /// Points in the train set (0 without one).
    pub fn points(&self) -> u64 {
        self.points
    }

    /// Values per vector.
    pub fn dimensions(&self) -> usize {
        self.dimensions
    }

    /// Whether the dataset has train points to ingest.
    pub fn has_points(&self) -> bool {
        self.train.is_some()
    }

    /// A reader of the train points from the first, or `None` without a train set.
    pub fn read_points(&self) -> Result<Option<Box<dyn PointReader>>> {
        self.train.as_ref().map(open_train).transpose()
    }

    /// The first `k` ground-truth neighbours of query `i`, if the dataset has them.
    pub fn neighbors_of(&self, i: usize, k: usize) -> Option<&[i64]> {
        let neighbors = self.neighbors.as_ref()?;
        (i < neighbors.rows()).then(|| &neighbors.row(i)[..k.min(neighbors.width)])
    }

    /// Fails with the file named if the dataset's vectors are not `expected` wide.
    pub fn check_dimensions(&self, sources: &Sources, expected: usize) -> Result<()> {
        if self.dimensions != 0 && self.dimensions != expected {
            let path = sources
                .dataset
                .clone()
                .or_else(|| sources.queries.clone())
                .unwrap_or_default();
            return Err(fail(
                &path,
                Problem::DimensionMismatch {
                    what: "the dataset",
                    expected,
                    got: self.dimensions,
                },
            ));
        }
        Ok(())
    }
}

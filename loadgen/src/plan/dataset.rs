//! A dataset file as the source of a run (`--dataset`, or a scenario file's `[dataset]`): the
//! queries the searches send, in the file's order or sampled, cycling when the run is longer;
//! the points an ingest phase writes; and the ground truth recall is judged against.
//!
//! Opening the files checks them ([`vecrig::dataset::Dataset::open`]); [`Spec::open_for`] also
//! checks them against the target's dimensions and metric, before any load.

use std::path::PathBuf;
use std::sync::Arc;

use rand::Rng;
use vecrig::dataset::{self, Dataset, Matrix, Sources};

use crate::dynamic::Metric;

/// The order the dataset's queries are sent in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Order {
    /// Row after row, each user starting at its own row.
    #[default]
    File,
    /// A row drawn at random for each search (seeded).
    Sampled,
}

/// The files of a dataset and the order of its queries, as a scenario file's `[dataset]`
/// table or the command line name them.
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// The train points, or every part (an HDF5 file, a VectorDBBench directory).
    #[serde(alias = "train")]
    pub path: Option<PathBuf>,
    /// The test queries, when not in `path`.
    #[serde(alias = "test")]
    pub queries: Option<PathBuf>,
    /// The ground-truth neighbours, when not in `path`.
    pub neighbors: Option<PathBuf>,
    /// The order of the queries.
    #[serde(default)]
    pub order: Order,
}

impl Spec {
    /// The files, as the dataset reader takes them.
    pub fn sources(&self) -> Sources {
        Sources {
            dataset: self.path.clone(),
            queries: self.queries.clone(),
            neighbors: self.neighbors.clone(),
        }
    }

    /// Paths relative to `base` (a scenario file's directory) made whole.
    pub fn relative_to(mut self, base: &std::path::Path) -> Self {
        for path in [&mut self.path, &mut self.queries, &mut self.neighbors]
            .into_iter()
            .flatten()
        {
            if path.is_relative() {
                *path = base.join(&*path);
            }
        }
        self
    }

    /// Opens and checks the files, and checks them against a target of `dimensions` ranking
    /// by `metric` (when the target says).
    pub fn open_for(
        &self,
        dimensions: usize,
        metric: Option<Metric>,
    ) -> Result<Dataset, dataset::Error> {
        let sources = self.sources();
        let opened = Dataset::open(&sources)?;
        opened.check_dimensions(&sources, dimensions)?;
        if let (Some(file), Some(target)) = (opened.metric, metric) {
            let same = matches!(
                (file, target),
                (dataset::Metric::L2, Metric::L2)
                    | (dataset::Metric::Cosine, Metric::Cosine)
                    | (dataset::Metric::Ip, Metric::Ip)
            );
            if !same {
                let path = sources.dataset.clone().unwrap_or_default();
                return Err(dataset::Error::new(
                    &path,
                    dataset::Problem::Corrupt(format!(
                        "its distance is {}, the target's metric {target:?}",
                        file.name()
                    )),
                ));
            }
        }
        Ok(opened)
    }
}

/// The dataset's queries, as the searches send them.
#[derive(Debug, Clone, PartialEq)]
pub struct Queries {
    vectors: Arc<Matrix<f32>>,
    order: Order,
}

impl Queries {
    /// The queries of `dataset` in `order`; `None` without queries.
    pub fn of(dataset: &Dataset, order: Order) -> Option<Self> {
        let vectors = dataset.queries.clone().filter(|q| q.rows() > 0)?;
        Some(Self {
            vectors: Arc::new(vectors),
            order,
        })
    }

    /// Queries held.
    pub fn len(&self) -> usize {
        self.vectors.rows()
    }

    /// Whether there is none (never, once built).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The query request `i` of `user` (of `users`) sends: in file order, the users take the
    /// rows in turn; sampled, a row drawn from `rng`.
    pub fn pick(&self, user: u64, users: u64, i: u64, rng: &mut impl Rng) -> Vec<f32> {
        let rows = self.len() as u64;
        let row = match self.order {
            Order::File => (i.wrapping_mul(users.max(1)).wrapping_add(user)) % rows,
            Order::Sampled => rng.random_range(0..rows),
        };
        self.vectors.row(row as usize).to_vec()
    }
}

/// The command line's dataset flags (global, under "Load").
#[derive(Debug, Clone, Default, clap::Args)]
#[group(skip)]
pub struct Args {
    /// Dataset whose points, queries and neighbours the run uses: .fvecs, .bvecs, .npy,
    /// .parquet, .hdf5 (ann-benchmarks) or a VectorDBBench directory [default: none].
    #[arg(long = "dataset", env = "VECRIG_DATASET", global = true)]
    #[arg(help_heading = "Load")]
    pub path: Option<PathBuf>,
    /// The dataset's test queries, when not in --dataset (.fvecs, .bvecs, .npy, .parquet).
    #[arg(long, env = "VECRIG_QUERIES", global = true)]
    #[arg(help_heading = "Load")]
    pub queries: Option<PathBuf>,
    /// The queries' ground-truth neighbours, when not in --dataset (.ivecs, .npy, .parquet).
    #[arg(long, env = "VECRIG_NEIGHBORS", global = true)]
    #[arg(help_heading = "Load")]
    pub neighbors: Option<PathBuf>,
    /// The order the dataset's queries are sent in: file or sampled.
    #[arg(
        long = "dataset-order",
        value_enum,
        env = "VECRIG_DATASET_ORDER",
        default_value = "file",
        global = true
    )]
    #[arg(help_heading = "Load")]
    pub order: Order,
}

impl Args {
    /// The dataset the flags name, if any.
    pub fn spec(&self) -> Option<Spec> {
        let spec = Spec {
            path: self.path.clone(),
            queries: self.queries.clone(),
            neighbors: self.neighbors.clone(),
            order: self.order,
        };
        (!spec.sources().is_empty()).then_some(spec)
    }
}

//! A dataset file as the source of a run (`--dataset`, or a scenario file's `[dataset]`): the
//! queries the searches send, in the file's order or sampled, cycling when the run is longer
//! (and the texts the text searches send, `--query-texts`); the points an ingest phase writes;
//! and the ground truth recall is judged against.
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
    /// Texts for the text searches: one per line, or a parquet string column.
    pub query_texts: Option<PathBuf>,
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
        for path in [
            &mut self.path,
            &mut self.queries,
            &mut self.neighbors,
            &mut self.query_texts,
        ]
        .into_iter()
        .flatten()
        {
            if path.is_relative() {
                *path = base.join(&*path);
            }
        }
        self
    }

    /// Whether the spec names any file.
    pub fn is_empty(&self) -> bool {
        self.sources().is_empty() && self.query_texts.is_none()
    }

    /// What the searches send: the dataset's queries and the texts file's texts, in order.
    pub fn queries(&self, dataset: &Dataset) -> Result<Option<Queries>, dataset::Error> {
        let texts = self
            .query_texts
            .as_deref()
            .map(dataset::texts::read)
            .transpose()?
            .map(Arc::new);
        let vectors = dataset
            .queries
            .clone()
            .filter(|q| q.rows() > 0)
            .map(Arc::new);
        Ok((vectors.is_some() || texts.is_some()).then_some(Queries {
            vectors,
            texts,
            order: self.order,
        }))
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

/// The dataset's queries and texts, as the searches send them.
#[derive(Debug, Clone, PartialEq)]
pub struct Queries {
    vectors: Option<Arc<Matrix<f32>>>,
    texts: Option<Arc<Vec<String>>>,
    order: Order,
}

impl Queries {
    /// The row of `rows` that request `i` of `user` (of `users`) sends: in file order, the
    /// users take the rows in turn; sampled, a row drawn from `rng`.
    fn row(&self, rows: usize, user: u64, users: u64, i: u64, rng: &mut impl Rng) -> usize {
        let rows = rows.max(1) as u64;
        (match self.order {
            Order::File => i.wrapping_mul(users.max(1)).wrapping_add(user) % rows,
            Order::Sampled => rng.random_range(0..rows),
        }) as usize
    }

    /// The query vector request `i` of `user` sends, if the dataset has queries.
    pub fn vector(&self, user: u64, users: u64, i: u64, rng: &mut impl Rng) -> Option<Vec<f32>> {
        let vectors = self.vectors.as_ref()?;
        let row = self.row(vectors.rows(), user, users, i, rng);
        Some(vectors.row(row).to_vec())
    }

    /// The query text request `i` of `user` sends, if a texts file was given.
    pub fn text(&self, user: u64, users: u64, i: u64, rng: &mut impl Rng) -> Option<String> {
        let texts = self.texts.as_ref()?;
        Some(texts[self.row(texts.len(), user, users, i, rng)].clone())
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
    /// Texts for the text workloads, one per line or a parquet string column [default: none].
    #[arg(long, env = "VECRIG_QUERY_TEXTS", global = true)]
    #[arg(help_heading = "Load")]
    pub query_texts: Option<PathBuf>,
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
            query_texts: self.query_texts.clone(),
            order: self.order,
        };
        (!spec.is_empty()).then_some(spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn in_file_order_users_take_the_rows_in_turn_and_cycle() {
        let queries = Queries {
            vectors: Some(Arc::new(Matrix {
                width: 1,
                values: vec![0.0, 1.0, 2.0],
            })),
            texts: Some(Arc::new(vec!["a".into(), "b".into()])),
            order: Order::File,
        };
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let sent: Vec<f32> = (0..3)
            .flat_map(|i| [0, 1].map(|user| (i, user)))
            .map(|(i, user)| queries.vector(user, 2, i, &mut rng).expect("vectors")[0])
            .collect();
        assert_eq!(sent, [0.0, 1.0, 2.0, 0.0, 1.0, 2.0]);
        assert_eq!(queries.text(1, 2, 1, &mut rng).as_deref(), Some("b"));
        let sampled = Queries {
            order: Order::Sampled,
            ..queries
        };
        let rows: std::collections::BTreeSet<u32> = (0..200)
            .map(|i| sampled.vector(0, 1, i, &mut rng).expect("vectors")[0] as u32)
            .collect();
        assert_eq!(rows.len(), 3, "every row drawn");
    }
}

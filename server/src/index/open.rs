//! Creating and loading the [`AnnEngine`] the server runs (`--ann-engine`).
//!
//! Its own module, beside the engines rather than in `index` itself, so that `index` (the
//! trait, the metric, the engine's name) imports neither engine and neither engine's module
//! imports back into one that imports it.

use std::path::Path;

#[cfg(feature = "usearch")]
use super::usearch::UsearchAnn;
use super::{Ann, AnnEngine, HnswParams, IndexError, Metric, graph};

/// An empty index of `engine`.
pub fn create(
    engine: AnnEngine,
    dimensions: usize,
    metric: Metric,
    params: HnswParams,
) -> Result<Box<dyn Ann>, IndexError> {
    Ok(match engine {
        #[cfg(feature = "usearch")]
        AnnEngine::Usearch => Box::new(UsearchAnn::new(dimensions, metric, params)?),
        AnnEngine::Graph => Box::new(graph::GraphAnn::new(dimensions, metric, params)?),
    })
}

/// Loads an index `engine` saved. A file saved by the other engine is refused with an error
/// that says so (the two formats differ; the caller rebuilds from the points), and never
/// handed to usearch's loader, which trusts its input.
pub fn load(
    engine: AnnEngine,
    path: &Path,
    dimensions: usize,
    metric: Metric,
    params: HnswParams,
) -> Result<Box<dyn Ann>, IndexError> {
    let refused = |written_by: &str| {
        IndexError::Ann(format!(
            "{} was {written_by}; this server runs --ann-engine {engine}",
            path.display()
        ))
    };
    Ok(match (engine, graph::is_graph_file(path)?) {
        #[cfg(feature = "usearch")]
        (AnnEngine::Usearch, false) => {
            Box::new(UsearchAnn::load(path, dimensions, metric, params)?)
        }
        #[cfg(feature = "usearch")]
        (AnnEngine::Usearch, true) => return Err(refused("written by --ann-engine graph")),
        (AnnEngine::Graph, true) => {
            Box::new(graph::GraphAnn::load(path, dimensions, metric, params)?)
        }
        (AnnEngine::Graph, false) => {
            return Err(refused(
                "not written by --ann-engine graph (usearch's, or damaged)",
            ));
        }
    })
}

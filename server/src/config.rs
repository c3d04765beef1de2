//! Server configuration: the top assembler. Each part owns its flags and their defaults (a
//! `clap::Args` struct in its own module); [`Args`] flattens them, and [`Config`] hands each
//! part its own slice of the validated settings. Nothing else in the crate imports this
//! module, so it may import every part.
//!
//! Every flag is also a `VECRIG_*` environment variable. [`Config::new`] gives the command
//! line's defaults (the environment ignored), for tests that build a configuration directly.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::admission;
use crate::engine::{self, Shape};
use crate::index::{HnswParams, Metric};
use crate::layers::{auth, memory, metrics};
use crate::net;
use crate::priority;
use crate::probe;
use crate::service::{self, Limits};
use crate::storage::{self, SnapshotPolicy};

/// `vecrig-server`: a vector index served over gRPC behind admission control.
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Args {
    /// Address to listen on; port 0 picks a free port (printed as `listening on ADDR`).
    #[arg(long, env = "VECRIG_LISTEN", default_value = "127.0.0.1:50051")]
    #[arg(help_heading = "Server")]
    pub listen: SocketAddr,
    /// Directory holding the index's files.
    #[arg(long, env = "VECRIG_DATA_DIR", default_value = "vecrig-data")]
    #[arg(help_heading = "Data")]
    pub data_dir: PathBuf,
    /// The index: width, metric, graph parameters.
    #[command(flatten, next_help_heading = "Index")]
    pub index: engine::Args,
    /// What one request may ask for.
    #[command(flatten, next_help_heading = "Limits")]
    pub limits: service::Args,
    /// Largest gRPC message accepted, in bytes; larger ones get the transport's size error.
    #[arg(long, env = "VECRIG_MAX_MESSAGE_BYTES", default_value_t = 32 * 1024 * 1024)]
    #[arg(help_heading = "Limits")]
    pub max_message_bytes: usize,
    /// Admission control.
    #[command(flatten, next_help_heading = "Admission")]
    pub admission: admission::Args,
    /// Preload and snapshots.
    #[command(flatten, next_help_heading = "Data")]
    pub storage: storage::Args,
    /// The priority of index work.
    #[command(flatten, next_help_heading = "Index")]
    pub priority: priority::Args,
    /// How long shutdown waits for in-flight requests before giving up on them.
    #[arg(long, env = "VECRIG_GRACE", default_value = "10s", value_parser = humantime::parse_duration)]
    #[arg(help_heading = "Server")]
    pub grace: Duration,
    /// Serve TLS with this PEM certificate (chain); needs --tls-key.
    #[arg(long, env = "VECRIG_TLS_CERT", requires = "tls_key")]
    #[arg(help_heading = "Security")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, env = "VECRIG_TLS_KEY", requires = "tls_cert")]
    #[arg(help_heading = "Security")]
    pub tls_key: Option<PathBuf>,
    /// Authentication.
    #[command(flatten, next_help_heading = "Security")]
    pub auth: auth::Args,
    /// Who a client is behind a proxy.
    #[command(flatten, next_help_heading = "Security")]
    pub clients: crate::caller::Args,
    /// The metrics endpoint.
    #[command(flatten, next_help_heading = "Observability")]
    pub metrics: metrics::Args,
    /// Log filter (tracing's EnvFilter syntax).
    #[arg(long, env = "VECRIG_LOG", default_value = "info")]
    #[arg(help_heading = "Observability")]
    pub log: String,
    /// Connection and HTTP/2 limits against abusive peers (see `net`).
    #[command(flatten, next_help_heading = "Limits")]
    pub net: net::Args,
    /// The memory guard.
    #[command(flatten, next_help_heading = "Limits")]
    pub memory: memory::Args,
    /// Pacing of connections that flood the server with cheap calls.
    #[command(flatten, next_help_heading = "Admission")]
    pub pacing: net::pacing::Args,
    /// The health probe (`--probe`).
    #[command(flatten, next_help_heading = "Health probe")]
    pub probe: probe::Args,
}

/// Validated server configuration: each part's slice of it.
#[derive(Debug, Clone)]
pub struct Config {
    /// Directory holding the index's files.
    pub data_dir: PathBuf,
    /// Vector width.
    pub dimensions: usize,
    /// Distance metric.
    pub metric: Metric,
    /// Request limits enforced by validation.
    pub limits: Limits,
    /// Admission control sizes.
    pub admission: admission::Config,
    /// HTTP/2 streams per connection.
    pub max_concurrent_streams: u32,
    /// Largest gRPC message, in bytes.
    pub max_message_bytes: usize,
    /// Default search breadth.
    pub ef_search: usize,
    /// HNSW graph parameters.
    pub hnsw: HnswParams,
    /// Synthetic points to preload into an empty index.
    pub preload: u64,
    /// Seed of the synthetic data.
    pub preload_seed: u64,
    /// A dataset whose train points fill an empty index instead.
    pub preload_from: Option<PathBuf>,
    /// Drain timeout on shutdown.
    pub grace: Duration,
    /// Nice increment of index work (see `priority`).
    pub index_nice: i32,
    /// Time slice of the request path's threads (see `priority`; zero: the kernel's).
    pub request_slice: Duration,
    /// When to take snapshots.
    pub snapshots: SnapshotPolicy,
    /// TLS identity, when serving https.
    pub tls: Option<Tls>,
    /// The bearer token VectorIndex calls must carry, if any.
    pub auth_token: Option<auth::Token>,
    /// Which peers may name the client's address, and in which header.
    pub client_rule: crate::caller::ClientRule,
    /// Where to serve Prometheus metrics, if anywhere.
    pub metrics_listen: Option<SocketAddr>,
    /// Connection and HTTP/2 limits against abusive peers.
    pub connection_limits: net::ConnectionLimits,
    /// When to refuse work for lack of memory.
    pub memory: memory::Config,
    /// When to read a flooding connection slowly.
    pub pacing: net::pacing::Config,
}

/// A TLS identity: PEM certificate chain and private key.
#[derive(Clone)]
pub struct Tls {
    /// The certificate chain, PEM.
    pub cert: Vec<u8>,
    /// The private key, PEM.
    pub key: Vec<u8>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("Tls")
            .field("cert_bytes", &self.cert.len())
            .finish()
    }
}

impl Config {
    /// A configuration with the defaults of the command line (the environment ignored), for
    /// `dimensions`-wide vectors.
    pub fn new(data_dir: impl Into<PathBuf>, dimensions: usize) -> Self {
        let mut args = crate::flags::defaults::<Args>();
        args.data_dir = data_dir.into();
        let mut config = Config::try_from(&args).expect("the command line's defaults are valid");
        config.dimensions = dimensions;
        config.limits.dimensions = dimensions;
        config
    }
}

/// Why the flags do not make a configuration.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(String);

impl TryFrom<&Args> for Config {
    type Error = ConfigError;

    fn try_from(args: &Args) -> Result<Self, Self::Error> {
        let dimensions = args.index.dimensions as usize;
        if dimensions == 0 || dimensions > 65_536 {
            return Err(ConfigError(format!(
                "--dimensions must be in 1..=65536, got {dimensions}"
            )));
        }
        let limits = Limits::new(&args.limits, dimensions).map_err(ConfigError)?;
        let admission = admission::Config::from(&args.admission);
        let concurrency_limit = admission.concurrency_limit;
        let auth_token = match &args.auth.auth_token_file {
            Some(path) => {
                Some(auth::Token::from_file(path).map_err(|e| ConfigError(e.to_string()))?)
            }
            None => None,
        };
        let hnsw = HnswParams {
            connectivity: args.index.connectivity.clamp(2, 256),
            ef_construction: args.index.ef_construction.max(1),
            engine: args.index.ann_engine,
            insert_threads: match args.index.index_threads {
                0 => crate::process::available_cpus(),
                n => n,
            },
            // The index's search threads bound concurrent searches below admission; they must
            // not be the tighter bound, or requests would queue invisibly inside the engine.
            search_threads: admission
                .adaptive
                .map_or(concurrency_limit, |a| a.max_limit.max(concurrency_limit)),
        };
        let tls = match (&args.tls_cert, &args.tls_key) {
            (Some(cert), Some(key)) => {
                let read = |path: &PathBuf| {
                    std::fs::read(path)
                        .map_err(|e| ConfigError(format!("cannot read {}: {e}", path.display())))
                };
                Some(Tls {
                    cert: read(cert)?,
                    key: read(key)?,
                })
            }
            _ => None,
        };
        let memory = memory::Config::try_from(&args.memory).map_err(ConfigError)?;
        let pacing = net::pacing::Config::try_from(&args.pacing).map_err(ConfigError)?;
        let connection_limits = net::ConnectionLimits::try_from(&args.net).map_err(ConfigError)?;
        Ok(Config {
            data_dir: args.data_dir.clone(),
            dimensions,
            metric: args.index.metric,
            limits,
            admission,
            max_concurrent_streams: args.net.max_concurrent_streams.max(1),
            max_message_bytes: args.max_message_bytes.max(1024),
            ef_search: args.index.ef_search.max(1),
            hnsw,
            preload: args.storage.preload,
            preload_seed: args.storage.preload_seed,
            preload_from: args.storage.preload_from.clone(),
            grace: args.grace,
            index_nice: args.priority.index_nice.clamp(0, 19),
            request_slice: args.priority.request_slice,
            snapshots: SnapshotPolicy::from(&args.storage),
            tls,
            auth_token,
            client_rule: crate::caller::ClientRule::from(&args.clients),
            metrics_listen: args.metrics.metrics_listen,
            connection_limits,
            memory,
            pacing,
        })
    }
}

/// Storage's slice: where the data lives, the index's shape and parameters, what to preload.
impl From<&Config> for storage::Options {
    fn from(config: &Config) -> Self {
        storage::Options {
            data_dir: config.data_dir.clone(),
            shape: Shape {
                dimensions: config.dimensions,
                metric: config.metric,
            },
            hnsw: config.hnsw,
            ef_search: config.ef_search,
            preload: config.preload,
            preload_seed: config.preload_seed,
            preload_from: config.preload_from.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_make_a_valid_configuration() {
        let config = Config::new("data", 16);
        assert_eq!((config.dimensions, config.limits.dimensions), (16, 16));
        assert_eq!(config.limits.max_k, 1000);
        assert_eq!(config.admission.queue_depth, 2048);
        assert_eq!(config.connection_limits.max_connections, 4096);
        assert_eq!(config.snapshots.wal_bytes, 128 << 20);
        assert_eq!(config.index_nice, priority::DEFAULT_INDEX_NICE);
    }
}

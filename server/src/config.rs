//! Server configuration: command-line flags (each also a `VECRIG_*` environment variable),
//! validated into a plain [`Config`] that tests build directly.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::index::Metric;
use crate::index::hnsw::HnswParams;

/// `vecrig-server`: a vector index served over gRPC behind admission control.
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Args {
    /// Address to listen on; port 0 picks a free port (printed as `listening on ADDR`).
    #[arg(long, env = "VECRIG_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    /// Directory holding the index's files.
    #[arg(long, env = "VECRIG_DATA_DIR", default_value = "vecrig-data")]
    pub data_dir: PathBuf,
    /// Vector width.
    #[arg(long, env = "VECRIG_DIMENSIONS", default_value_t = 128)]
    pub dimensions: u32,
    /// Distance metric: cosine, l2 or ip.
    #[arg(long, env = "VECRIG_METRIC", default_value = "cosine")]
    pub metric: Metric,
    /// Largest `k` a search may ask for.
    #[arg(long, env = "VECRIG_MAX_K", default_value_t = 1000)]
    pub max_k: u32,
    /// Largest number of points in one Upsert.
    #[arg(long, env = "VECRIG_MAX_BATCH", default_value_t = 1024)]
    pub max_batch: usize,
    /// Largest text (query or point) in bytes.
    #[arg(long, env = "VECRIG_MAX_TEXT_BYTES", default_value_t = 1024 * 1024)]
    pub max_text_bytes: usize,
    /// Largest gRPC message accepted, in bytes; larger ones get the transport's size error.
    #[arg(long, env = "VECRIG_MAX_MESSAGE_BYTES", default_value_t = 32 * 1024 * 1024)]
    pub max_message_bytes: usize,
    /// Requests served at once [default: 2 x CPUs].
    #[arg(long, env = "VECRIG_CONCURRENCY_LIMIT")]
    pub concurrency_limit: Option<usize>,
    /// Requests that may wait for a slot before further ones are shed.
    #[arg(long, env = "VECRIG_QUEUE_DEPTH", default_value_t = 2048)]
    pub queue_depth: usize,
    /// HTTP/2 streams one connection may have open at once.
    #[arg(long, env = "VECRIG_MAX_CONCURRENT_STREAMS", default_value_t = 1024)]
    pub max_concurrent_streams: u32,
    /// Default search breadth when a request sends ef = 0.
    #[arg(long, env = "VECRIG_EF_SEARCH", default_value_t = 64)]
    pub ef_search: usize,
    /// HNSW links per node (M).
    #[arg(long, env = "VECRIG_CONNECTIVITY", default_value_t = 16)]
    pub connectivity: usize,
    /// HNSW candidates explored per insert (ef_construction).
    #[arg(long, env = "VECRIG_EF_CONSTRUCTION", default_value_t = 128)]
    pub ef_construction: usize,
    /// Fill an empty index with N seeded synthetic points (clustered vectors with texts).
    #[arg(long, env = "VECRIG_PRELOAD", default_value_t = 0)]
    pub preload: u64,
    /// Seed of the synthetic data (the loadgen's `--seed` must match to query the same data).
    #[arg(long, env = "VECRIG_PRELOAD_SEED", default_value_t = vecrig::synthetic::Synthetic::DEFAULT_SEED)]
    pub preload_seed: u64,
    /// Take a snapshot once this much write-ahead log has accumulated (bytes).
    #[arg(long, env = "VECRIG_SNAPSHOT_WAL_BYTES", default_value_t = 128 << 20)]
    pub snapshot_wal_bytes: u64,
    /// Take a snapshot at least this often while writes arrive.
    #[arg(long, env = "VECRIG_SNAPSHOT_INTERVAL", default_value = "5m", value_parser = humantime::parse_duration)]
    pub snapshot_interval: Duration,
    /// Nice increment of index work (searches, embedding, the writer) relative to the request
    /// path, so that a saturated index cannot delay admission and shedding (0: off).
    #[arg(long, env = "VECRIG_INDEX_NICE", default_value_t = crate::priority::DEFAULT_INDEX_NICE)]
    pub index_nice: i32,
    /// How long shutdown waits for in-flight requests before giving up on them.
    #[arg(long, env = "VECRIG_GRACE", default_value = "10s", value_parser = humantime::parse_duration)]
    pub grace: Duration,
    /// Serve TLS with this PEM certificate (chain); needs --tls-key.
    #[arg(long, env = "VECRIG_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, env = "VECRIG_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Longest a request may wait for admission before it is shed.
    #[arg(long, env = "VECRIG_MAX_QUEUE_WAIT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub max_queue_wait: Duration,
    /// CoDel-style target (e.g. 5ms): once the queue has not emptied for --queue-interval,
    /// arrivals expected to wait longer than this are shed at once [default: off].
    #[arg(long, env = "VECRIG_QUEUE_TARGET", value_parser = humantime::parse_duration)]
    pub queue_target: Option<Duration>,
    /// How long the queue must stay non-empty before --queue-target applies.
    #[arg(long, env = "VECRIG_QUEUE_INTERVAL", default_value = "100ms", value_parser = humantime::parse_duration)]
    pub queue_interval: Duration,
    /// Bytes of request bodies that may wait for admission at once; beyond, requests are shed.
    #[arg(long, env = "VECRIG_MAX_QUEUED_BYTES", default_value_t = 256 << 20)]
    pub max_queued_bytes: usize,
    /// Let the concurrency limit follow measured service time (a gradient controller, see
    /// `adaptive`); --concurrency-limit is then where it starts.
    #[arg(long, env = "VECRIG_ADAPTIVE_LIMIT")]
    pub adaptive_limit: bool,
    /// Highest limit --adaptive-limit may reach [default: 8 x CPUs].
    #[arg(long, env = "VECRIG_ADAPTIVE_MAX_LIMIT", requires = "adaptive_limit")]
    pub adaptive_max_limit: Option<usize>,
    /// Turn admission control off (no limit, no queue bound, no shedding): only as the
    /// baseline that shows what admission is for.
    #[arg(long, env = "VECRIG_NO_ADMISSION")]
    pub no_admission: bool,
    /// Require `authorization: Bearer <token>` on every VectorIndex call, the token read from
    /// this file (health and reflection stay open).
    #[arg(long, env = "VECRIG_AUTH_TOKEN_FILE")]
    pub auth_token_file: Option<PathBuf>,
    /// Serve Prometheus metrics at http://ADDR/metrics [default: off].
    #[arg(long, env = "VECRIG_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Log filter (tracing's EnvFilter syntax).
    #[arg(long, env = "VECRIG_LOG", default_value = "info")]
    pub log: String,
    // Connection and HTTP/2 limits against abusive peers (see `limits`).
    /// Connections open at once; at the cap a new one evicts the oldest that has sent nothing
    /// yet, or is closed at once.
    #[arg(long, env = "VECRIG_MAX_CONNECTIONS", default_value_t = 4096)]
    pub max_connections: usize,
    /// Time a new connection has to send its first bytes (HTTP/2 preface or TLS hello).
    #[arg(long, env = "VECRIG_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub handshake_timeout: Duration,
    /// A connection that sends nothing for this long is closed (keep it above keepalive
    /// interval + timeout, so live clients, which answer pings, never look idle).
    #[arg(long, env = "VECRIG_IDLE_TIMEOUT", default_value = "5m", value_parser = humantime::parse_duration)]
    pub idle_timeout: Duration,
    /// A connection with no request open for this long is closed, however it answers pings
    /// (gRPC's MAX_CONNECTION_IDLE; 0: never).
    #[arg(long, env = "VECRIG_MAX_CONNECTION_IDLE", default_value = "5m", value_parser = humantime::parse_duration)]
    pub max_connection_idle: Duration,
    /// Time a VectorIndex request's body has to arrive whole once its headers have.
    #[arg(long, env = "VECRIG_REQUEST_READ_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub request_read_timeout: Duration,
    /// Bytes of request bodies held at once, read but not yet answered.
    #[arg(long, env = "VECRIG_REQUEST_BUFFER_BYTES", default_value_t = 256 * 1024 * 1024)]
    pub request_buffer_bytes: usize,
    /// Largest HTTP/2 header list (metadata) of a request, in bytes.
    #[arg(long, env = "VECRIG_MAX_HEADER_BYTES", default_value_t = 16 * 1024)]
    pub max_header_bytes: u32,
    /// Streams a peer may reset before the server accepts them, per connection, before it is
    /// disconnected (the rapid-reset guard).
    #[arg(long, env = "VECRIG_MAX_PENDING_RESET_STREAMS", default_value_t = 20)]
    pub max_pending_reset_streams: usize,
    /// HTTP/2 stream flow-control window, in bytes.
    #[arg(long, env = "VECRIG_STREAM_WINDOW_BYTES", default_value_t = 1024 * 1024)]
    pub stream_window_bytes: u32,
    /// HTTP/2 connection flow-control window, in bytes.
    #[arg(long, env = "VECRIG_CONNECTION_WINDOW_BYTES", default_value_t = 1024 * 1024)]
    pub connection_window_bytes: u32,
    /// Largest HTTP/2 frame accepted, in bytes (16 KiB ..= 16 MiB - 1).
    #[arg(long, env = "VECRIG_MAX_FRAME_BYTES", default_value_t = 16 * 1024)]
    pub max_frame_bytes: u32,
    /// Interval of HTTP/2 keepalive pings.
    #[arg(long, env = "VECRIG_KEEPALIVE_INTERVAL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub keepalive_interval: Duration,
    /// Time a peer has to answer a keepalive ping before it is disconnected.
    #[arg(long, env = "VECRIG_KEEPALIVE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub keepalive_timeout: Duration,
    /// The memory guard.
    #[command(flatten)]
    pub memory: crate::layers::memory::Args,
    /// The health probe (`--probe`).
    #[command(flatten)]
    pub probe: crate::probe::Args,
}

/// Validated server configuration.
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
    pub admission: AdmissionConfig,
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
    /// Drain timeout on shutdown.
    pub grace: Duration,
    /// Nice increment of index work (see `priority`).
    pub index_nice: i32,
    /// When to take snapshots.
    pub snapshots: crate::storage::SnapshotPolicy,
    /// TLS identity, when serving https.
    pub tls: Option<Tls>,
    /// The bearer token VectorIndex calls must carry, if any.
    pub auth_token: Option<crate::layers::auth::Token>,
    /// Where to serve Prometheus metrics, if anywhere.
    pub metrics_listen: Option<SocketAddr>,
    /// Connection and HTTP/2 limits against abusive peers.
    pub connection_limits: crate::net::ConnectionLimits,
    /// When to refuse work for lack of memory.
    pub memory: crate::layers::memory::Config,
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

/// Limits on what one request may ask for.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Vector width every vector must have.
    pub dimensions: usize,
    /// Largest `k`.
    pub max_k: u32,
    /// Largest upsert batch.
    pub max_batch: usize,
    /// Largest text, in bytes.
    pub max_text_bytes: usize,
}

/// Admission control sizes.
#[derive(Debug, Clone, Copy)]
pub struct AdmissionConfig {
    /// Requests served at once.
    pub concurrency_limit: usize,
    /// Requests allowed to wait for a slot; beyond that, requests are shed.
    pub queue_depth: usize,
    /// Longest wait for a slot.
    pub max_queue_wait: Duration,
    /// CoDel-style target wait under a standing queue (`None`: off).
    pub queue_target: Option<Duration>,
    /// How long the queue must stand before `queue_target` applies.
    pub queue_interval: Duration,
    /// Bytes of request bodies allowed to wait at once.
    pub max_queued_bytes: usize,
    /// Whether admission control is on at all.
    pub enabled: bool,
    /// The adaptive limit's controller (`None`: the limit stays fixed).
    pub adaptive: Option<crate::admission::adaptive::AdaptiveConfig>,
}

impl AdmissionConfig {
    /// The command line's defaults with this limit.
    pub fn with_limit(concurrency_limit: usize) -> Self {
        Self {
            concurrency_limit,
            queue_depth: 2048,
            max_queue_wait: Duration::from_secs(5),
            queue_target: None,
            queue_interval: Duration::from_millis(100),
            max_queued_bytes: 256 << 20,
            enabled: true,
            adaptive: None,
        }
    }
}

/// CPUs this process may use.
pub fn available_cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
}

impl Config {
    /// A configuration with the defaults of the command line, for `dimensions`-wide vectors.
    pub fn new(data_dir: impl Into<PathBuf>, dimensions: usize) -> Self {
        let concurrency_limit = 2 * available_cpus();
        Self {
            data_dir: data_dir.into(),
            dimensions,
            metric: Metric::Cosine,
            limits: Limits {
                dimensions,
                max_k: 1000,
                max_batch: 1024,
                max_text_bytes: 1024 * 1024,
            },
            admission: AdmissionConfig::with_limit(concurrency_limit),
            max_concurrent_streams: 1024,
            max_message_bytes: 32 * 1024 * 1024,
            ef_search: 64,
            hnsw: HnswParams {
                connectivity: 16,
                ef_construction: 128,
                search_threads: concurrency_limit,
            },
            preload: 0,
            preload_seed: vecrig::synthetic::Synthetic::DEFAULT_SEED,
            grace: Duration::from_secs(10),
            index_nice: crate::priority::DEFAULT_INDEX_NICE,
            snapshots: crate::storage::SnapshotPolicy::default(),
            tls: None,
            auth_token: None,
            metrics_listen: None,
            connection_limits: crate::net::ConnectionLimits::default(),
            memory: crate::layers::memory::Config::default(),
        }
    }
}

/// Why the flags do not make a configuration.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(String);

impl TryFrom<&Args> for Config {
    type Error = ConfigError;

    fn try_from(args: &Args) -> Result<Self, Self::Error> {
        let dimensions = args.dimensions as usize;
        if dimensions == 0 || dimensions > 65_536 {
            return Err(ConfigError(format!(
                "--dimensions must be in 1..=65536, got {dimensions}"
            )));
        }
        if args.max_k == 0 {
            return Err(ConfigError("--max-k must be at least 1".into()));
        }
        if args.max_batch == 0 {
            return Err(ConfigError("--max-batch must be at least 1".into()));
        }
        let concurrency_limit = args
            .concurrency_limit
            .unwrap_or(2 * available_cpus())
            .max(1);
        let mut config = Config::new(&args.data_dir, dimensions);
        config.metric = args.metric;
        config.limits.max_k = args.max_k;
        config.limits.max_batch = args.max_batch;
        config.limits.max_text_bytes = args.max_text_bytes;
        config.admission = AdmissionConfig {
            concurrency_limit,
            queue_depth: args.queue_depth,
            max_queue_wait: args.max_queue_wait,
            queue_target: args.queue_target,
            queue_interval: args.queue_interval,
            max_queued_bytes: args.max_queued_bytes.max(1 << 20),
            enabled: !args.no_admission,
            adaptive: args.adaptive_limit.then(|| {
                crate::admission::adaptive::AdaptiveConfig::with_max(
                    args.adaptive_max_limit.unwrap_or(8 * available_cpus()),
                )
            }),
        };
        if let Some(path) = &args.auth_token_file {
            config.auth_token =
                Some(crate::layers::auth::Token::from_file(path).map_err(|e| ConfigError(e.to_string()))?);
        }
        config.metrics_listen = args.metrics_listen;
        config.max_concurrent_streams = args.max_concurrent_streams.max(1);
        config.max_message_bytes = args.max_message_bytes.max(1024);
        config.ef_search = args.ef_search.max(1);
        config.hnsw = HnswParams {
            connectivity: args.connectivity.clamp(2, 256),
            ef_construction: args.ef_construction.max(1),
            // The index's search threads bound concurrent searches below admission; they must
            // not be the tighter bound, or requests would queue invisibly inside the engine.
            search_threads: config
                .admission
                .adaptive
                .map_or(concurrency_limit, |a| a.max_limit.max(concurrency_limit)),
        };
        config.preload = args.preload;
        config.preload_seed = args.preload_seed;
        config.grace = args.grace;
        config.index_nice = args.index_nice.clamp(0, 19);
        if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
            let read = |path: &PathBuf| {
                std::fs::read(path)
                    .map_err(|e| ConfigError(format!("cannot read {}: {e}", path.display())))
            };
            config.tls = Some(Tls {
                cert: read(cert)?,
                key: read(key)?,
            });
        }
        config.memory = crate::layers::memory::Config::try_from(&args.memory).map_err(ConfigError)?;
        config.snapshots = crate::storage::SnapshotPolicy {
            wal_bytes: args.snapshot_wal_bytes.max(1 << 20),
            interval: args.snapshot_interval,
        };
        config.connection_limits = connection_limits(args)?;
        Ok(config)
    }
}

/// The connection and HTTP/2 limits of the flags.
fn connection_limits(args: &Args) -> Result<crate::net::ConnectionLimits, ConfigError> {
    // RFC 9113 6.5.2: frame sizes outside this range are protocol errors.
    if !(16_384..=16_777_215).contains(&args.max_frame_bytes) {
        return Err(ConfigError(format!(
            "--max-frame-bytes must be in 16384..=16777215, got {}",
            args.max_frame_bytes
        )));
    }
    if args.idle_timeout <= args.keepalive_interval + args.keepalive_timeout {
        return Err(ConfigError(format!(
            "--idle-timeout ({}) must exceed --keepalive-interval + --keepalive-timeout, or \
             live clients would be cut off between pings",
            humantime::format_duration(args.idle_timeout)
        )));
    }
    Ok(crate::net::ConnectionLimits {
        max_connections: args.max_connections.max(1),
        handshake_timeout: args.handshake_timeout,
        idle_timeout: args.idle_timeout,
        request_read_timeout: args.request_read_timeout,
        request_buffer_bytes: args.request_buffer_bytes,
        max_header_bytes: args.max_header_bytes.max(1024),
        max_pending_reset_streams: args.max_pending_reset_streams,
        max_local_error_resets: crate::net::ConnectionLimits::default().max_local_error_resets,
        // Below the 65,535-byte HTTP/2 default window the server would slow every upload.
        stream_window_bytes: args.stream_window_bytes.max(65_535),
        connection_window_bytes: args.connection_window_bytes.max(65_535),
        max_frame_bytes: args.max_frame_bytes,
        keepalive_interval: args.keepalive_interval,
        keepalive_timeout: args.keepalive_timeout,
        // 0 turns it off.
        max_connection_idle: Some(args.max_connection_idle).filter(|d| !d.is_zero()),
    })
}

//! Connecting to a vecrig server: the helpers that the loadgen and the tests share.
//!
//! One HTTP/2 connection multiplexes at most the server's `max_concurrent_streams` requests,
//! so a load generator that wants more concurrency than that, or wants its load spread the
//! way many real clients would spread it, needs several connections. [`Pool`] holds a fixed
//! number of them and hands them out round-robin.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use crate::proto::vector_index_client::VectorIndexClient;

/// Largest response a client accepts: a search with a big `k` and payloads can be large.
pub const DEFAULT_MAX_DECODING_BYTES: usize = 64 * 1024 * 1024;
/// Largest request a client sends (a large upsert batch or a long text query).
pub const DEFAULT_MAX_ENCODING_BYTES: usize = 64 * 1024 * 1024;

/// How to reach a target.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Number of HTTP/2 connections in the pool (at least 1).
    pub connections: usize,
    /// Time allowed to establish each connection.
    pub connect_timeout: Duration,
    /// Largest response message accepted.
    pub max_decoding_bytes: usize,
    /// For `https://` targets: a PEM CA certificate to trust instead of the system's roots.
    pub ca_cert: Option<Vec<u8>>,
    /// For `https://` targets: the name to verify the server's certificate against, when it
    /// differs from the target's host.
    pub tls_domain: Option<String>,
    /// HTTP/2 ping interval; a connection whose ping is not answered within the same time
    /// (at most 10 s) is dropped and re-established. Shorter finds a cut network sooner.
    pub keepalive: Duration,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        Self {
            connections: 4,
            connect_timeout: Duration::from_secs(5),
            max_decoding_bytes: DEFAULT_MAX_DECODING_BYTES,
            ca_cert: None,
            tls_domain: None,
            keepalive: Duration::from_secs(30),
        }
    }
}

/// Why a target could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The target is not a URI tonic understands.
    #[error("invalid target {target:?}: {reason}")]
    InvalidTarget {
        /// The target as given.
        target: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The connection could not be established.
    #[error("cannot connect to {target}: {source}")]
    Unreachable {
        /// The target as given.
        target: String,
        /// The transport's error.
        #[source]
        source: tonic::transport::Error,
    },
}

/// Builds the endpoint for `target` (`http://host:port`, or `https://` with rustls and the
/// system's roots or `options.ca_cert`) with the transport settings we want on every
/// connection: no Nagle delay, keepalive so a dead peer is noticed, a connect timeout.
pub fn endpoint(target: &str, options: &ConnectOptions) -> Result<Endpoint, ConnectError> {
    let invalid = |reason: String| ConnectError::InvalidTarget {
        target: target.to_string(),
        reason,
    };
    let mut endpoint =
        Endpoint::from_shared(target.to_string()).map_err(|e| invalid(e.to_string()))?;
    if target.starts_with("https://") {
        let mut tls = match &options.ca_cert {
            Some(pem) => ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)),
            None => ClientTlsConfig::new().with_native_roots(),
        };
        if let Some(domain) = &options.tls_domain {
            tls = tls.domain_name(domain.clone());
        }
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|e| invalid(format!("TLS: {e}")))?;
    }
    Ok(endpoint
        .connect_timeout(options.connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(options.keepalive)
        .keep_alive_timeout(options.keepalive.min(Duration::from_secs(10)))
        .keep_alive_while_idle(true))
}

/// Connects one client to `target`, eagerly, so an unreachable target fails here.
pub async fn connect(
    target: &str,
    options: &ConnectOptions,
) -> Result<VectorIndexClient<Channel>, ConnectError> {
    let channel = open(&endpoint(target, options)?, target).await?;
    Ok(client_for(channel, options))
}

/// Opens one connection on `endpoint`.
async fn open(endpoint: &Endpoint, target: &str) -> Result<Channel, ConnectError> {
    endpoint
        .connect()
        .await
        .map_err(|source| ConnectError::Unreachable {
            target: target.to_string(),
            source,
        })
}

fn client_for(channel: Channel, options: &ConnectOptions) -> VectorIndexClient<Channel> {
    VectorIndexClient::new(channel)
        .max_decoding_message_size(options.max_decoding_bytes)
        .max_encoding_message_size(DEFAULT_MAX_ENCODING_BYTES)
}

/// A fixed set of connections to one target, handed out round-robin. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Pool {
    clients: Arc<[VectorIndexClient<Channel>]>,
    channels: Arc<[Channel]>,
    next: Arc<AtomicUsize>,
}

impl Pool {
    /// Opens `options.connections` connections to `target`.
    pub async fn connect(target: &str, options: &ConnectOptions) -> Result<Self, ConnectError> {
        let endpoint = endpoint(target, options)?;
        let mut channels = Vec::with_capacity(options.connections.max(1));
        for _ in 0..options.connections.max(1) {
            channels.push(open(&endpoint, target).await?);
        }
        let clients: Vec<_> = channels
            .iter()
            .map(|c| client_for(c.clone(), options))
            .collect();
        Ok(Self {
            clients: clients.into(),
            channels: channels.into(),
            next: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// The next client, round-robin. Cloning a tonic client is cheap (it shares the channel).
    pub fn client(&self) -> VectorIndexClient<Channel> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.clients.len();
        self.clients[i].clone()
    }

    /// The next raw channel, for other services on the same server (health, reflection).
    pub fn channel(&self) -> Channel {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.channels.len();
        self.channels[i].clone()
    }

    /// Number of connections in the pool.
    pub fn len(&self) -> usize {
        self.clients.len()
    }

    /// Always false: a pool holds at least one connection.
    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }
}

/// Metadata sent on every request (e.g. `authorization`), as given by `--header`.
pub type Metadata = std::sync::Arc<
    [(
        tonic::metadata::AsciiMetadataKey,
        tonic::metadata::AsciiMetadataValue,
    )],
>;

/// Wraps `message` in a request with a deadline (sent as `grpc-timeout`) and `metadata`.
pub fn request_with<T>(message: T, deadline: Duration, metadata: &Metadata) -> tonic::Request<T> {
    let mut request = with_deadline(message, deadline);
    for (key, value) in metadata.iter() {
        request.metadata_mut().insert(key.clone(), value.clone());
    }
    request
}

/// Wraps `message` in a request whose deadline the server sees as `grpc-timeout`.
pub fn with_deadline<T>(message: T, deadline: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(deadline);
    request
}

//! `vecrig-server`: a vector index served over gRPC, behind admission control.
//!
//! Layout, in the order a request meets it (each folder's `mod.rs` says what lives in it; no
//! module imports one that imports it back, checked by `scripts/module-cycles.py`):
//! - [`net`]: the accept gate (connection cap), the request-path lanes (each client address's
//!   connections served on a runtime of their own, [`net::lanes`]), the guarded socket
//!   (handshake, idle and no-request timeouts), HTTP/2 limits, and whole-request reads that
//!   keep an abusive peer from taking the server away from normal clients;
//! - [`layers`]: the tower layers in front of admission, outermost first: [`layers::metrics`]
//!   (counts every VectorIndex call; Prometheus text on `--metrics-listen`),
//!   [`layers::auth`] (the bearer token, so strangers take no queue places) and
//!   [`layers::memory`] (refuses writes, then searches, near the memory limit);
//! - [`admission`]: the cost-weighted concurrency limit, its queues and load shedding
//!   ([`admission::cost`], [`admission::scheduler`], [`admission::layer`]), the adaptive
//!   limit ([`admission::adaptive`]) and brownout ([`admission::brownout`]). Health and
//!   reflection stay outside all of these, so probes answer under load;
//! - [`service`]: proto to domain types, validation, domain errors to gRPC status codes;
//! - [`engine`]: the index in memory: runs index work on the blocking pool, one writer,
//!   bounded searches;
//! - [`embed`]: text to vectors; [`index`]: points, exact scan and the HNSW graph;
//! - [`storage`]: all disk I/O: the write-ahead log ([`storage::wal`]), group commit,
//!   snapshots ([`storage::snapshot`]), recovery on start ([`storage::recovery`]).
//!
//! Beside the path: [`method`] reads a request's method from its path, once, for all of the
//! above; [`priority`] keeps index work below the request path on a saturated CPU;
//! [`process`] reads the process's memory and CPUs; [`cpu`] splits its CPU time between index
//! work and the rest; [`flags`] gives each part's settings their defaults from its own flags;
//! [`config`] assembles every part's flags and settings (nothing imports it); [`probe`] is
//! `vecrig-server --probe`, the container health check.
//!
//! [`serve`] takes an already-bound listener and a shutdown future, so tests bind port 0;
//! the whole request path is built in one function (`router`), one comment per layer.

pub mod admission;
pub mod caller;
pub mod config;
pub mod cpu;
/// The text embedder lives in the shared crate, so that the loadgen draws vector queries from
/// the space the server embeds texts into.
pub use vecrig::embed;
pub mod engine;
pub mod error;
pub mod flags;
pub mod index;
pub mod layers;
pub mod method;
pub mod net;
pub mod priority;
pub mod probe;
pub mod process;
pub mod service;
pub mod storage;

use std::future::Future;
use std::sync::{Arc, OnceLock};

use tokio::net::TcpListener;
use tokio_stream::StreamExt;
use tonic::transport::Server;
use tonic::transport::server::Router;
use tonic_health::ServingStatus;
use tower::ServiceBuilder;
use tower::layer::util::{Identity, Stack};
use vecrig::proto::vector_index_server::VectorIndexServer;

use crate::admission::Admission;
use crate::admission::layer::AdmissionLayer;
use crate::config::Config;
use crate::layers::auth::AuthLayer;
use crate::layers::memory::{MemoryGuard, MemoryLayer};
use crate::layers::metrics::{Metrics, MetricsLayer};
use crate::net::{Pacer, PacingLayer, WholeRequestLayer};
use crate::service::Service;
use crate::storage::snapshot::SnapshotError;
use crate::storage::{OpenError, Storage, StorageCell};

/// Why the server stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The data directory could not be opened or recovered.
    #[error("cannot open the index: {0}")]
    Open(#[from] OpenError),
    /// The snapshot on shutdown failed.
    #[error("cannot save the index: {0}")]
    Save(#[from] SnapshotError),
    /// gRPC reflection could not be built from the descriptors.
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The transport failed.
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// A background task died.
    #[error("task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// The metrics address could not be bound.
    #[error("metrics listener: {0}")]
    Metrics(std::io::Error),
    /// A runtime (admitted work's, or a request-path lane's) could not be started.
    #[error("runtime: {0}")]
    Runtime(std::io::Error),
}

/// Stops a background task when the server stops, however it stops.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("SIGINT received"),
        () = term => tracing::info!("SIGTERM received"),
    }
}

async fn set_health(health: &tonic_health::server::HealthReporter, status: ServingStatus) {
    health.set_service_status("", status).await;
    health
        .set_service_status(vecrig::proto::SERVICE_NAME, status)
        .await;
}

/// Serves the index on `listener` until `shutdown` resolves, then drains and saves; the
/// metrics endpoint, if `config.metrics_listen` names one, on a listener bound here.
pub async fn serve(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let metrics_listener = match config.metrics_listen {
        Some(addr) => Some(
            layers::metrics::bind(addr)
                .await
                .map_err(ServeError::Metrics)?,
        ),
        None => None,
    };
    serve_on(listener, metrics_listener, config, shutdown).await
}

/// Serves the index on `listener`, and Prometheus metrics on `metrics_listener` if given,
/// until `shutdown` resolves, then drains and saves. Callers that bind both themselves know
/// both ports before anything is served (`main` prints them; tests read them).
///
/// Health answers NOT_SERVING from the first moment until the index is loaded (and preloaded),
/// and again from the moment shutdown begins; VectorIndex calls made while starting get
/// UNAVAILABLE.
pub async fn serve_on(
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let (health, health_service) = tonic_health::server::health_reporter();
    set_health(&health, ServingStatus::NotServing).await;

    crate::priority::set_index_nice(config.index_nice);
    crate::priority::set_request_slice(config.request_slice);
    let metrics = Arc::new(Metrics::new());
    let admission = Admission::new(config.admission, Arc::clone(&metrics) as _);
    let _adaptive = match config.admission.adaptive {
        Some(adaptive) if config.admission.enabled => {
            Some(AbortOnDrop(tokio::spawn(crate::admission::adaptive::run(
                Arc::clone(&admission),
                adaptive,
                config.admission.concurrency_limit,
            ))))
        }
        _ => None,
    };
    let _brownout = match config.admission.brownout {
        Some(brownout) if config.admission.enabled => Some(AbortOnDrop(tokio::spawn(
            crate::admission::brownout::run(Arc::clone(&admission), brownout),
        ))),
        _ => None,
    };
    // Admitted work runs apart from the request path (`admission::work`); it outlives the
    // server below, and is shut down when this function returns.
    let work = crate::admission::work::WorkRuntime::new().map_err(ServeError::Runtime)?;
    let storage_cell: StorageCell = Arc::new(OnceLock::new());
    let service = Service::new(
        Arc::clone(&storage_cell),
        config.limits,
        Arc::clone(&admission) as _,
    );
    let memory = MemoryGuard::new(&config.memory);
    tracing::info!(limit_bytes = memory.limit(), "memory guard");
    let pacer = Pacer::new(config.pacing);
    // Each client address's connections are served on one lane (`net::lanes`); the lanes
    // outlive the server below, and are shut down when this function returns.
    let limits = &config.connection_limits;
    let (_lanes, dispatch, lanes) = net::lanes::start(
        limits.request_lanes,
        limits,
        &pacer,
        config
            .auth_token
            .as_ref()
            .is_some_and(layers::auth::Token::names_tenants),
        {
            let admission = Arc::clone(&admission);
            net::lanes::Flooding(Arc::new(move |address| {
                admission.is_waiting(&caller::ClientKey::Address(address))
            }))
        },
    )
    .map_err(ServeError::Runtime)?;
    let incoming = net::incoming(listener, &config.connection_limits);
    let metrics_task = match metrics_listener {
        Some(listener) => {
            tracing::info!(addr = %listener.local_addr().map_err(ServeError::Metrics)?, "metrics at /metrics");
            let (metrics, admission, storage, dir, pacer, dispatch, gate) = (
                Arc::clone(&metrics),
                Arc::clone(&admission),
                Arc::clone(&storage_cell),
                config.data_dir.clone(),
                Arc::clone(&pacer),
                dispatch.clone(),
                incoming.gate(),
            );
            let render = Arc::new(move || {
                let connections = layers::metrics::ConnectionFigures {
                    open: gate.open() as u64,
                    refused: gate.refused(),
                    evicted: gate.evicted(),
                    per_lane: dispatch.connections(),
                };
                metrics.render(&admission, &storage, &dir, pacer.stats(), &connections)
            });
            Some(AbortOnDrop(tokio::spawn(layers::metrics::serve_metrics(
                listener, render,
            ))))
        }
        None => None,
    };

    // The connection cap, handshake/idle timeouts and pacing wrap the accepted sockets.
    {
        // As admitted work finishes and the queue has room, a paused connection is read again.
        let pacer = Arc::clone(&pacer);
        admission.on_room(Arc::new(move || pacer.room()));
    }
    // And if a wake-up brings no admitted work, nothing finishes to call for the next one:
    // the pacer asks admission itself while connections are paused with work waiting.
    let _room_tender = {
        let admission = Arc::clone(&admission);
        AbortOnDrop(tokio::spawn(
            Arc::clone(&pacer).tend_room(move || admission.has_room()),
        ))
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let router = router(
        &config,
        health_service,
        RequestPath {
            metrics: Arc::clone(&metrics),
            work: work.handle(),
            memory,
            admission: Arc::clone(&admission),
            service,
        },
    )?;
    // tonic's server applies each request's `grpc-timeout` itself: a request whose deadline
    // passes while it waits in the admission queue is dropped from the queue unserved.
    let mut server = tokio::spawn(serve_lanes(router, incoming, dispatch, lanes, stop_rx));

    let options = storage::Options::from(&config);
    let policy = config.snapshots;
    let opening = tokio::task::spawn_blocking(move || Storage::open(options, policy));
    tokio::pin!(shutdown);
    let storage = tokio::select! {
        opened = opening => Arc::new(opened??),
        () = &mut shutdown => {
            tracing::info!("shutdown requested while starting");
            let _ = stop_tx.send(true);
            let _ = tokio::time::timeout(config.grace, server).await;
            return Ok(());
        }
        finished = &mut server => {
            finished??;
            return Ok(());
        }
    };
    let _ = storage_cell.set(Arc::clone(&storage));
    set_health(&health, ServingStatus::Serving).await;
    tracing::info!(points = storage.engine().len(), "serving");

    tokio::select! {
        () = &mut shutdown => {}
        finished = &mut server => {
            finished??;
            return Ok(());
        }
    }

    tracing::info!("draining");
    set_health(&health, ServingStatus::NotServing).await;
    let _ = stop_tx.send(true);
    match tokio::time::timeout(config.grace, &mut server).await {
        Ok(finished) => finished??,
        Err(_) => {
            tracing::warn!(
                grace = ?config.grace,
                in_flight = admission.stats().in_flight,
                "grace period over; closing remaining connections"
            );
            server.abort();
        }
    }

    drop(metrics_task);
    let closing = Arc::clone(&storage);
    tokio::task::spawn_blocking(move || closing.close()).await??;
    tracing::info!(
        points = storage.engine().len(),
        sequence = storage.durable_sequence(),
        "saved; stopped"
    );
    Ok(())
}

/// Serves `router` on every lane and gives each accepted connection to its client's lane,
/// until `stop` turns true; then stops accepting (the listener closes at once) and returns
/// once every lane's connections have finished.
async fn serve_lanes(
    router: Router<ServerLayers>,
    incoming: net::Incoming,
    dispatch: net::Dispatch,
    lanes: Vec<net::Lane>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Result<(), ServeError> {
    let stopped = |mut stop: tokio::sync::watch::Receiver<bool>| async move {
        // An error means the sender is gone, which is a stop too.
        let _ = stop.wait_for(|stopped| *stopped).await;
    };
    let servers: Vec<_> = lanes
        .into_iter()
        .map(|lane| {
            let serving = router
                .clone()
                .serve_with_incoming_shutdown(lane.sockets, stopped(stop.clone()));
            lane.handle.spawn(serving)
        })
        .collect();
    {
        let mut incoming = std::pin::pin!(incoming);
        let mut stopping = std::pin::pin!(stopped(stop));
        loop {
            tokio::select! {
                () = &mut stopping => break,
                accepted = incoming.next() => match accepted {
                    Some(Ok(accepted)) => dispatch.give(accepted),
                    Some(Err(error)) => tracing::debug!(%error, "accept failed"),
                    None => break,
                },
            }
        }
    }
    for server in servers {
        server.await??;
    }
    Ok(())
}

/// The server-wide layers, outermost last (tower's `Stack` nesting): pacing, then whole
/// requests.
type ServerLayers = Stack<WholeRequestLayer, Stack<PacingLayer, Identity>>;

/// What the VectorIndex request path is made of, for [`router`].
struct RequestPath {
    metrics: Arc<Metrics>,
    /// Where admitted work runs (`admission::work`).
    work: tokio::runtime::Handle,
    memory: Arc<MemoryGuard>,
    admission: Arc<Admission>,
    service: Service,
}

/// The one place the request path is built: tonic's server with its HTTP/2 limits, the
/// server-wide whole-request layer, and the VectorIndex service behind its layers. Health and
/// reflection are added beside VectorIndex, outside its layers: they must answer while it
/// sheds, and without a token.
fn router<H: tonic_health::pb::health_server::Health>(
    config: &Config,
    health: tonic_health::pb::health_server::HealthServer<H>,
    path: RequestPath,
) -> Result<Router<ServerLayers>, ServeError> {
    let RequestPath {
        metrics,
        work,
        memory,
        admission,
        service,
    } = path;
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(vecrig::proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;
    // Message-size limits are explicit: a request above them gets the transport's
    // RESOURCE_EXHAUSTED size error before any of our code runs.
    let index_server = VectorIndexServer::new(service)
        .max_decoding_message_size(config.max_message_bytes)
        .max_encoding_message_size(config.max_message_bytes);
    let vector_index = ServiceBuilder::new()
        // Outermost: metrics sees every call, those refused by the layers below included.
        .layer(MetricsLayer::new(metrics))
        // Auth before anything that holds resources: a stranger takes no memory check and no
        // place in admission's queue (a pass-through when no token is configured).
        .layer(AuthLayer::new(config.auth_token.clone()))
        // The memory guard before admission: a call refused for memory must not take a queue
        // place, and its body is never priced.
        .layer(MemoryLayer::new(memory))
        // Innermost: the concurrency limit, queue and shedding, right in front of the work.
        .layer(AdmissionLayer::new(admission, work))
        .service(index_server);

    let mut builder = Server::builder();
    if let Some(tls) = &config.tls {
        builder = builder.tls_config(
            tonic::transport::ServerTlsConfig::new()
                .identity(tonic::transport::Identity::from_pem(&tls.cert, &tls.key))
                // A TLS handshake that stalls holds a place under the connection cap.
                .timeout(config.connection_limits.handshake_timeout),
        )?;
    }
    let limits = &config.connection_limits;
    // HTTP/2 limits: streams, headers, resets, windows, pings.
    let builder = net::http2::apply(builder, limits, config.max_concurrent_streams);
    Ok(builder
        // Server-wide and outermost: every cheap answer (refusals from any layer below,
        // health, Stats, reflection) is charged to its connection, which is read slowly once
        // it asks for too many: a flood of them costs its sender, not the server. It also
        // tells admission who each request is from, for fair shares.
        .layer(PacingLayer::new(
            net::PeerInfo::pacing_of,
            config.client_rule.clone(),
        ))
        // Server-wide: a VectorIndex request reaches routing, the layers and admission only
        // once its body is whole (a slow body cannot hold an admission slot), and every
        // request counts as activity on its connection.
        .layer(WholeRequestLayer::new(
            limits.request_read_timeout,
            // One gRPC message and its 5-byte frame header.
            config.max_message_bytes.saturating_add(5),
            limits.request_buffer_bytes,
        ))
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(vector_index))
}

//! `vecrig-server`: a vector index served over gRPC, behind admission control.
//!
//! Layout, in the order a request meets it:
//! - [`limits`]: the connection cap, handshake and idle timeouts, HTTP/2 limits and whole-request
//!   reads that keep an abusive peer from taking the server away from normal clients;
//! - [`metrics`]: counts every VectorIndex call by method and code (and serves Prometheus text
//!   on `--metrics-listen`);
//! - [`auth`]: the bearer token, checked before admission so unauthenticated calls take no
//!   queue places;
//! - [`memory`]: refuses writes (then searches) as the process nears its memory limit, so it
//!   answers RESOURCE_EXHAUSTED instead of being OOM-killed;
//! - [`admission`]: the cost-weighted concurrency limit, bounded queue and load shedding in
//!   front of the VectorIndex service (health and reflection stay outside all four, so probes
//!   answer under load); [`adaptive`] moves the limit with service time when asked to;
//! - [`service`]: proto to domain types, validation, domain errors to gRPC status codes;
//! - [`engine`]: runs index work on the blocking pool, one writer, bounded searches;
//! - [`embed`]: text to vectors; [`index`]: points, exact scan and the HNSW graph;
//! - [`storage`]: durability: the write-ahead log ([`wal`]), group commit, [`snapshot`]s,
//!   recovery on start.
//!
//! [`priority`] keeps index work below the request path on a saturated CPU.
//! [`probe`] is `vecrig-server --probe`, the container health check.
//!
//! [`serve`] takes an already-bound listener and a shutdown future, so tests bind port 0.

pub mod admission;
pub mod config;
pub mod embed;
pub mod engine;
pub mod error;
pub mod index;
pub mod layers;
pub mod net;
pub mod priority;
pub mod probe;
pub mod service;
pub mod storage;

use std::future::Future;
use std::sync::{Arc, OnceLock};

use tokio::net::TcpListener;
use tonic::transport::Server;
use tonic_health::ServingStatus;
use tower::Layer;
use vecrig::proto::vector_index_server::VectorIndexServer;

use crate::admission::{Admission, AdmissionLayer};
use crate::layers::auth::AuthLayer;
use crate::config::Config;
use crate::engine::OpenError;
use crate::layers::metrics::{Metrics, MetricsLayer};
use crate::service::{EngineSlot, Service};
use crate::storage::snapshot::SnapshotError;
use crate::storage::Storage;

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

/// Serves the index on `listener` until `shutdown` resolves, then drains and saves.
///
/// Health answers NOT_SERVING from the first moment until the index is loaded (and preloaded),
/// and again from the moment shutdown begins; VectorIndex calls made while starting get
/// UNAVAILABLE.
pub async fn serve(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let (health, health_service) = tonic_health::server::health_reporter();
    set_health(&health, ServingStatus::NotServing).await;

    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(vecrig::proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;

    crate::priority::set_index_nice(config.index_nice);
    let metrics = Arc::new(Metrics::new());
    let admission = Admission::new(config.admission, Arc::clone(&metrics));
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
    let engine_slot: EngineSlot = Arc::new(OnceLock::new());
    let service = Service::new(
        Arc::clone(&engine_slot),
        config.limits,
        Arc::clone(&admission),
    );
    // Message-size limits are explicit: a request above them gets the transport's
    // RESOURCE_EXHAUSTED size error before any of our code runs.
    let index_server = VectorIndexServer::new(service)
        .max_decoding_message_size(config.max_message_bytes)
        .max_encoding_message_size(config.max_message_bytes);
    // These wrap only VectorIndex: health and reflection must answer while it sheds, and
    // without a token. Outermost first: metrics sees every call (refused ones too); auth
    // refuses strangers before they can take a place in admission's queue.
    // The memory guard sits between auth and admission: a call refused for memory must not
    // take a queue slot, and its body is never read.
    let memory = crate::layers::memory::MemoryGuard::new(&config.memory);
    tracing::info!(limit_bytes = memory.limit(), "memory guard");
    let admitted = MetricsLayer::new(Arc::clone(&metrics)).layer(
        AuthLayer::new(config.auth_token.clone()).layer(
            crate::layers::memory::MemoryLayer::new(memory)
                .layer(AdmissionLayer::new(Arc::clone(&admission)).layer(index_server)),
        ),
    );
    let metrics_task = match config.metrics_listen {
        Some(addr) => {
            let listener = crate::layers::metrics::bind(addr)
                .await
                .map_err(ServeError::Metrics)?;
            tracing::info!(addr = %listener.local_addr().map_err(ServeError::Metrics)?, "metrics at /metrics");
            let (metrics, admission, slot, dir) = (
                Arc::clone(&metrics),
                Arc::clone(&admission),
                Arc::clone(&engine_slot),
                config.data_dir.clone(),
            );
            let render = Arc::new(move || metrics.render(&admission, &slot, &dir));
            Some(AbortOnDrop(tokio::spawn(crate::layers::metrics::serve_metrics(
                listener, render,
            ))))
        }
        None => None,
    };

    // The connection cap and handshake/idle timeouts wrap the accepted sockets.
    let incoming = net::incoming(listener, &config.connection_limits);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let mut builder = Server::builder();
    if let Some(tls) = &config.tls {
        builder = builder.tls_config(
            tonic::transport::ServerTlsConfig::new()
                .identity(tonic::transport::Identity::from_pem(&tls.cert, &tls.key))
                // A TLS handshake that stalls holds a place under the connection cap.
                .timeout(config.connection_limits.handshake_timeout),
        )?;
    }
    // HTTP/2 limits (streams, headers, resets, windows, pings) and whole-request reads.
    let router = net::apply(builder, &config)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(admitted);
    // tonic's server applies each request's `grpc-timeout` itself: a request whose deadline
    // passes while it waits in the admission queue is dropped from the queue unserved.
    let mut server = tokio::spawn(router.serve_with_incoming_shutdown(incoming, async {
        let _ = stop_rx.await;
    }));

    let open_config = config.clone();
    let opening =
        tokio::task::spawn_blocking(move || Storage::open(&open_config, open_config.snapshots));
    tokio::pin!(shutdown);
    let storage = tokio::select! {
        opened = opening => Arc::new(opened??),
        () = &mut shutdown => {
            tracing::info!("shutdown requested while starting");
            let _ = stop_tx.send(());
            let _ = tokio::time::timeout(config.grace, server).await;
            return Ok(());
        }
        finished = &mut server => {
            finished??;
            return Ok(());
        }
    };
    let _ = engine_slot.set(Arc::clone(&storage));
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
    let _ = stop_tx.send(());
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

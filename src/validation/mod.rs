//! The stress harness API: what a load run produces and how it is judged.
//!
//! - [`report`]: the versioned report schema that the loadgen writes (`--out report.json`) and
//!   that tests assert on;
//! - [`threshold`]: k6-style pass/fail expressions (`p99<500ms`, `error_rate<=0.05`) evaluated
//!   on a report;
//! - [`criteria`]: the specification's pass criteria for its five scenarios, as thresholds, and
//!   the graceful-degradation checks every run must pass;
//! - [`fault`]: the verdict of a run with a fault injected (restart, network cut, memory);
//! - [`StressTester`]: a cloneable handle that searches a target, in the spirit of the
//!   specification's `StressTester`.

pub mod criteria;
pub mod fault;
pub mod report;
pub mod threshold;

use std::time::Duration;

use tonic::Status;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::client::{ConnectError, ConnectOptions, Pool, with_deadline};
use crate::proto;

/// A cloneable handle on a target server.
#[derive(Debug, Clone)]
pub struct StressTester {
    pool: Pool,
    deadline: Duration,
}

impl StressTester {
    /// Connects to `target` (`http://host:port`).
    pub async fn connect(target: &str, options: &ConnectOptions) -> Result<Self, ConnectError> {
        Ok(Self {
            pool: Pool::connect(target, options).await?,
            deadline: Duration::from_secs(30),
        })
    }

    /// The same handle with another per-request deadline.
    pub fn with_deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// The connection pool.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Searches for the 10 points nearest to `text`.
    pub async fn search(&self, text: &str) -> Result<proto::SearchResponse, Status> {
        let request = proto::SearchRequest {
            query: Some(proto::search_request::Query::Text(text.to_string())),
            k: 10,
            ..Default::default()
        };
        self.pool
            .client()
            .search(with_deadline(request, self.deadline))
            .await
            .map(|r| r.into_inner())
    }

    /// The server's `Stats`.
    pub async fn stats(&self) -> Result<proto::StatsResponse, Status> {
        self.pool
            .client()
            .stats(with_deadline(proto::StatsRequest {}, self.deadline))
            .await
            .map(|r| r.into_inner())
    }

    /// The server's overall health.
    pub async fn health(&self) -> Result<ServingStatus, Status> {
        HealthClient::new(self.pool.channel())
            .check(with_deadline(
                HealthCheckRequest {
                    service: String::new(),
                },
                self.deadline,
            ))
            .await
            .map(|r| r.into_inner().status())
    }
}

//! `vecrig-server --probe`: asks a running server's `grpc.health.v1` whether it is SERVING and
//! exits 0 if it is, 1 if not. It is the container health check: the server's own binary
//! checks the server, so the image needs no extra tool (no shell, no grpc_health_probe).
//!
//! It reads the same flags (or `VECRIG_*` variables) as the server it checks, so in a
//! container `vecrig-server --probe` needs no arguments: it dials `--listen` (a wildcard
//! address becomes loopback) and, when the server serves TLS, trusts the server's own
//! certificate for `--probe-tls-domain`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use vecrig::client::{ConnectOptions, endpoint, with_deadline};

/// The probe's flags (flattened into the server's).
#[derive(Debug, Clone, clap::Args)]
#[group(skip)]
pub struct Args {
    /// Do not serve: check the health of the server at --listen and exit 0 if it is SERVING,
    /// 1 otherwise (a container health check).
    #[arg(long, env = "VECRIG_PROBE")]
    pub probe: bool,
    /// How long the probe waits for an answer.
    #[arg(long, env = "VECRIG_PROBE_TIMEOUT", default_value = "3s", value_parser = humantime::parse_duration)]
    pub probe_timeout: Duration,
    /// With TLS: the name the probe verifies the server's certificate against.
    #[arg(long, env = "VECRIG_PROBE_TLS_DOMAIN", default_value = "localhost")]
    pub probe_tls_domain: String,
}

/// Why the probe failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// No connection.
    #[error("cannot reach {target}: {reason}")]
    Unreachable {
        /// Where the probe dialled.
        target: String,
        /// The transport's error.
        reason: String,
    },
    /// The health service answered with an error.
    #[error("{target}: health check failed: {status}")]
    Failed {
        /// Where the probe dialled.
        target: String,
        /// The status.
        status: tonic::Status,
    },
    /// The server answered but is not serving.
    #[error("{target} is {status}")]
    NotServing {
        /// Where the probe dialled.
        target: String,
        /// What health said.
        status: &'static str,
    },
}

/// The address to dial for a server listening on `listen`: a wildcard becomes loopback.
pub fn dial_address(listen: SocketAddr) -> SocketAddr {
    let ip = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, listen.port())
}

/// Checks the server on `listen`; `tls` is the server's own certificate when it serves TLS.
pub async fn check(
    listen: SocketAddr,
    tls: Option<(&[u8], &str)>,
    timeout: Duration,
) -> Result<(), ProbeError> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let target = format!("{scheme}://{}", dial_address(listen));
    let options = ConnectOptions {
        connections: 1,
        connect_timeout: timeout,
        ca_cert: tls.map(|(cert, _)| cert.to_vec()),
        tls_domain: tls.map(|(_, domain)| domain.to_string()),
        ..ConnectOptions::default()
    };
    let unreachable = |reason: String| ProbeError::Unreachable {
        target: target.clone(),
        reason,
    };
    let channel = endpoint(&target, &options)
        .map_err(|e| unreachable(e.to_string()))?
        .connect()
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    let request = with_deadline(
        HealthCheckRequest {
            service: String::new(),
        },
        timeout,
    );
    let answer = tokio::time::timeout(timeout, HealthClient::new(channel).check(request))
        .await
        .map_err(|_| unreachable(format!("no answer within {timeout:?}")))?
        .map_err(|status| ProbeError::Failed {
            target: target.clone(),
            status,
        })?;
    match answer.into_inner().status() {
        ServingStatus::Serving => Ok(()),
        other => Err(ProbeError::NotServing {
            target,
            status: other.as_str_name(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_dial_loopback() {
        let dial = |s: &str| dial_address(s.parse().expect("addr")).to_string();
        assert_eq!(dial("0.0.0.0:50051"), "127.0.0.1:50051");
        assert_eq!(dial("[::]:7"), "[::1]:7");
        assert_eq!(dial("10.1.2.3:9"), "10.1.2.3:9");
    }

    #[tokio::test]
    async fn nothing_listening_is_unreachable() {
        // A port that was free a moment ago: bind, note it, close.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let listen = SocketAddr::from(([127, 0, 0, 1], port));
        let error = check(listen, None, Duration::from_secs(2))
            .await
            .expect_err("nothing serves there");
        assert!(matches!(error, ProbeError::Unreachable { .. }), "{error}");
    }
}

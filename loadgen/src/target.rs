//! Reaching the target: a pre-flight check that fails fast with a clear message, and an
//! optional local server spawned for a one-command run.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use vecrig::client::{ConnectError, ConnectOptions, Metadata, Pool, request_with, with_deadline};
use vecrig::proto::{StatsRequest, StatsResponse};

/// Why the target cannot be load-tested.
#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    /// Nothing answers at the address.
    #[error("{}", unreachable(.0))]
    Unreachable(#[from] ConnectError),
    /// The health service says the server is not serving.
    #[error(
        "target {target} is not healthy: health says {status} after waiting {waited:?} (still loading? raise --wait-healthy)"
    )]
    Unhealthy {
        /// The target.
        target: String,
        /// The last status seen.
        status: String,
        /// How long we waited for SERVING.
        waited: Duration,
    },
    /// The server does not speak vecrig.v1.
    #[error(
        "target {target} does not serve vecrig.v1.VectorIndex ({code:?}: {message}); is it a vecrig server?"
    )]
    WrongApi {
        /// The target.
        target: String,
        /// The code its Stats call returned.
        code: Code,
        /// The message.
        message: String,
    },
    /// A templated target's descriptors, templates or probe did not check out.
    #[error("templated target: {0}")]
    Templated(#[from] crate::dynamic::DynamicError),
    /// The run asks for something the target or its transport cannot do.
    #[error("{0}")]
    Unsupported(String),
    /// A dataset file is missing, malformed, or does not fit the target.
    #[error("{0}")]
    Dataset(#[from] vecrig::dataset::Error),
    /// The threads that send the load could not be started (out of threads or memory).
    #[error("cannot start the sending threads: {0}")]
    Threads(std::io::Error),
}

/// `error` and the chain of errors below it, on one line: a transport's own message ("transport
/// error") says nothing of the refused connection or unknown host beneath it.
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        let next = inner.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        cause = inner.source();
    }
    text
}

/// Why a target could not be reached, and what to check.
fn unreachable(error: &ConnectError) -> String {
    let causes = with_causes(error);
    let check = if causes.contains("certificate") {
        "does --ca-cert trust the server's certificate, and --tls-domain match its name?"
    } else {
        "is the server up, and is --target right?"
    };
    format!("{causes}: {check}")
}

/// A checked target: its connections and what it said about itself.
#[derive(Debug, Clone)]
pub struct Checked {
    /// Connections for the load.
    pub pool: Pool,
    /// A separate connection for sampling `Stats`.
    pub monitor: Pool,
    /// The server's `Stats` before the run.
    pub stats: StatsResponse,
}

/// Connects, waits up to `wait` for health to say SERVING, and checks that the target
/// answers vecrig's `Stats`.
pub async fn preflight(
    target: &str,
    options: &ConnectOptions,
    metadata: &Metadata,
    wait: Duration,
) -> Result<Checked, PreflightError> {
    let (pool, monitor) = connect_healthy(target, options, wait).await?;
    let stats = monitor
        .client()
        .stats(request_with(
            StatsRequest {},
            Duration::from_secs(10),
            metadata,
        ))
        .await
        .map_err(|s| PreflightError::WrongApi {
            target: target.to_string(),
            code: s.code(),
            message: s.message().to_string(),
        })?
        .into_inner();
    Ok(Checked {
        pool,
        monitor,
        stats,
    })
}

/// Connects (the load's pool, and one connection off the load for everything else) and waits
/// up to `wait` for `grpc.health.v1` to say SERVING; a target without the health service
/// passes (what it serves is checked next, by `Stats` or a templated probe).
pub async fn connect_healthy(
    target: &str,
    options: &ConnectOptions,
    wait: Duration,
) -> Result<(Pool, Pool), PreflightError> {
    let pool = Pool::connect(target, options).await?;
    let monitor = Pool::connect(
        target,
        &ConnectOptions {
            connections: 1,
            ..options.clone()
        },
    )
    .await?;
    let started = Instant::now();
    loop {
        let answer = HealthClient::new(monitor.channel())
            .check(with_deadline(
                HealthCheckRequest {
                    service: String::new(),
                },
                Duration::from_secs(5),
            ))
            .await;
        let status = match answer {
            Ok(r) if r.get_ref().status() == ServingStatus::Serving => break,
            Ok(r) => r.get_ref().status().as_str_name().to_string(),
            // A server without the health service: let the Stats check decide.
            Err(s) if s.code() == Code::Unimplemented => break,
            Err(s) => format!("{:?} ({})", s.code(), s.message()),
        };
        if started.elapsed() >= wait {
            return Err(PreflightError::Unhealthy {
                target: target.to_string(),
                status,
                waited: started.elapsed(),
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok((pool, monitor))
}

/// A `vecrig-server` process started for this run, stopped with SIGTERM when dropped.
#[derive(Debug)]
pub struct LocalServer {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub target: String,
    /// `http://ADDR/metrics`, when started with `--metrics-listen` (read from the server's
    /// `metrics on ADDR` line, so port 0 works).
    pub metrics_url: Option<String>,
    _data_dir: Option<tempfile::TempDir>,
}

/// Why a local server could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// The binary could not be run.
    #[error("cannot start {path}: {source}")]
    Start {
        /// The binary.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Its log file could not be created.
    #[error("cannot write the server's log {path}: {source}")]
    Log {
        /// The log file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// It did not print `listening on ADDR`.
    #[error("{path} did not report its address: {reason}")]
    NoAddress {
        /// The binary.
        path: PathBuf,
        /// What happened instead.
        reason: String,
    },
}

/// The `vecrig-server` next to this executable (where cargo puts both).
pub fn sibling_server_binary() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("vecrig-server")))
        .unwrap_or_else(|| PathBuf::from("vecrig-server"))
}

impl LocalServer {
    /// Starts `binary` on 127.0.0.1 with a free port, `preload` synthetic points and
    /// `data_dir` (a temporary directory when `None`), plus `extra` arguments. Its log goes
    /// to `log` (created or truncated) so that it never interleaves with a report on the
    /// terminal, or, when `None`, to this process's stderr.
    pub async fn spawn(
        binary: &Path,
        preload: u64,
        data_dir: Option<&Path>,
        log: Option<&Path>,
        extra: &[String],
    ) -> Result<Self, SpawnError> {
        let stderr = match log {
            Some(path) => {
                Stdio::from(
                    std::fs::File::create(path).map_err(|source| SpawnError::Log {
                        path: path.to_path_buf(),
                        source,
                    })?,
                )
            }
            None => Stdio::inherit(),
        };
        let temp = match data_dir {
            Some(_) => None,
            None => Some(tempfile::tempdir().map_err(|source| SpawnError::Start {
                path: binary.to_path_buf(),
                source,
            })?),
        };
        let dir = data_dir
            .map(Path::to_path_buf)
            .or_else(|| temp.as_ref().map(|t| t.path().to_path_buf()))
            .unwrap_or_default();
        let mut child = Command::new(binary)
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(&dir)
            .arg("--preload")
            .arg(preload.to_string())
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| SpawnError::Start {
                path: binary.to_path_buf(),
                source,
            })?;
        let no_address = |reason: String| SpawnError::NoAddress {
            path: binary.to_path_buf(),
            reason,
        };
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| no_address("no stdout".into()))?;
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .map_err(|_| no_address("nothing printed within 30 s".into()))?
            .map_err(|e| no_address(e.to_string()))?
            .ok_or_else(|| {
                no_address(match log {
                    Some(path) => format!("it exited; see its log {}", path.display()),
                    None => "it exited".into(),
                })
            })?;
        let addr = line
            .strip_prefix("listening on ")
            .ok_or_else(|| no_address(format!("unexpected first line {line:?}")))?
            .to_string();
        let metrics_url = match extra.iter().any(|arg| arg == "--metrics-listen") {
            true => {
                let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
                    .await
                    .map_err(|_| no_address("no metrics address within 30 s".into()))?
                    .map_err(|e| no_address(e.to_string()))?
                    .unwrap_or_default();
                let metrics = line
                    .strip_prefix("metrics on ")
                    .ok_or_else(|| no_address(format!("unexpected second line {line:?}")))?;
                Some(format!("http://{metrics}/metrics"))
            }
            false => None,
        };
        // Keep draining its stdout so the server never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Self {
            child,
            target: format!("http://{addr}"),
            metrics_url,
            _data_dir: temp,
        })
    }

    /// Stops the server gracefully (SIGTERM, so it drains and saves), killing it if it has
    /// not exited within `grace`.
    pub async fn stop(mut self, grace: Duration) {
        if let Some(pid) = self.child.id() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        if tokio::time::timeout(grace, self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// Copies a server's data directory (snapshots, the log and its segments) into `to`, so that
/// several servers can start from one index built once.
pub fn copy_data_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_data_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

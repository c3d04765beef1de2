//! `vecrig-server`: parse flags, set up logging, bind, serve until SIGINT/SIGTERM.

use std::io::Write;

use anyhow::Context;
use clap::Parser;
use tracing_subscriber::EnvFilter;
use vecrig_server::config::{Args, Config};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_new(&args.log).context("--log")?)
        .with_writer(std::io::stderr)
        .init();
    let config = Config::try_from(&args)?;
    if args.probe.probe {
        let tls = config.tls.as_ref();
        let tls = tls.map(|t| (t.cert.as_slice(), args.probe.probe_tls_domain.as_str()));
        vecrig_server::probe::check(args.listen, tls, args.probe.probe_timeout).await?;
        return Ok(());
    }
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    let metrics = match config.metrics_listen {
        Some(metrics_addr) => Some(
            vecrig_server::layers::metrics::bind(metrics_addr)
                .await
                .with_context(|| format!("cannot listen on {metrics_addr} for metrics"))?,
        ),
        None => None,
    };
    // Scripts and tests read the real ports from these lines (port 0 picks a free one).
    println!("listening on {addr}");
    if let Some(metrics) = &metrics {
        println!("metrics on {}", metrics.local_addr()?);
    }
    std::io::stdout().flush()?;
    let shutdown = vecrig_server::shutdown_signal();
    vecrig_server::serve_on(listener, metrics, config, shutdown).await?;
    Ok(())
}

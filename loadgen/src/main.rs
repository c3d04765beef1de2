//! `vecrig-loadgen`: parse flags, optionally start a local server, run, report, exit with a
//! code that says how it went.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use vecrig_loadgen::cli::{self, Cli};
use vecrig_loadgen::engine::Stop;
use vecrig_loadgen::target::{LocalServer, sibling_server_binary};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("VECRIG_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    ExitCode::from(run(cli).await as u8)
}

async fn run(cli: Cli) -> i32 {
    let local = match cli.spawn_server {
        false => None,
        true => {
            let path = cli
                .server_binary
                .clone()
                .unwrap_or_else(sibling_server_binary);
            match LocalServer::spawn(&path, cli.spawn_preload, cli.spawn_data_dir.as_deref(), &[])
                .await
            {
                Ok(server) => {
                    eprintln!("started {} at {}", path.display(), server.target);
                    Some(server)
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    return cli::EXIT_ERROR;
                }
            }
        }
    };
    let target = local
        .as_ref()
        .map_or(cli.target.clone(), |s| s.target.clone());

    let stop = Stop::default();
    let on_ctrl_c = stop.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!(
                "interrupted: finishing requests in flight, then reporting (Ctrl-C again to quit)"
            );
            on_ctrl_c.stop();
            if tokio::signal::ctrl_c().await.is_ok() {
                std::process::exit(cli::EXIT_INTERRUPTED);
            }
        }
    });

    let result = vecrig_loadgen::run(&cli.run_options(&target), &cli.plan(), &stop).await;
    if let Some(server) = local {
        server.stop(Duration::from_secs(30)).await;
    }
    let report = match result {
        Ok(report) => report,
        Err(e) => {
            eprintln!("error: {e}");
            return cli::EXIT_TARGET;
        }
    };
    print!("{}", vecrig_loadgen::report::render(&report));
    let _ = std::io::stdout().flush();
    if let Some(path) = &cli.out {
        let written = serde_json::to_vec_pretty(&report)
            .map_err(std::io::Error::other)
            .and_then(|json| std::fs::write(path, json));
        if let Err(e) = written {
            eprintln!("error: cannot write {}: {e}", path.display());
            return cli::EXIT_ERROR;
        }
        eprintln!("report written to {}", path.display());
    }
    if report.interrupted {
        cli::EXIT_INTERRUPTED
    } else if report.passed {
        cli::EXIT_PASSED
    } else {
        cli::EXIT_THRESHOLDS
    }
}

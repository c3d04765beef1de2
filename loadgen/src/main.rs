//! `vecrig-loadgen`: parse flags, optionally start a local server, run, report, exit with a
//! code that says how it went.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use vecrig_loadgen::RunOptions;
use vecrig_loadgen::cli::{self, Cli};
use vecrig_loadgen::compare;
use vecrig_loadgen::scheduler::Stop;
use vecrig_loadgen::target::{LocalServer, sibling_server_binary};

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("VECRIG_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    // The load is sent by threads of its own (scheduler::senders, --threads); this runtime runs
    // pre-flight, the Stats monitor and progress, for which one thread is plenty. With
    // `--transport tonic` the connections live here, so it gets the threads instead.
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    match cli.transport {
        vecrig_loadgen::wire::Transport::H2 => {
            runtime.worker_threads(1);
        }
        vecrig_loadgen::wire::Transport::Tonic if cli.threads > 0 => {
            runtime.worker_threads(cli.threads);
        }
        vecrig_loadgen::wire::Transport::Tonic => {}
    }
    match runtime.enable_all().build() {
        Ok(runtime) => ExitCode::from(runtime.block_on(run(cli)) as u8),
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            ExitCode::from(cli::EXIT_ERROR as u8)
        }
    }
}

async fn run(mut cli: Cli) -> i32 {
    if let Err(e) = vecrig_loadgen::distributed::prepare(
        &mut cli.sharding,
        cli.wait_healthy,
        [&mut cli.out, &mut cli.html, &mut cli.hdr_log],
    )
    .await
    {
        eprintln!("error: {e}");
        return cli::EXIT_ERROR;
    }
    if let cli::Command::Merge { reports } = &cli.command {
        return merge(&cli, reports);
    }
    if let cli::Command::Compare {
        reports,
        new,
        tolerances,
    } = &cli.command
    {
        let outputs = compare::Outputs {
            json: cli.out.as_deref(),
            html: cli.html.as_deref(),
        };
        return exit_code(compare::command(reports, new, tolerances.clone(), outputs));
    }
    // A baseline that cannot be read fails now, not after the run.
    let baselines = compare::read_reports(&cli.baseline).map_err(|e| e.to_string());
    let tolerances = match cli.baseline.is_empty() {
        true => Ok(Vec::new()),
        false => compare::tolerances_from_env().map_err(|e| e.to_string()),
    };
    let (baselines, tolerances) = match (baselines, tolerances) {
        (Ok(b), Ok(t)) => (b, t),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("error: {e}");
            return cli::EXIT_ERROR;
        }
    };
    let local = match cli.spawn_server {
        false => None,
        true => {
            let path = cli
                .server_binary
                .clone()
                .unwrap_or_else(sibling_server_binary);
            let log = cli.spawn_log();
            let data_dir = cli.spawn_data_dir.as_deref();
            match LocalServer::spawn(&path, cli.spawn_preload, data_dir, Some(&log), &[]).await {
                Ok(server) => {
                    eprintln!(
                        "started {} at {} (its log: {})",
                        path.display(),
                        server.target,
                        log.display()
                    );
                    Some((server, log))
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
        .map_or(cli.target.clone(), |(s, _)| s.target.clone());

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

    let options = match cli.run_options(&target) {
        Ok(options) => RunOptions {
            server_log: local.as_ref().map(|(_, log)| log.clone()),
            ..options
        },
        Err(e) => {
            eprintln!("error: {e}");
            return cli::EXIT_ERROR;
        }
    };
    let result = match &cli.command {
        cli::Command::Run {
            file,
            protos,
            proto_path,
            check,
        } => {
            let planned = std::fs::read_to_string(file)
                .map_err(|e| format!("cannot read {}: {e}", file.display()))
                .and_then(|text| {
                    vecrig_loadgen::plan::file::Planned::parse(&text, cli.profile)
                        .map(|p| p.relative_to(file.parent().unwrap_or(Path::new("."))))
                        .and_then(|p| p.with_protos(protos, proto_path))
                        .map_err(|e| e.to_string())
                });
            match planned {
                Ok(planned) if *check => {
                    return match vecrig_loadgen::check_file(&options, &planned, &cli.plan()).await {
                        Ok(summary) => {
                            println!("{summary}");
                            0
                        }
                        Err(e) => {
                            eprintln!("error: {e}");
                            cli::EXIT_ERROR
                        }
                    };
                }
                Ok(planned) => {
                    vecrig_loadgen::run_file(&options, &planned, &cli.plan(), &stop).await
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    return cli::EXIT_ERROR;
                }
            }
        }
        _ => match cli.fault_run() {
            Some(fault) => vecrig_loadgen::fault::run(&options, &cli.plan(), &fault, &stop).await,
            None => vecrig_loadgen::run(&options, &cli.plan(), &stop).await,
        },
    };
    if let Some((server, _)) = local {
        server.stop(Duration::from_secs(30)).await;
    }
    let report = match result {
        Ok(report) => report,
        // A templated target that does not fit its templates is the run's mistake, not the
        // target's absence: the exit code of a bad flag or file.
        Err(
            e @ (vecrig_loadgen::target::PreflightError::Templated(_)
            | vecrig_loadgen::target::PreflightError::Unsupported(_)
            | vecrig_loadgen::target::PreflightError::Dataset(_)),
        ) => {
            eprintln!("error: {e}");
            return cli::EXIT_ERROR;
        }
        Err(e) => {
            eprintln!("error: {e}");
            return cli::EXIT_TARGET;
        }
    };
    let code = finish(&cli, &report);
    if baselines.is_empty() || code == cli::EXIT_INTERRUPTED {
        return code;
    }
    let judged = compare::gate(
        &baselines,
        &[("this run", &report)],
        tolerances,
        compare::Outputs::default(),
    );
    worse(code, exit_code(judged))
}

fn exit_code(outcome: compare::Outcome) -> i32 {
    match outcome {
        compare::Outcome::NoRegression => cli::EXIT_PASSED,
        compare::Outcome::Regression => cli::EXIT_THRESHOLDS,
        compare::Outcome::Incomparable => cli::EXIT_ERROR,
    }
}

/// The worse of two exit codes: an error (nothing judged) over a failed verdict over a pass.
fn worse(a: i32, b: i32) -> i32 {
    let rank = |code| match code {
        cli::EXIT_PASSED => 0,
        cli::EXIT_THRESHOLDS => 1,
        _ => 2,
    };
    if rank(b) > rank(a) { b } else { a }
}

/// `merge`: read the shards' reports, combine, print, write, exit by the verdict.
fn merge(cli: &Cli, paths: &[std::path::PathBuf]) -> i32 {
    let paths = match vecrig_loadgen::distributed::report_files(paths) {
        Ok(paths) => paths,
        Err(e) => {
            eprintln!("error: {e}");
            return cli::EXIT_ERROR;
        }
    };
    let mut reports = Vec::new();
    for path in &paths {
        let parsed = std::fs::read(path)
            .map_err(|e| e.to_string())
            .and_then(|bytes| serde_json::from_slice(&bytes).map_err(|e| e.to_string()));
        match parsed {
            Ok(report) => reports.push(report),
            Err(e) => {
                eprintln!("error: {}: {e}", path.display());
                return cli::EXIT_ERROR;
            }
        }
    }
    if let Err(e) = vecrig_loadgen::distributed::check_complete(&reports) {
        eprintln!("error: {e}");
        return cli::EXIT_ERROR;
    }
    match vecrig_loadgen::report::merge::merge(&reports) {
        Ok(report) => finish(cli, &report),
        Err(e) => {
            eprintln!("error: {e}");
            cli::EXIT_ERROR
        }
    }
}

/// Prints the report, writes `--out`, and turns the verdict into the exit code.
fn finish(cli: &Cli, report: &vecrig::validation::report::Report) -> i32 {
    print!("{}", vecrig_loadgen::report::text::render(report));
    let _ = std::io::stdout().flush();
    if let Some(path) = &cli.out {
        let written = serde_json::to_vec_pretty(report)
            .map_err(std::io::Error::other)
            .and_then(|json| std::fs::write(path, json));
        if let Err(e) = written {
            eprintln!("error: cannot write {}: {e}", path.display());
            return cli::EXIT_ERROR;
        }
        eprintln!("report written to {}", path.display());
    }
    if let Some(path) = &cli.html {
        if let Err(e) = std::fs::write(path, vecrig_loadgen::report::html::render(report)) {
            eprintln!("error: cannot write {}: {e}", path.display());
            return cli::EXIT_ERROR;
        }
        eprintln!("HTML report written to {}", path.display());
    }
    if let Some(path) = &cli.hdr_log {
        let written = std::fs::File::create(path)
            .map_err(|e| e.to_string())
            .and_then(|mut f| vecrig_loadgen::report::text::write_interval_log(report, &mut f));
        if let Err(e) = written {
            eprintln!("error: cannot write {}: {e}", path.display());
            return cli::EXIT_ERROR;
        }
        eprintln!("histogram log written to {}", path.display());
    }
    if report.interrupted {
        cli::EXIT_INTERRUPTED
    } else if report.passed {
        cli::EXIT_PASSED
    } else {
        cli::EXIT_THRESHOLDS
    }
}

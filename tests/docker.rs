//! The docker-compose stress environment, for real: builds the images from the release
//! binaries (`docker/build-images.sh`, nothing pulled), brings `compose.yaml` up under a
//! project name of its own, runs a short suite on two scaled loadgen replicas and merges their
//! reports, then the three fault scenarios through `docker/fault.sh` (the server killed and
//! restarted, the network cut and restored, the server pushed against its memory limit), and
//! asserts the verdicts in the loadgens' JSON reports.
//!
//! Containers, networks, volumes and the test's images are removed when the test ends, passed
//! or failed ([`Environment`]'s `Drop`). Where no Docker engine or no Compose answers, the test
//! says it skipped and passes. It needs `target/release` built first, as README's test command
//! (`scripts/test`) does. It takes about three minutes.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use vecrig::validation::fault::{FaultKind, FaultVerdict};
use vecrig::validation::report::Report;

/// The repository: compose.yaml and docker/ are here.
fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `docker compose` if the plugin answers, else `docker-compose`, else none.
fn compose_program() -> Option<Vec<&'static str>> {
    let answers = |program: &str, args: &[&str]| {
        Command::new(program)
            .args(args)
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if answers("docker", &["compose", "version"]) {
        Some(vec!["docker", "compose"])
    } else if answers("docker-compose", &["version"]) {
        Some(vec!["docker-compose"])
    } else {
        None
    }
}

fn docker_answers() -> Result<(), String> {
    match Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .output()
    {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(String::from_utf8_lossy(&o.stderr).trim().to_string()),
        Err(e) => Err(format!("docker: {e}")),
    }
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Runs `command`, panicking with its output if it fails.
fn check(command: &mut Command) -> String {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed ({}):\n{}",
        output.status,
        text(&output)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// This process's uid:gid, so the loadgens write reports this test can delete.
fn uid_gid() -> String {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let first = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or("0")
            .to_string()
    };
    format!("{}:{}", first("Uid:"), first("Gid:"))
}

/// One compose project, torn down (with its volumes and the test's images) on drop.
struct Environment {
    program: Vec<&'static str>,
    project: String,
    tag: String,
    reports: tempfile::TempDir,
    env: Vec<(String, String)>,
}

impl Environment {
    fn new(program: Vec<&'static str>) -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let project = format!("vecrigtest{}x{nanos}", std::process::id());
        let reports = tempfile::tempdir().expect("reports dir");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let env = [
            ("COMPOSE_PROJECT_NAME", project.clone()),
            ("VECRIG_TAG", project.clone()),
            ("VECRIG_REPORTS", reports.path().display().to_string()),
            ("VECRIG_PUBLISH", format!("127.0.0.1:{port}")),
            ("VECRIG_USER", uid_gid()),
            ("VECRIG_PRELOAD", "2000".into()),
            ("VECRIG_SERVER_CPUS", "1.5".into()),
            ("VECRIG_SERVER_MEMORY", "512m".into()),
            ("VECRIG_LOADGEN_CPUS", "1".into()),
            ("VECRIG_LOADGEN_MEMORY", "512m".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        Self {
            tag: project.clone(),
            program,
            project,
            reports,
            env,
        }
    }

    /// A command in the repository with this environment's variables and `extra`, and no
    /// VECRIG_* or COMPOSE_* variable of the caller's (they would change what runs).
    fn command(&self, program: &str, args: &[&str], extra: &[(&str, &str)]) -> Command {
        let mut command = Command::new(program);
        command.args(args).current_dir(repo());
        for (key, _) in std::env::vars() {
            if key.starts_with("VECRIG_") || key.starts_with("COMPOSE_") {
                command.env_remove(key);
            }
        }
        command.envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        command.envs(extra.iter().copied());
        command
    }

    fn compose(&self, args: &[&str], extra: &[(&str, &str)]) -> Command {
        let mut all: Vec<&str> = self.program[1..].to_vec();
        all.extend_from_slice(args);
        self.command(self.program[0], &all, extra)
    }

    fn report(&self, path: &str) -> Report {
        let path = self.reports.path().join(path);
        let bytes = std::fs::read(&path)
            .unwrap_or_else(|e| panic!("no report at {}: {e}\n{}", path.display(), self.logs()));
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("{} is not a report: {e}", path.display()))
    }

    fn logs(&self) -> String {
        self.compose(&["logs", "--no-color", "--tail", "60"], &[])
            .output()
            .map(|o| text(&o))
            .unwrap_or_default()
    }

    fn container(&self, service: &str) -> String {
        check(&mut self.compose(&["ps", "-q", service], &[]))
    }

    fn inspect(&self, container: &str, format: &str) -> String {
        check(Command::new("docker").args(["inspect", "-f", format, container]))
    }

    /// Waits (bounded) until `container` exits; its exit code.
    fn wait_exit(&self, container: &str, limit: Duration) -> i64 {
        let started = Instant::now();
        loop {
            let state = self.inspect(container, "{{.State.Running}} {{.State.ExitCode}}");
            if let Some(code) = state.strip_prefix("false ") {
                return code.trim().parse().unwrap_or(-1);
            }
            assert!(
                started.elapsed() < limit,
                "{container} still running after {limit:?}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

impl Drop for Environment {
    fn drop(&mut self) {
        // Whatever happened: containers, networks and volumes of the project, then our images.
        let down = self
            .compose(
                &[
                    "--profile",
                    "merge",
                    "down",
                    "-v",
                    "--remove-orphans",
                    "-t",
                    "5",
                ],
                &[],
            )
            .output();
        if let Ok(o) = &down
            && !o.status.success()
        {
            eprintln!("docker test: tear-down failed: {}", text(o));
        }
        let images = [
            format!("vecrig-server:{}", self.tag),
            format!("vecrig-loadgen:{}", self.tag),
        ];
        let _ = Command::new("docker")
            .arg("rmi")
            .arg("-f")
            .args(&images)
            .output();
        eprintln!("docker test: removed project {}", self.project);
    }
}

/// A short suite, sharded over two replicas: each judges its half by relative thresholds.
const SHORT_SUITE: &str = r#"
[[scenario]]
name = "memory-pressure"
tasks = 10
duration = "4s"

[[scenario]]
name = "scale"
phases = "10:2s,100:3s,10:2s"

[[scenario]]
name = "steady"
model = "open"
stages = "6s:100"
workload = "vector"
thresholds = ["error_rate<=0.01", "server_faults==0"]
"#;

fn run_short_suite(env: &Environment) {
    std::fs::write(env.reports.path().join("short.toml"), SHORT_SUITE).expect("write suite");
    let vars = [
        ("VECRIG_COMMAND", "run /reports/short.toml"),
        ("VECRIG_SHARDS", "2"),
        ("VECRIG_RUN", "suite"),
    ];
    check(&mut env.compose(&["up", "-d", "--scale", "loadgen=2"], &vars));
    let replicas = env.container("loadgen");
    let replicas: Vec<&str> = replicas.lines().collect();
    assert_eq!(replicas.len(), 2, "two loadgen replicas");
    for replica in &replicas {
        let code = env.wait_exit(replica, Duration::from_secs(240));
        assert_eq!(code, 0, "a shard failed its thresholds\n{}", env.logs());
    }
    let merged = env
        .compose(&["--profile", "merge", "run", "--rm", "-T", "merge"], &vars)
        .output()
        .expect("run merge");
    assert!(merged.status.success(), "merge failed:\n{}", text(&merged));
    let report = env.report("suite/merged.json");
    let names: Vec<&str> = report.scenarios.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["memory-pressure", "scale", "steady"]);
    assert!(report.passed, "merged suite failed:\n{}", text(&merged));
    for scenario in &report.scenarios {
        assert_eq!(
            scenario.parameters.get("shard").map(String::as_str),
            Some("merged from 2")
        );
        assert!(
            scenario.total.successes > 0,
            "{} sent nothing",
            scenario.name
        );
    }
    eprintln!(
        "docker test: short suite on 2 replicas, merged: {} requests, {:.0} ok/s in 'steady'",
        report
            .scenarios
            .iter()
            .map(|s| s.total.requests)
            .sum::<u64>(),
        report.scenarios[2].total.qps
    );
}

/// Runs `docker/fault.sh KIND` and returns the loadgen's report and the fault's verdict.
fn run_fault(env: &Environment, kind: FaultKind, extra: &[(&str, &str)]) -> (Report, FaultVerdict) {
    let mut vars = vec![
        ("VECRIG_DURATION", "30s"),
        ("FAULT_AFTER", "8"),
        ("FAULT_FOR", "4"),
    ];
    vars.extend_from_slice(extra);
    // `timeout` bounds the script; the Drop guard cleans up whatever it leaves.
    let output = env
        .command("timeout", &["400", "docker/fault.sh", kind.name()], &vars)
        .output()
        .expect("run docker/fault.sh");
    let log = text(&output);
    let report = env.report(&format!("fault-{}/shard-0.json", kind.name()));
    let verdict = report.scenarios[0]
        .fault
        .clone()
        .unwrap_or_else(|| panic!("no fault verdict in the report\n{log}"));
    assert!(
        report.passed && output.status.success(),
        "fault {} failed ({}):\n{log}\n{}",
        kind.name(),
        output.status,
        env.logs()
    );
    let scenario = &report.scenarios[0];
    eprintln!(
        "docker test: fault {}: outage {:.0} s ({:?}), throughput back {:?} s after, restarts {}, longest Stats gap {:.1} s, refused {}, acked {} / verified {} / lost {}; p99 {:.0} ms, server memory max {:.0} MB",
        kind.name(),
        verdict.outage_s,
        verdict.outage_errors,
        verdict.recovery_s,
        verdict.server_restarts,
        verdict.max_stats_gap_s,
        verdict.refused,
        verdict.acks.acked,
        verdict.acks.verified,
        verdict.acks.lost,
        scenario.total.latency.p99_ms,
        scenario.server.rss_max_bytes as f64 / 1e6
    );
    (report, verdict)
}

#[test]
#[ignore = "heavy tier: builds images and runs Compose (scripts/test --heavy)"]
fn compose_environment_runs_a_suite_and_survives_faults() {
    if let Err(reason) = docker_answers() {
        crate::common::report_skip(
            "compose_environment_runs_a_suite_and_survives_faults",
            &format!("no Docker engine answers ({reason})"),
        );
        return;
    }
    let Some(program) = compose_program() else {
        crate::common::report_skip(
            "compose_environment_runs_a_suite_and_survives_faults",
            "neither `docker compose` nor `docker-compose` answers",
        );
        return;
    };
    let bin_dir: PathBuf = crate::common::process::server_binary()
        .parent()
        .map(Path::to_path_buf)
        .expect("target dir");
    assert!(
        bin_dir.join("vecrig-loadgen").exists(),
        "build first: README's test command (`scripts/test`) builds it"
    );
    let env = Environment::new(program);

    let bin_dir = bin_dir.display().to_string();
    check(&mut env.command(
        "docker/build-images.sh",
        &["--no-cargo", "--bin-dir", &bin_dir, "--tag", &env.tag],
        &[],
    ));

    run_short_suite(&env);

    let (_, restart) = run_fault(&env, FaultKind::Restart, &[]);
    assert!(restart.server_restarts >= 1);
    assert!(
        restart
            .outage_errors
            .get("UNAVAILABLE")
            .copied()
            .unwrap_or(0)
            > 0
    );
    assert!(restart.acks.acked > 0 && restart.acks.lost == 0 && restart.acks.unverified == 0);
    assert!(restart.recovery_s.is_some_and(|r| r <= 10.0));

    let (_, partition) = run_fault(&env, FaultKind::Partition, &[]);
    assert_eq!(partition.server_restarts, 0);
    assert!(partition.outage_s > 0.0);
    assert!(partition.acks.acked > 0 && partition.acks.lost == 0);
    assert!(partition.recovery_s.is_some_and(|r| r <= 10.0));

    // A small limit, so the writes reach it in seconds; the server is recreated with it.
    let (_, memory) = run_fault(&env, FaultKind::Memory, &[("VECRIG_SERVER_MEMORY", "200m")]);
    assert!(memory.refused > 0, "the server never refused a write");
    assert_eq!(memory.server_restarts, 0);
    assert!(memory.acks.acked > 0 && memory.acks.lost == 0);
    let server = env.container("server");
    assert_eq!(
        env.inspect(&server, "{{.State.OOMKilled}} {{.RestartCount}}"),
        "false 0",
        "the kernel killed the server"
    );
}

//! What a user meets on the terminal: a spawned server's log in a file of its own (named in the
//! report), and the errors of a wrong flag value, an unreachable target and a refused template,
//! each one line that says what is wrong. (A full disk's message is checked in
//! `tests/durability.rs`.)

use std::path::Path;
use std::process::Output;

use tokio::process::Command;
use vecrig::validation::report::Report;

use crate::common::process::{self, loadgen_binary};

/// The lines of `text` that say something.
fn said(text: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(text)
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(str::to_string)
        .collect()
}

async fn loadgen(args: &[&str], cwd: &Path) -> Output {
    Command::new(loadgen_binary())
        .args(args)
        .current_dir(cwd)
        .env_remove("VECRIG_TARGET")
        .output()
        .await
        .expect("run vecrig-loadgen")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spawned_server_logs_to_its_own_file_named_in_the_report() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = process::server_binary();
    let output = loadgen(
        &[
            "--spawn-server",
            "--server-binary",
            server.to_str().expect("utf-8 path"),
            "--spawn-preload",
            "500",
            "--no-progress",
            "--out",
            "run.json",
            "extreme-concurrency",
            "--users",
            "4",
            "--queries-per-user",
            "2",
        ],
        dir.path(),
    )
    .await;
    let (stdout, stderr) = (said(&output.stdout), said(&output.stderr));
    assert_eq!(output.status.code(), Some(0), "{stdout:#?}\n{stderr:#?}");

    let log = dir.path().join("run.server.log");
    let logged = std::fs::read_to_string(&log).expect("the server's log file");
    assert!(
        logged.contains("INFO"),
        "the server logged to its file: {logged}"
    );
    // Nothing the server logged reached the loadgen's terminal.
    for line in stdout.iter().chain(&stderr) {
        assert!(
            !line.contains(" INFO ") && !line.contains("vecrig_server"),
            "a server log line on the terminal: {line}"
        );
    }
    assert!(
        stdout
            .iter()
            .any(|line| line.ends_with("the spawned server's log: run.server.log")),
        "the report names the log: {stdout:#?}"
    );
    let report: Report = serde_json::from_slice(
        &std::fs::read(dir.path().join("run.json")).expect("the JSON report"),
    )
    .expect("a report");
    assert_eq!(report.server_log.as_deref(), Some("run.server.log"));
}

#[tokio::test]
async fn a_wrong_flag_value_is_one_line_naming_the_flag() {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = loadgen(&["--connections", "many", "suite"], dir.path()).await;
    assert_eq!(
        output.status.code(),
        Some(2),
        "clap's exit code for bad flags"
    );
    let said = said(&output.stderr);
    assert!(
        said[0].starts_with("error: invalid value 'many' for '--connections"),
        "{said:#?}"
    );
    // The error, then where to look: "For more information, try '--help'."
    assert!(said.len() <= 2, "{said:#?}");
}

#[tokio::test]
async fn an_unreachable_target_is_one_line_saying_what_to_check() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Port 1 on loopback: nothing listens there, and no test ever binds it.
    let output = loadgen(
        &["--target", "http://127.0.0.1:1", "--no-progress", "suite"],
        dir.path(),
    )
    .await;
    assert_eq!(
        output.status.code(),
        Some(3),
        "exit code of an unreachable target"
    );
    let said = said(&output.stderr);
    assert_eq!(said.len(), 1, "{said:#?}");
    let line = &said[0];
    assert!(
        line.starts_with("error: cannot connect to http://127.0.0.1:1"),
        "{line}"
    );
    assert!(line.to_lowercase().contains("refused"), "the cause: {line}");
    assert!(line.contains("--target"), "what to check: {line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_template_is_one_line_naming_the_field() {
    let mut command = process::server_command();
    command.args(["--dimensions", "8"]);
    let (mut server, addr) = process::spawn(command).await;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("bad.toml"),
        r#"
[target]
dimensions = 8
metric = "cosine"
search = { method = "vecrig.v1.VectorIndex/Search", ids = "hits[].id", request = '''
  {"vector": {"values": "{{vector}}"}, "k": "ten"} ''' }

[[scenario]]
name = "sustained"
"#,
    )
    .expect("write the file");
    let target = format!("http://{addr}");
    let output = loadgen(
        &["--target", &target, "--no-progress", "run", "bad.toml"],
        dir.path(),
    )
    .await;
    let said = said(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{said:#?}");
    assert_eq!(said.len(), 1, "{said:#?}");
    assert!(
        said[0].starts_with("error: ") && said[0].contains("`k`"),
        "names the field: {said:#?}"
    );
    let _ = server.kill().await;
}

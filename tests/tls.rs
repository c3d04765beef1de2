//! Remote-style targets: the loadgen against an `https://` server (rustls on both sides) with
//! a test certificate it is told to trust, and a bearer token (`--header authorization`) that
//! the server requires.

use std::time::Duration;

use vecrig::client::ConnectOptions;
use vecrig_loadgen::plan::suite::ExtremeConcurrency;
use vecrig_loadgen::scheduler::Stop;
use vecrig_loadgen::{Plan, RunOptions, ScenarioSpec};
use vecrig_server::config::{Config, Tls};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_run_with_a_test_certificate_and_headers() {
    let issued = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])
        .expect("test certificate");
    let cert = issued.cert.pem().into_bytes();
    let key = issued.signing_key.serialize_pem().into_bytes();

    let data = tempfile::tempdir().expect("tempdir");
    let mut config = Config::new(data.path(), 16);
    config.preload = 500;
    config.tls = Some(Tls {
        cert: cert.clone(),
        key,
    });
    // Auth on too: the run below only passes because its header carries the token.
    config.auth_token = Some(vecrig_server::layers::auth::Token::new("test-token").expect("token"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(vecrig_server::serve(listener, config, async {
        let _ = stopped.await;
    }));

    let mut options = RunOptions::new(format!("https://localhost:{port}"));
    options.connect = ConnectOptions {
        ca_cert: Some(cert.clone()),
        ..ConnectOptions::default()
    };
    options.wait_healthy = Duration::from_secs(60);
    options.headers = vec![
        vecrig_loadgen::cli::parse_header("authorization: Bearer test-token").expect("header"),
    ];
    let plan = Plan::new(vec![ScenarioSpec::ExtremeConcurrency(ExtremeConcurrency {
        users: 20,
        queries_per_user: 5,
        think: Duration::ZERO,
    })]);
    let report = vecrig_loadgen::run(&options, &plan, &Stop::default())
        .await
        .expect("pre-flight over TLS");
    let total = &report.scenarios[0].total;
    assert_eq!(total.requests, 100);
    assert_eq!(total.successes, 100, "{:?}", total.codes);

    // Without the test CA the certificate is not trusted: pre-flight fails fast and says so.
    let mut untrusted = RunOptions::new(format!("https://localhost:{port}"));
    untrusted.wait_healthy = Duration::from_secs(2);
    let error = vecrig_loadgen::run(&untrusted, &plan, &Stop::default())
        .await
        .expect_err("an untrusted certificate is refused");
    assert!(
        error.to_string().contains("certificate") && error.to_string().contains("--ca-cert"),
        "says why, and what to check: {error}"
    );

    let _ = stop.send(());
    server.await.expect("server task").expect("server");
}

//! Admission under pressure, over a real socket: bearer-token auth in front of it, requests
//! priced by cost (exact scans cannot starve cheap searches), deadlines that cannot be met
//! refused before any work, queue wait bounded in time, shed answers carrying
//! `grpc-retry-pushback-ms`, and the Prometheus endpoint counting all of it.

use std::time::{Duration, Instant};

use crate::common::{TestServer, metrics};
use hdrhistogram::Histogram;
use tonic::Code;
use vecrig::client::{ConnectOptions, Pool, with_deadline};
use vecrig::proto::{self, search_request};
use vecrig::synthetic::Synthetic;
use vecrig_loadgen::plan::scenario::Stage;
use vecrig_loadgen::plan::suite::{Load, LoadModel};
use vecrig_loadgen::scheduler::Stop;
use vecrig_loadgen::{Plan, RunOptions, ScenarioSpec};

const DIMS: usize = 64;

fn search(values: Vec<f32>, exact: bool) -> proto::SearchRequest {
    proto::SearchRequest {
        query: Some(search_request::Query::Vector(proto::Vector { values })),
        k: 10,
        exact,
        ..Default::default()
    }
}

/// Four connections to `server`, so that many users' streams are spread as a real client's.
async fn pool_of(server: &TestServer) -> Pool {
    Pool::connect(
        &server.target(),
        &ConnectOptions {
            connections: 4,
            ..ConnectOptions::default()
        },
    )
    .await
    .expect("pool")
}

/// The body of the server's metrics endpoint.
async fn scrape(addr: std::net::SocketAddr) -> String {
    metrics::scrape(addr)
        .await
        .expect("metrics endpoint answers 200")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_refuses_calls_without_the_token_and_leaves_health_open() {
    let (mut config, temp) = TestServer::config(16);
    config.preload = 300;
    config.auth_token = Some(vecrig_server::layers::auth::Token::new("s3cret").expect("token"));
    let server = TestServer::start_in(config, temp).await;
    let query = || search(vec![0.5; 16], false);

    let mut client = server.client().await;
    let status = client.search(query()).await.expect_err("no token");
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(!status.message().contains("s3cret"));
    let mut wrong = tonic::Request::new(query());
    wrong
        .metadata_mut()
        .insert("authorization", "Bearer s3creT".parse().expect("ascii"));
    assert_eq!(
        client.search(wrong).await.expect_err("wrong token").code(),
        Code::Unauthenticated
    );
    let stats = client
        .stats(proto::StatsRequest {})
        .await
        .expect_err("stats too");
    assert_eq!(stats.code(), Code::Unauthenticated);
    // Probes hold no token and must still see the server.
    assert_eq!(
        server.health_status().await,
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );

    // The loadgen with the header runs clean; without it, pre-flight says why it cannot.
    let load = || {
        Plan::new(vec![ScenarioSpec::Load(Load {
            model: LoadModel::Open,
            start: 100.0,
            stages: vec![Stage {
                duration: Duration::from_secs(2),
                target: 100.0,
            }],
            max_in_flight: 100,
            think: Duration::ZERO,
        })])
    };
    let mut options = RunOptions::new(server.target());
    options.headers =
        vec![vecrig_loadgen::cli::parse_header("authorization: Bearer s3cret").expect("header")];
    let report = vecrig_loadgen::run(&options, &load(), &Stop::default())
        .await
        .expect("pre-flight with the token");
    let total = &report.scenarios[0].total;
    assert!(total.requests >= 190, "{}", total.requests);
    assert_eq!(total.successes, total.requests, "{:?}", total.codes);
    let mut anonymous = RunOptions::new(server.target());
    anonymous.wait_healthy = Duration::from_secs(5);
    let error = vecrig_loadgen::run(&anonymous, &load(), &Stop::default())
        .await
        .expect_err("no token");
    assert!(error.to_string().contains("Unauthenticated"), "{error}");
    server.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_scans_cannot_starve_cheap_searches() {
    // Limit 4 slots; an exact scan is priced at half of it, and waits in its own queue.
    let server = crate::common::start_preloaded(DIMS, 20_000, |c| {
        c.admission.concurrency_limit = 4;
        c.admission.queue_depth = 1000;
    })
    .await;
    let pool = pool_of(&server).await;
    let data = Synthetic::new(DIMS, Synthetic::DEFAULT_CLUSTERS, 42);
    let deadline = Instant::now() + Duration::from_secs(4);

    // 32 users hammering exact scans, closed loop: far more than the server can scan.
    let mut heavy = Vec::new();
    for user in 0..32u64 {
        let (pool, data) = (pool.clone(), data.clone());
        heavy.push(tokio::spawn(async move {
            let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(user);
            let mut latencies = Histogram::<u64>::new(3).expect("histogram");
            while Instant::now() < deadline {
                let sent = Instant::now();
                let answer = pool
                    .client()
                    .search(with_deadline(
                        search(data.query_vector(&mut rng), true),
                        Duration::from_secs(30),
                    ))
                    .await;
                answer.expect("exact scans are admitted in turn, not refused");
                latencies
                    .record(sent.elapsed().as_micros() as u64)
                    .expect("record");
            }
            latencies
        }));
    }
    // Two users of cheap ANN searches alongside.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut cheap = Histogram::<u64>::new(3).expect("histogram");
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(99);
    while Instant::now() < deadline {
        let sent = Instant::now();
        pool.client()
            .search(with_deadline(
                search(data.query_vector(&mut rng), false),
                Duration::from_secs(30),
            ))
            .await
            .expect("cheap search served");
        cheap
            .record(sent.elapsed().as_micros() as u64)
            .expect("record");
    }
    let mut exact = Histogram::<u64>::new(3).expect("histogram");
    for task in heavy {
        exact.add(task.await.expect("task")).expect("merge");
    }
    let (cheap_p99, exact_p50) = (cheap.value_at_quantile(0.99), exact.value_at_quantile(0.5));
    println!(
        "cheap searches: {} served, p50 {} µs, p99 {cheap_p99} µs; exact scans: {} served, p50 {exact_p50} µs",
        cheap.len(),
        cheap.value_at_quantile(0.5),
        exact.len(),
    );
    assert!(cheap.len() > 20 && exact.len() > 20);
    // In one FIFO queue a cheap search would wait behind ~30 scans, as long as a scan's own
    // wait. In its own queue it waits for one scan at most: its median is a fraction of a
    // scan's, and even its tail stays below a scan's median. (Was `p99 * 2 < exact p50`:
    // on this shared 2-core machine the tail alone failed it once in CI, p99 8.4 ms against
    // 15.5 ms while the medians were 1.4 and 15.5 ms.)
    let cheap_p50 = cheap.value_at_quantile(0.5);
    assert!(
        cheap_p50 * 4 < exact_p50 && cheap_p99 < exact_p50,
        "cheap p50 {cheap_p50} µs, p99 {cheap_p99} µs vs exact p50 {exact_p50} µs"
    );
    server.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_that_cannot_be_met_is_refused_without_running() {
    let server = crate::common::start_preloaded(DIMS, 20_000, |c| {
        c.admission.concurrency_limit = 1;
        c.admission.queue_depth = 5000;
    })
    .await;
    let pool = Pool::connect(&server.target(), &ConnectOptions::default())
        .await
        .expect("pool");
    let data = Synthetic::new(DIMS, Synthetic::DEFAULT_CLUSTERS, 42);
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(5);
    // Fill the queue with exact scans, then measure how long they take.
    let mut scans = Vec::new();
    for _ in 0..400 {
        let request = with_deadline(
            search(data.query_vector(&mut rng), true),
            Duration::from_secs(120),
        );
        let mut client = pool.client();
        scans.push(tokio::spawn(async move {
            client.search(request).await.map(drop)
        }));
    }
    // Wait until the scans stand in the queue.
    let mut queued = 0;
    for _ in 0..200 {
        queued = pool
            .client()
            .stats(proto::StatsRequest {})
            .await
            .expect("stats")
            .into_inner()
            .queued;
        if queued > 100 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(queued > 100, "the queue is full of scans: {queued}");

    let upsert = |id: u64| proto::UpsertRequest {
        points: vec![proto::Point {
            id,
            data: Some(proto::point::Data::Vector(proto::Vector {
                values: vec![0.25; DIMS],
            })),
            payload: Default::default(),
        }],
        wait: true,
    };
    // An upsert with 1 ms to live, behind them: refused by the server or given up by the
    // client (tonic reports its own timer as CANCELLED), and never run either way.
    let status = pool
        .client()
        .upsert(with_deadline(upsert(4_000_000), Duration::from_millis(1)))
        .await
        .expect_err("cannot be met");
    assert!(
        matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{status:?}"
    );
    // With 100 ms, well below the expected wait, it is the server that refuses, at once.
    let status = pool
        .client()
        .upsert(with_deadline(upsert(4_000_001), Duration::from_millis(100)))
        .await
        .expect_err("cannot be met");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(
        status.message().contains("deadline cannot be met"),
        "{status:?}"
    );

    for scan in scans {
        scan.await.expect("task").expect("scans are served");
    }
    // Neither ran: the points are not there.
    for id in [4_000_000, 4_000_001] {
        let missing = pool
            .client()
            .get(proto::GetRequest { id })
            .await
            .expect_err("never written");
        assert_eq!(missing.code(), Code::NotFound);
    }
    server.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shed_answers_carry_pushback_and_metrics_count_every_outcome() {
    let server = crate::common::start_preloaded(DIMS, 20_000, |c| {
        c.admission.concurrency_limit = 1;
        c.admission.queue_depth = 8;
        c.admission.max_queue_wait = Duration::from_millis(50);
        c.metrics_listen = Some(metrics::any_loopback_port());
    })
    .await;
    let metrics = server.metrics.expect("the metrics endpoint is on");
    let pool = pool_of(&server).await;
    let data = Synthetic::new(DIMS, Synthetic::DEFAULT_CLUSTERS, 42);
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(7);
    let mut tasks = Vec::new();
    for _ in 0..300 {
        let request = with_deadline(
            search(data.query_vector(&mut rng), true),
            Duration::from_secs(30),
        );
        let mut client = pool.client();
        tasks.push(tokio::spawn(async move {
            let sent = Instant::now();
            (client.search(request).await.map(drop), sent.elapsed())
        }));
    }
    // The pool's connections are one client: at a full queue, a lighter connection's arrival
    // displaces the newest waiter of the heaviest one (shed as `displaced`).
    let (mut ok, mut full, mut waited_out, mut displaced) = (0u64, 0u64, 0u64, 0u64);
    let mut slowest_shed = Duration::ZERO;
    for task in tasks {
        match task.await.expect("task") {
            (Ok(()), _) => ok += 1,
            (Err(status), took) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                let pushback: u64 = status
                    .metadata()
                    .get("grpc-retry-pushback-ms")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok())
                    .expect("a pushback in ms on every shed answer");
                assert!((1..=10_000).contains(&pushback));
                if status.message().contains("queue_timeout") {
                    waited_out += 1;
                } else if status.message().contains("displaced") {
                    displaced += 1;
                } else {
                    assert!(
                        status.message().contains("queue_full"),
                        "{}",
                        status.message()
                    );
                    full += 1;
                }
                slowest_shed = slowest_shed.max(took);
            }
        }
    }
    println!(
        "ok {ok}, shed: queue_full {full}, queue_timeout {waited_out}, displaced {displaced}; \
         slowest shed {slowest_shed:?}"
    );
    assert!(
        ok >= 5 && full + displaced > 0,
        "ok {ok} full {full} displaced {displaced}"
    );
    // Nobody waited unboundedly: the 50 ms bound holds (with a generous margin for a noisy
    // machine); a FIFO of 300 scans would keep the last for hundreds of milliseconds.
    assert!(slowest_shed < Duration::from_secs(2), "{slowest_shed:?}");

    let text = scrape(metrics).await;
    let shed_metric = |reason: &str| {
        metrics::series(
            &text,
            &format!("vecrig_shed_requests_total{{reason=\"{reason}\"}}"),
        )
        .unwrap_or(-1.0)
    };
    assert_eq!(shed_metric("queue_full"), full as f64, "{text}");
    assert_eq!(shed_metric("queue_timeout"), waited_out as f64, "{text}");
    assert_eq!(shed_metric("displaced"), displaced as f64, "{text}");
    assert_eq!(
        metrics::series(
            &text,
            "vecrig_grpc_requests_total{method=\"Search\",code=\"OK\"}"
        ),
        Some(ok as f64),
        "{text}"
    );
    assert_eq!(
        metrics::series(
            &text,
            "vecrig_grpc_requests_total{method=\"Search\",code=\"RESOURCE_EXHAUSTED\"}"
        ),
        Some((full + waited_out + displaced) as f64),
        "{text}"
    );
    assert_eq!(
        metrics::series(&text, "vecrig_index_points"),
        Some(20_000.0),
        "{text}"
    );
    assert_eq!(
        metrics::series(&text, "vecrig_concurrency_limit"),
        Some(1.0)
    );
    assert_eq!(
        metrics::series(&text, "vecrig_in_flight_requests"),
        Some(0.0)
    );
    assert!(metrics::series(&text, "process_resident_memory_bytes").unwrap_or(0.0) > 1e6);
    assert!(metrics::series(&text, "vecrig_snapshot_age_seconds").is_some());
    assert!(
        text.contains("vecrig_service_time_seconds_bucket{le="),
        "{text}"
    );
    assert!(text.contains("vecrig_admission_queue_wait_seconds_count{method=\"Search\"}"));
    server.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_loadgen_scrapes_the_servers_metrics_into_its_report() {
    let (mut config, temp) = TestServer::config(16);
    config.preload = 300;
    config.metrics_listen = Some(metrics::any_loopback_port());
    let server = TestServer::start_in(config, temp).await;
    let metrics = server.metrics.expect("the metrics endpoint is on");
    let mut options = RunOptions::new(server.target());
    options.metrics_url = Some(format!("http://{metrics}/metrics"));
    let plan = Plan::new(vec![ScenarioSpec::Load(Load {
        model: LoadModel::Open,
        start: 100.0,
        stages: vec![Stage {
            duration: Duration::from_secs(2),
            target: 100.0,
        }],
        max_in_flight: 100,
        think: Duration::ZERO,
    })]);
    let report = vecrig_loadgen::run(&options, &plan, &Stop::default())
        .await
        .expect("pre-flight");
    let scenario = &report.scenarios[0];
    assert!(
        scenario.warnings.iter().all(|w| !w.contains("scrape")),
        "{:?}",
        scenario.warnings
    );
    let samples = &scenario.server_metrics;
    assert_eq!(
        samples.get("vecrig_index_points"),
        Some(&300.0),
        "{samples:?}"
    );
    // The server counted every search the loadgen saw answered OK.
    let served = samples
        .get("vecrig_grpc_requests_total{method=\"Search\",code=\"OK\"}")
        .copied()
        .unwrap_or(0.0);
    assert_eq!(served, scenario.total.successes as f64, "{samples:?}");
    // And it survives the JSON report.
    let json = serde_json::to_value(&report).expect("json");
    assert!(json["scenarios"][0]["server_metrics"]["vecrig_index_points"].is_number());
    server.stop().await.expect("clean stop");
}

/// `users` closed-loop users searching through `pool` until `until`, each with its own seeded
/// query vectors made into requests by `request(user, vector)`; every answer is checked by
/// `check`, and every request must be served or shed (anything else panics the user).
fn spawn_searchers(
    pool: &Pool,
    users: u64,
    until: Instant,
    request: fn(u64, Vec<f32>) -> proto::SearchRequest,
    check: fn(proto::SearchResponse),
) -> Vec<tokio::task::JoinHandle<(u64, u64)>> {
    let data = Synthetic::new(DIMS, Synthetic::DEFAULT_CLUSTERS, 42);
    (0..users)
        .map(|user| {
            let (pool, data) = (pool.clone(), data.clone());
            tokio::spawn(async move {
                let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(user);
                let (mut served, mut shed) = (0u64, 0u64);
                while Instant::now() < until {
                    let request = request(user, data.query_vector(&mut rng));
                    match pool
                        .client()
                        .search(with_deadline(request, Duration::from_secs(30)))
                        .await
                    {
                        Ok(answer) => {
                            check(answer.into_inner());
                            served += 1;
                        }
                        Err(s) if s.code() == Code::ResourceExhausted => shed += 1,
                        Err(s) => panic!("neither served nor shed: {s}"),
                    }
                }
                (served, shed)
            })
        })
        .collect()
}

/// The requests [`spawn_searchers`]' users got served and shed, once they have all stopped.
async fn served_and_shed(users: Vec<tokio::task::JoinHandle<(u64, u64)>>) -> (u64, u64) {
    let (mut served, mut shed) = (0, 0);
    for user in users {
        let (s, d) = user.await.expect("user");
        served += s;
        shed += d;
    }
    (served, shed)
}

/// `--adaptive-limit` on a real server: the limit is held at one slot to measure the no-load
/// service time until requests arrive, then follows measured service time; under a closed
/// loop of exact scans, far more than the server can take, it settles far below its maximum
/// (a controller that grew on overload would climb to it), and every request is either
/// served or shed cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_adaptive_limit_follows_service_time() {
    const MAX: f64 = 64.0;
    let server = crate::common::start_preloaded(DIMS, 20_000, |c| {
        c.admission.concurrency_limit = 4;
        c.admission.queue_depth = 1000;
        c.admission.adaptive = Some(vecrig_server::admission::adaptive::AdaptiveConfig {
            window: Duration::from_millis(50),
            min_rtt_samples: 20,
            // No re-measurement during the test: the limit seen is the controller's.
            min_rtt_interval: Duration::from_secs(600),
            ..vecrig_server::admission::adaptive::AdaptiveConfig::with_max(MAX as usize)
        });
        c.metrics_listen = Some(metrics::any_loopback_port());
    })
    .await;
    let metrics = server.metrics.expect("the metrics endpoint is on");
    let limit = async || {
        metrics::series(&scrape(metrics).await, "vecrig_concurrency_limit").expect("limit exposed")
    };
    // Idle: held at one slot, waiting for requests to measure.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(limit().await, 1.0, "held at one slot to measure min_rtt");

    let pool = pool_of(&server).await;
    let until = Instant::now() + Duration::from_secs(5);
    // Mostly ANN searches, every fourth user scanning exactly.
    let users = spawn_searchers(
        &pool,
        48,
        until,
        |user, vector| search(vector, user % 4 == 0),
        |_| {},
    );
    let mut seen = Vec::new();
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(100)).await;
        seen.push(limit().await);
    }
    let (served, shed) = served_and_shed(users).await;
    let settled = &seen[seen.len() / 2..];
    println!("adaptive limit under overload: {seen:?}; {served} served, {shed} shed");
    assert!(served > 100, "served {served}");
    assert!(
        seen.iter().any(|&l| l > 1.0),
        "the measurement ended and the limit moved off one slot: {seen:?}"
    );
    assert!(
        seen.iter().all(|&l| (1.0..=MAX).contains(&l)),
        "within bounds: {seen:?}"
    );
    let top = settled.iter().copied().fold(0.0, f64::max);
    assert!(
        top <= MAX / 2.0,
        "under overload on two cores it settles far below its maximum: {seen:?}"
    );
    server.stop().await.expect("clean stop");
}

/// `--brownout` on a real server: under a closed-loop overload of ANN searches the breadth
/// searches run with falls (to its floor, in `Stats` and the metrics alike), every search is
/// still either served with its k hits or shed cleanly, and once the load stops the breadth
/// comes back to full.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn brownout_narrows_searches_under_a_standing_queue_and_widens_them_after() {
    const FLOOR: f64 = 0.25;
    let server = crate::common::start_preloaded(DIMS, 20_000, |c| {
        c.admission.concurrency_limit = 2;
        c.admission.queue_depth = 1000;
        c.admission.brownout = Some(vecrig_server::admission::BrownoutConfig::with_floor(FLOOR));
        c.metrics_listen = Some(metrics::any_loopback_port());
    })
    .await;
    let metrics = server.metrics.expect("the metrics endpoint is on");
    let pool = pool_of(&server).await;
    let breadth = async || {
        pool.client()
            .stats(proto::StatsRequest {})
            .await
            .expect("stats")
            .into_inner()
            .search_breadth
    };
    assert_eq!(breadth().await, 1.0, "full breadth while idle");

    let until = Instant::now() + Duration::from_secs(4);
    let wide = |_, vector| {
        // A wide search, so that narrowing it is worth something.
        let mut request = search(vector, false);
        request.ef = 512;
        request
    };
    let k_hits = |answer: proto::SearchResponse| {
        assert_eq!(answer.hits.len(), 10, "k hits, narrowed or not");
    };
    let users = spawn_searchers(&pool, 32, until, wide, k_hits);
    let mut seen = Vec::new();
    let mut exposed = Vec::new();
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(200)).await;
        seen.push(breadth().await);
        exposed.push(
            metrics::series(&scrape(metrics).await, "vecrig_search_breadth").expect("exposed"),
        );
    }
    let (served, shed) = served_and_shed(users).await;
    println!(
        "brownout under overload: Stats {seen:?}, metrics {exposed:?}; {served} served, {shed} shed"
    );
    assert!(served > 100, "served {served}");
    let narrowest = seen.iter().copied().fold(1.0, f64::min);
    assert_eq!(
        narrowest, FLOOR,
        "32 users on 2 slots: down to the floor: {seen:?}"
    );
    assert!(seen.iter().all(|&b| (FLOOR..=1.0).contains(&b)), "{seen:?}");
    assert!(
        exposed.iter().any(|&b| b < 1.0),
        "the metrics show it too: {exposed:?}"
    );
    // Load gone: back to full within a few seconds (0.05 a tick of 50 ms from the floor).
    let back_by = Instant::now() + Duration::from_secs(5);
    let mut last = breadth().await;
    while last < 1.0 && Instant::now() < back_by {
        tokio::time::sleep(Duration::from_millis(100)).await;
        last = breadth().await;
    }
    assert_eq!(last, 1.0, "full breadth again once the queue drained");
    server.stop().await.expect("clean stop");
}

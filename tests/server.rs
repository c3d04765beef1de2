//! The server over a real socket: health, reflection, every RPC, every bad input's status
//! code, shedding under a burst, and data surviving a restart.

use std::collections::HashMap;
use std::time::Duration;

use crate::common::TestServer;
use tokio_stream::StreamExt;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use vecrig::proto::{self, point, search_request};

const DIMS: usize = 16;

fn vector_point(id: u64, values: Vec<f32>, tag: &str) -> proto::Point {
    proto::Point {
        id,
        data: Some(point::Data::Vector(proto::Vector { values })),
        payload: HashMap::from([("tag".to_string(), tag.to_string())]),
    }
}

fn text_point(id: u64, text: &str) -> proto::Point {
    proto::Point {
        id,
        data: Some(point::Data::Text(text.to_string())),
        payload: HashMap::from([("text".to_string(), text.to_string())]),
    }
}

fn search_vector(values: Vec<f32>, k: u32) -> proto::SearchRequest {
    proto::SearchRequest {
        query: Some(search_request::Query::Vector(proto::Vector { values })),
        k,
        with_payload: true,
        ..Default::default()
    }
}

fn search_text(text: &str, k: u32) -> proto::SearchRequest {
    proto::SearchRequest {
        query: Some(search_request::Query::Text(text.to_string())),
        k,
        with_payload: true,
        ..Default::default()
    }
}

fn basis(i: usize) -> Vec<f32> {
    let mut v = vec![0.01; DIMS];
    v[i % DIMS] = 1.0;
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_reflection() {
    let (config, temp) = TestServer::config(DIMS);
    let server = TestServer::start_in(config, temp).await;
    assert_eq!(server.health_status().await, ServingStatus::Serving);
    let service_status = server
        .health()
        .await
        .check(tonic_health::pb::HealthCheckRequest {
            service: vecrig::proto::SERVICE_NAME.to_string(),
        })
        .await
        .expect("check")
        .into_inner()
        .status();
    assert_eq!(service_status, ServingStatus::Serving);

    let channel = vecrig::client::endpoint(&server.target(), &Default::default())
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .expect("reflection")
        .into_inner();
    let response = responses.next().await.expect("one response").expect("ok");
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection answer: {response:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"vecrig.v1.VectorIndex".to_string()),
        "{names:?}"
    );
    assert!(
        names.contains(&"grpc.health.v1.Health".to_string()),
        "{names:?}"
    );
    server.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upsert_search_get_delete() {
    let (config, temp) = TestServer::config(DIMS);
    let server = TestServer::start_in(config, temp).await;
    let mut client = server.client().await;

    let points: Vec<proto::Point> = (0..DIMS as u64)
        .map(|i| vector_point(i, basis(i as usize), &format!("p{i}")))
        .collect();
    let upserted = client
        .upsert(proto::UpsertRequest { points, wait: true })
        .await
        .expect("upsert")
        .into_inner();
    assert_eq!(upserted.upserted, DIMS as u32);
    assert!(upserted.sequence >= 1);

    // A vector search finds the point itself first, with its payload, by ANN and exactly.
    for exact in [false, true] {
        let mut request = search_vector(basis(5), 3);
        request.exact = exact;
        let hits = client
            .search(request)
            .await
            .expect("search")
            .into_inner()
            .hits;
        assert_eq!(hits.len(), 3);
        assert_eq!(hits[0].id, 5, "exact={exact}");
        assert!(hits[0].distance.abs() < 1e-4, "{}", hits[0].distance);
        assert_eq!(hits[0].payload["tag"], "p5");
        assert!(hits.windows(2).all(|w| w[0].distance <= w[1].distance));
    }

    // Text points: a query sharing their words finds them first.
    let texts = [
        "graceful degradation under heavy load",
        "lemon cake with almonds and sugar",
        "the river flows into the northern sea",
    ];
    let points = texts
        .iter()
        .enumerate()
        .map(|(i, t)| text_point(1000 + i as u64, t))
        .collect();
    client
        .upsert(proto::UpsertRequest { points, wait: true })
        .await
        .expect("upsert texts");
    let hits = client
        .search(search_text("degradation under load", 2))
        .await
        .expect("text search")
        .into_inner()
        .hits;
    assert_eq!(hits[0].id, 1000);
    assert_eq!(hits[0].payload["text"], texts[0]);
    let hits = client
        .search(search_text("a cake with lemon", 1))
        .await
        .expect("text search")
        .into_inner()
        .hits;
    assert_eq!(hits[0].id, 1001);

    // Get returns the stored vector and payload; replacing a point replaces both.
    let got = client
        .get(proto::GetRequest { id: 7 })
        .await
        .expect("get")
        .into_inner()
        .point
        .expect("point");
    assert_eq!(
        got.data,
        Some(point::Data::Vector(proto::Vector { values: basis(7) }))
    );
    assert_eq!(got.payload["tag"], "p7");
    client
        .upsert(proto::UpsertRequest {
            points: vec![vector_point(7, basis(8), "moved")],
            wait: true,
        })
        .await
        .expect("replace");
    let got = client
        .get(proto::GetRequest { id: 7 })
        .await
        .expect("get")
        .into_inner()
        .point
        .expect("point");
    assert_eq!(got.payload["tag"], "moved");

    // Delete: counts only ids that existed; the point is gone from Get and Search.
    let deleted = client
        .delete(proto::DeleteRequest {
            ids: vec![5, 5, 424242],
        })
        .await
        .expect("delete")
        .into_inner();
    assert_eq!(deleted.deleted, 1);
    assert!(deleted.sequence > upserted.sequence);
    let status = client
        .get(proto::GetRequest { id: 5 })
        .await
        .expect_err("deleted");
    assert_eq!(status.code(), Code::NotFound);
    for exact in [false, true] {
        let mut request = search_vector(basis(5), 20);
        request.exact = exact;
        let hits = client
            .search(request)
            .await
            .expect("search")
            .into_inner()
            .hits;
        assert!(hits.iter().all(|h| h.id != 5));
    }

    let stats = client
        .stats(proto::StatsRequest {})
        .await
        .expect("stats")
        .into_inner();
    assert_eq!(stats.points, DIMS as u64 + 3 - 1);
    assert_eq!(stats.dimensions, DIMS as u32);
    assert_eq!(stats.metric, "cosine");
    assert_eq!(stats.sequence, deleted.sequence);
    assert!(stats.rss_bytes > 0);
    server.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_input_gets_its_code() {
    let (mut config, temp) = TestServer::config(DIMS);
    config.max_message_bytes = 256 * 1024;
    config.limits.max_text_bytes = 64 * 1024;
    config.limits.max_batch = 4;
    config.limits.max_k = 50;
    let server = TestServer::start_in(config, temp).await;
    let mut client = server.client().await;

    let mut bad_searches = vec![
        ("dims", search_vector(vec![1.0; DIMS - 1], 1), "vector"),
        ("nan", search_vector(vec![f32::NAN; DIMS], 1), "values[0]"),
        (
            "inf",
            search_vector(vec![f32::NEG_INFINITY; DIMS], 1),
            "values[0]",
        ),
        ("empty text", search_text("", 1), "text"),
        (
            "long text",
            search_text(&"word ".repeat(20_000), 1),
            "limit is 65536",
        ),
        ("k zero", search_vector(vec![1.0; DIMS], 0), "k"),
        ("k big", search_vector(vec![1.0; DIMS], 51), "1..=50"),
    ];
    bad_searches.push((
        "no query",
        proto::SearchRequest {
            k: 1,
            ..Default::default()
        },
        "query",
    ));
    for (name, request, mentions) in bad_searches {
        let status = client.search(request).await.expect_err(name);
        assert_eq!(status.code(), Code::InvalidArgument, "{name}: {status:?}");
        assert!(
            status.message().contains(mentions),
            "{name}: {}",
            status.message()
        );
    }

    let upsert = |points: Vec<proto::Point>| proto::UpsertRequest {
        points,
        wait: false,
    };
    let bad_upserts = vec![
        ("empty batch", upsert(vec![]), "points"),
        (
            "big batch",
            upsert((0..5).map(|i| vector_point(i, basis(0), "x")).collect()),
            "batch limit is 4",
        ),
        (
            "no data",
            upsert(vec![proto::Point {
                id: 1,
                data: None,
                payload: HashMap::new(),
            }]),
            "points[0]",
        ),
        (
            "bad vector",
            upsert(vec![
                vector_point(1, basis(0), "ok"),
                vector_point(2, vec![0.0; 3], "x"),
            ]),
            "points[1].vector",
        ),
    ];
    for (name, request, mentions) in bad_upserts {
        let status = client.upsert(request).await.expect_err(name);
        assert_eq!(status.code(), Code::InvalidArgument, "{name}: {status:?}");
        assert!(
            status.message().contains(mentions),
            "{name}: {}",
            status.message()
        );
    }
    // A rejected batch writes nothing.
    let stats = client
        .stats(proto::StatsRequest {})
        .await
        .expect("stats")
        .into_inner();
    assert_eq!(stats.points, 0);

    // Above the decode limit: the transport's own size error (tonic answers OUT_OF_RANGE,
    // other gRPC stacks RESOURCE_EXHAUSTED), before any of our code runs.
    let huge = search_text(&"x".repeat(300 * 1024), 1);
    let status = client.search(huge).await.expect_err("too large");
    assert!(
        matches!(status.code(), Code::OutOfRange | Code::ResourceExhausted),
        "{status:?}"
    );
    assert!(
        status.message().contains("too large"),
        "{}",
        status.message()
    );

    let status = client
        .get(proto::GetRequest { id: 99 })
        .await
        .expect_err("missing");
    assert_eq!(status.code(), Code::NotFound);
    assert!(status.message().contains("99"));
    // The server is still healthy after all of that.
    assert_eq!(server.health_status().await, ServingStatus::Serving);
    server.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_is_shed_with_resource_exhausted_only() {
    let (mut config, temp) = TestServer::config(64);
    config.admission.concurrency_limit = 1;
    config.admission.queue_depth = 4;
    config.preload = 20_000;
    let server = TestServer::start_in(config, temp).await;
    let pool = vecrig::client::Pool::connect(
        &server.target(),
        &vecrig::client::ConnectOptions {
            connections: 4,
            ..Default::default()
        },
    )
    .await
    .expect("pool");

    let data =
        vecrig::synthetic::Synthetic::new(64, vecrig::synthetic::Synthetic::DEFAULT_CLUSTERS, 42);
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(1);
    let mut tasks = Vec::new();
    for _ in 0..300 {
        let mut client = pool.client();
        let mut request = search_vector(data.query_vector(&mut rng), 10);
        request.exact = true;
        tasks.push(tokio::spawn(async move {
            client
                .search(vecrig::client::with_deadline(
                    request,
                    Duration::from_secs(30),
                ))
                .await
                .map(|r| r.into_inner().hits.len())
        }));
    }
    // Health answers while VectorIndex sheds: probes are outside admission.
    assert_eq!(server.health_status().await, ServingStatus::Serving);
    let (mut ok, mut shed) = (0u64, 0u64);
    for task in tasks {
        match task.await.expect("task") {
            Ok(n) => {
                assert_eq!(n, 10);
                ok += 1;
            }
            Err(status) if status.code() == Code::ResourceExhausted => {
                assert!(
                    status.message().contains("overloaded"),
                    "{}",
                    status.message()
                );
                shed += 1;
            }
            Err(status) => panic!("unexpected status under burst: {status:?}"),
        }
    }
    assert!(ok >= 5, "admitted requests are served: ok={ok}");
    assert!(
        shed > 0,
        "a burst of 300 on limit 1 + queue 4 sheds: ok={ok}"
    );
    let stats = pool
        .client()
        .stats(proto::StatsRequest {})
        .await
        .expect("stats")
        .into_inner();
    assert_eq!(stats.shed_total, shed);
    assert_eq!(stats.in_flight, 0, "Stats itself bypasses admission");
    assert_eq!(stats.queued, 0);
    // After the burst, the server serves normally again.
    let hits = pool
        .client()
        .search(search_vector(data.query_vector(&mut rng), 5))
        .await
        .expect("after burst")
        .into_inner()
        .hits;
    assert_eq!(hits.len(), 5);
    server.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_the_data() {
    let (mut config, temp) = TestServer::config(DIMS);
    config.preload = 2_000;
    let server = TestServer::start(config.clone()).await;
    let mut client = server.client().await;
    client
        .upsert(proto::UpsertRequest {
            points: vec![vector_point(900_000, basis(3), "kept")],
            wait: true,
        })
        .await
        .expect("upsert");
    client
        .delete(proto::DeleteRequest { ids: vec![10] })
        .await
        .expect("delete");
    let before = client
        .stats(proto::StatsRequest {})
        .await
        .expect("stats")
        .into_inner();
    let probe = search_vector(basis(11), 10);
    let hits_before = client
        .search(probe.clone())
        .await
        .expect("search")
        .into_inner()
        .hits;
    drop(client);
    server.stop().await.expect("clean stop");

    // Preload is skipped on a non-empty index: the same data comes back, not a fresh set.
    let server = TestServer::start_in(config, temp).await;
    let mut client = server.client().await;
    let after = client
        .stats(proto::StatsRequest {})
        .await
        .expect("stats")
        .into_inner();
    assert_eq!(after.points, before.points);
    assert_eq!(after.sequence, before.sequence);
    let got = client
        .get(proto::GetRequest { id: 900_000 })
        .await
        .expect("kept point")
        .into_inner()
        .point
        .expect("point");
    assert_eq!(got.payload["tag"], "kept");
    assert_eq!(
        client
            .get(proto::GetRequest { id: 10 })
            .await
            .expect_err("deleted")
            .code(),
        Code::NotFound
    );
    let hits_after = client
        .search(probe)
        .await
        .expect("search")
        .into_inner()
        .hits;
    let ids = |hits: &[proto::Hit]| hits.iter().map(|h| h.id).collect::<Vec<_>>();
    assert_eq!(ids(&hits_after), ids(&hits_before));
    server.stop().await.expect("clean stop");
}

//! Admission's unit tests: refusals, the queue count, displacement and deadlines.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tonic::body::Body;
use tonic::codegen::http;

use tokio::sync::oneshot;
use tonic::Status;

use super::entry::deadline_of;
use super::state::Launch;
use super::*;
use crate::caller::Caller;
use crate::caller::ClientKey;
use crate::method::Method;

/// Reads the queue count at the moment of each refusal.
#[derive(Debug, Default)]
struct QueuedAtRefusal {
    admission: std::sync::OnceLock<std::sync::Weak<Admission>>,
    seen: Mutex<Vec<usize>>,
}

impl Recorder for QueuedAtRefusal {
    fn shed(&self, _: ShedReason, _: &ClientKey) {
        if let Some(admission) = self.admission.get().and_then(std::sync::Weak::upgrade) {
            let queued = admission.queued.load(Ordering::Relaxed);
            self.seen.lock().expect("lock").push(queued);
        }
    }
    fn admitted(&self, _: &ClientKey) {}
    fn queue_wait(&self, _: Method, _: Duration) {}
    fn service_time(&self, _: Method, _: Duration) {}
}

#[test]
fn a_refused_arrival_never_counts_as_queued() {
    let recorder = Arc::new(QueuedAtRefusal::default());
    let admission = Admission::new(
        Config {
            queue_depth: 2,
            ..Config::default()
        },
        recorder.clone(),
    );
    recorder
        .admission
        .set(Arc::downgrade(&admission))
        .expect("set once");
    let request = || http::Request::builder().body(()).expect("request");
    let first = admission.enter(request()).expect("room for the first");
    let second = admission.enter(request()).expect("room for the second");
    assert!(
        admission.enter(request()).is_err(),
        "the third finds the queue full"
    );
    // Stats and the peaks, read while a refusal is made (as a Stats call during a flood
    // does), never see more than the depth: the refused request never took a place.
    assert_eq!(*recorder.seen.lock().expect("lock"), vec![2]);
    assert_eq!(admission.stats().queued, 2);
    drop((first, second));
    assert_eq!(admission.queued.load(Ordering::Relaxed), 0);
    assert_eq!(admission.take_peaks().1, 2);
}

/// A search request from `ip` on its own connection.
fn search_from(ip: u8) -> http::Request<Body> {
    let mut request = http::Request::builder()
        .uri("/vecrig.v1.VectorIndex/Search")
        .body(Body::empty())
        .expect("request");
    request.extensions_mut().insert(Caller {
        client: ClientKey::Address(std::net::Ipv4Addr::new(127, 0, 0, ip).into()),
        weight: 1,
        connection: u64::from(ip),
    });
    request
}

/// One slot and two places, all held by 127.0.0.1; then 127.0.0.2 arrives. What became of
/// the newcomer, and of the heavy client's two waiters.
async fn a_light_client_arrives_at_a_full_queue(fair: bool) -> (bool, Vec<ShedReason>) {
    #[derive(Debug, Default)]
    struct Reasons(Mutex<Vec<ShedReason>>);
    impl Recorder for Reasons {
        fn shed(&self, reason: ShedReason, _: &ClientKey) {
            self.0.lock().expect("lock").push(reason);
        }
        fn admitted(&self, _: &ClientKey) {}
        fn queue_wait(&self, _: Method, _: Duration) {}
        fn service_time(&self, _: Method, _: Duration) {}
    }
    let reasons = Arc::new(Reasons::default());
    let admission = Admission::new(
        Config {
            concurrency_limit: 1,
            queue_depth: 2,
            fair,
            ..Config::default()
        },
        reasons.clone(),
    );
    // Enters and prices a request; its launch tells the receiver what became of it.
    let enter_and_admit = |request| {
        let (decided, decision) = oneshot::channel();
        let launch: Launch = Box::new(move |outcome| drop(decided.send(outcome)));
        let place = admission
            .enter(request)
            .map(|entered| admission.admit(entered, launch));
        async move { Ok::<_, Status>((place?.await?, decision)) }
    };
    let (_first, running) = enter_and_admit(search_from(1)).await.expect("entered");
    let _running = running
        .await
        .expect("decided at once")
        .map_err(|_| "refused")
        .expect("the slot");
    let mut waiters = Vec::new();
    for _ in 0..2 {
        waiters.push(enter_and_admit(search_from(1)).await.expect("a place"));
    }
    assert_eq!(
        admission.lock().waiting(),
        2,
        "both wait, in the fair queue"
    );
    // A displaced waiter is answered at once; the others wait for the slot.
    let newcomer = admission.enter(search_from(2)).is_ok();
    let reasons = reasons.0.lock().expect("lock").clone();
    let answered = waiters
        .iter_mut()
        .filter_map(|(_, decision)| decision.try_recv().ok())
        .filter(Result::is_err)
        .count();
    let displaced = reasons.iter().filter(|r| **r == ShedReason::Displaced);
    assert_eq!(
        answered,
        displaced.count(),
        "each displaced waiter is told so"
    );
    (newcomer, reasons)
}

#[tokio::test]
async fn fair_admission_lets_a_light_client_displace_the_heavy_clients_newest_waiter() {
    let (newcomer, reasons) = a_light_client_arrives_at_a_full_queue(true).await;
    assert!(newcomer, "the light client takes a place");
    assert_eq!(reasons, vec![ShedReason::Displaced]);
}

#[tokio::test]
async fn fifo_admission_refuses_whoever_finds_the_queue_full() {
    let (newcomer, reasons) = a_light_client_arrives_at_a_full_queue(false).await;
    assert!(
        !newcomer,
        "first come, first served: the newcomer is refused"
    );
    assert_eq!(reasons, vec![ShedReason::QueueFull]);
}

#[test]
fn grpc_timeout_header_becomes_a_deadline() {
    let now = Instant::now();
    let with = |value: &str| {
        let request = http::Request::builder()
            .header("grpc-timeout", value)
            .body(())
            .expect("request");
        deadline_of(&request, now).map(|d| d - now)
    };
    assert_eq!(with("100m"), Some(Duration::from_millis(100)));
    assert_eq!(with("2S"), Some(Duration::from_secs(2)));
    assert_eq!(with("5u"), Some(Duration::from_micros(5)));
    assert_eq!(with("1H"), Some(Duration::from_secs(3600)));
    assert_eq!(with("x"), None);
    assert_eq!(with(""), None);
    assert_eq!(with("12"), None);
}

//! Unit tests of the registry and the rendered exposition.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use super::registry::{CLIENT_LABELS, ConnectionFigures, Metrics, PacingFigures};
use crate::admission::{self, Admission, Recorder, ShedReason};
use crate::caller::ClientKey;
use crate::storage::StorageCell;

/// The exposition `metrics` renders now, with admission off-duty, no storage yet, and no
/// snapshot on disk.
fn render(metrics: &Arc<Metrics>, pacing: PacingFigures, lanes: &[usize]) -> String {
    let connections = ConnectionFigures {
        per_lane: lanes.to_vec(),
        ..ConnectionFigures::default()
    };
    render_with(metrics, pacing, &connections)
}

/// [`render`] with the connection cap's figures too.
fn render_with(
    metrics: &Arc<Metrics>,
    pacing: PacingFigures,
    connections: &ConnectionFigures,
) -> String {
    let admission = Admission::new(admission::Config::default(), Arc::clone(metrics) as _);
    let storage: StorageCell = Arc::new(OnceLock::new());
    let data_dir = std::env::temp_dir().join("vecrig-metrics-test-no-such-dir");
    metrics.render(&admission, &storage, &data_dir, pacing, connections)
}

/// The value of one series (its name with labels, exactly as rendered), if present.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.parse().expect("a number"))
}

#[test]
fn a_fresh_registry_renders_every_shed_reason_at_zero_and_ends_the_exposition() {
    let metrics = Arc::new(Metrics::new());
    let text = render(&metrics, PacingFigures::default(), &[]);
    for reason in ShedReason::ALL {
        let series = format!(
            r#"vecrig_shed_requests_total{{reason="{}"}}"#,
            reason.label()
        );
        assert_eq!(value(&text, &series), Some(0.0), "{series} in\n{text}");
    }
    assert!(
        text.contains("# TYPE vecrig_shed_requests counter\n"),
        "{text}"
    );
    assert!(
        text.contains("# TYPE vecrig_in_flight_requests gauge\n"),
        "{text}"
    );
    assert_eq!(value(&text, "vecrig_in_flight_requests"), Some(0.0));
    assert_eq!(value(&text, "vecrig_search_breadth"), Some(1.0));
    // No snapshot written yet.
    assert_eq!(value(&text, "vecrig_snapshot_age_seconds"), Some(-1.0));
    assert!(text.ends_with("# EOF\n"), "{text}");
}

#[test]
fn calls_are_counted_by_method_and_final_code() {
    let metrics = Arc::new(Metrics::new());
    metrics.count("Search", tonic::Code::ResourceExhausted);
    metrics.count("Search", tonic::Code::ResourceExhausted);
    metrics.count("Upsert", tonic::Code::Ok);
    let text = render(&metrics, PacingFigures::default(), &[]);
    assert_eq!(
        value(
            &text,
            r#"vecrig_grpc_requests_total{method="Search",code="RESOURCE_EXHAUSTED"}"#
        ),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        value(
            &text,
            r#"vecrig_grpc_requests_total{method="Upsert",code="OK"}"#
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value(
            &text,
            r#"vecrig_grpc_requests_total{method="Upsert",code="RESOURCE_EXHAUSTED"}"#
        ),
        None
    );
}

#[test]
fn pacing_counters_mirror_the_pacer_without_counting_twice() {
    let metrics = Arc::new(Metrics::new());
    let figures = |charged, pauses| PacingFigures {
        charged,
        pauses,
        woken_for_room: 1,
        paused: 2,
        answer_cpu: Duration::from_micros(40),
        served_cpu: Duration::ZERO,
        cheap_cpu_total: Duration::from_millis(500),
    };
    render(&metrics, figures(5, 1), &[]);
    // A second scrape adds only what the pacer counted since the first.
    let text = render(&metrics, figures(7, 3), &[]);
    assert_eq!(
        value(&text, "vecrig_paced_answers_total"),
        Some(7.0),
        "{text}"
    );
    assert_eq!(value(&text, "vecrig_connection_pauses_total"), Some(3.0));
    assert_eq!(
        value(&text, "vecrig_connection_room_wakes_total"),
        Some(1.0)
    );
    assert_eq!(value(&text, "vecrig_paused_connections"), Some(2.0));
    assert_eq!(
        value(&text, "vecrig_cheap_answer_cpu_seconds_total"),
        Some(0.5)
    );
    let answer_cpu = value(&text, "vecrig_answer_cpu_seconds").expect("rendered");
    assert!((answer_cpu - 40e-6).abs() < 1e-12, "{answer_cpu}");
}

#[test]
fn lanes_are_rendered_by_their_index() {
    let metrics = Arc::new(Metrics::new());
    let text = render(&metrics, PacingFigures::default(), &[3, 0, 1]);
    assert_eq!(
        value(&text, r#"vecrig_lane_connections{lane="0"}"#),
        Some(3.0)
    );
    assert_eq!(
        value(&text, r#"vecrig_lane_connections{lane="1"}"#),
        Some(0.0)
    );
    assert_eq!(
        value(&text, r#"vecrig_lane_connections{lane="2"}"#),
        Some(1.0)
    );
}

#[test]
fn only_the_first_clients_get_labels_of_their_own() {
    let metrics = Arc::new(Metrics::new());
    let client = |i: usize| ClientKey::Address(IpAddr::V4(Ipv4Addr::new(10, 0, 0, i as u8)));
    for i in 0..=CLIENT_LABELS {
        metrics.admitted(&client(i));
    }
    // The first again: still its own label.
    metrics.admitted(&client(0));
    metrics.shed(ShedReason::QueueFull, &client(CLIENT_LABELS));
    let text = render(&metrics, PacingFigures::default(), &[]);
    let series = |client: &str, outcome: &str| {
        format!(r#"vecrig_client_requests_total{{client="{client}",outcome="{outcome}"}}"#)
    };
    assert_eq!(
        value(&text, &series("10.0.0.0", "admitted")),
        Some(2.0),
        "{text}"
    );
    let last_own = format!("10.0.0.{}", CLIENT_LABELS - 1);
    assert_eq!(value(&text, &series(&last_own, "admitted")), Some(1.0));
    let first_other = format!("10.0.0.{CLIENT_LABELS}");
    assert_eq!(value(&text, &series(&first_other, "admitted")), None);
    assert_eq!(value(&text, &series("other", "admitted")), Some(1.0));
    assert_eq!(value(&text, &series("other", "shed")), Some(1.0));
    assert_eq!(
        value(&text, r#"vecrig_shed_requests_total{reason="queue_full"}"#),
        Some(1.0)
    );
}

#[test]
fn the_connection_caps_figures_are_rendered_and_its_counters_only_move_up() {
    let metrics = Arc::new(Metrics::new());
    let figures = |open, refused, evicted| ConnectionFigures {
        open,
        refused,
        evicted,
        per_lane: vec![open as usize],
    };
    let text = render_with(&metrics, PacingFigures::default(), &figures(0, 0, 0));
    assert_eq!(value(&text, "vecrig_connections_refused_total"), Some(0.0));
    render_with(&metrics, PacingFigures::default(), &figures(900, 12, 40));
    let text = render_with(&metrics, PacingFigures::default(), &figures(1000, 15, 41));
    assert_eq!(value(&text, "vecrig_open_connections"), Some(1000.0));
    assert_eq!(value(&text, "vecrig_connections_refused_total"), Some(15.0));
    assert_eq!(value(&text, "vecrig_connections_evicted_total"), Some(41.0));
}

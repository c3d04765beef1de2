//! The text exposition: the gauges and mirrored counters read at scrape time, then encoded.

use std::time::SystemTime;

use prometheus_client::metrics::counter::Counter;

use super::labels::{ClientLabel, LaneLabel, PartLabel};
use super::registry::{CLIENT_LABELS, ConnectionFigures, Metrics, PacingFigures};
use crate::admission::Admission;
use crate::storage::StorageCell;

impl Metrics {
    /// The text exposition, with the gauges read now.
    pub fn render(
        &self,
        admission: &Admission,
        storage: &StorageCell,
        data_dir: &std::path::Path,
        pacing: PacingFigures,
        connections: &ConnectionFigures,
    ) -> String {
        let stats = admission.stats();
        self.in_flight.set(stats.in_flight as i64);
        self.queued.set(stats.queued as i64);
        self.limit.set(stats.limit as i64);
        self.search_breadth.set(admission.search_breadth());
        if let Some(storage) = storage.get() {
            self.points.set(storage.engine().len() as i64);
            self.unindexed.set(storage.engine().tail_len() as i64);
            self.wal_sequence.set(storage.durable_sequence() as i64);
        }
        let age = std::fs::metadata(data_dir.join(crate::storage::snapshot::POINTS_FILE))
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .map_or(-1.0, |d| d.as_secs_f64());
        self.snapshot_age.set(age);
        self.resident_memory
            .set(crate::process::resident_memory_bytes().unwrap_or(0) as i64);
        // Counters only move up: add what the pacer counted since the last scrape.
        let catching_up = self
            .pacing_catch_up
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let catch_up = |counter: &Counter<u64>, total: u64| {
            counter.inc_by(total.saturating_sub(counter.get()));
        };
        catch_up(&self.paced_answers, pacing.charged);
        let split = crate::cpu::split();
        for (part, seconds) in [("index", split.index_s), ("serving", split.serving_s)] {
            let counter = self.cpu.get_or_create(&PartLabel { part });
            counter.inc_by((seconds - counter.get()).max(0.0));
        }
        catch_up(&self.connection_pauses, pacing.pauses);
        catch_up(&self.room_wakes, pacing.woken_for_room);
        self.paused_connections.set(pacing.paused as i64);
        catch_up(&self.connections_refused, connections.refused);
        catch_up(&self.connections_evicted, connections.evicted);
        self.open_connections.set(connections.open as i64);
        for (lane, connections) in connections.per_lane.iter().enumerate() {
            self.lane_connections
                .get_or_create(&LaneLabel {
                    lane: lane.to_string(),
                })
                .set(*connections as i64);
        }
        self.answer_cpu.set(pacing.answer_cpu.as_secs_f64());
        self.served_cpu.set(pacing.served_cpu.as_secs_f64());
        self.cheap_cpu
            .inc_by((pacing.cheap_cpu_total.as_secs_f64() - self.cheap_cpu.get()).max(0.0));
        drop(catching_up);
        // Gauges of the clients holding places now: last scrape's clients may be gone.
        self.client_queued.clear();
        self.client_in_flight.clear();
        for load in admission.client_loads(CLIENT_LABELS) {
            let label = ClientLabel {
                client: load.client,
            };
            self.client_queued
                .get_or_create(&label)
                .set(load.queued as i64);
            self.client_in_flight
                .get_or_create(&label)
                .set(load.in_flight as i64);
        }
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

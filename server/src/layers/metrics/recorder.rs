//! What admission records into the metrics: refusals, admissions, queue waits, service times.

use std::time::Duration;

use super::labels::{ClientOutcome, MethodLabel, ReasonLabel};
use super::registry::Metrics;
use crate::admission::{Recorder, ShedReason};
use crate::method::Method;

impl Recorder for Metrics {
    fn shed(&self, reason: ShedReason, client: &crate::caller::ClientKey) {
        self.shed
            .get_or_create(&ReasonLabel {
                reason: reason.label(),
            })
            .inc();
        self.client_requests
            .get_or_create(&ClientOutcome {
                client: self.client_label(client),
                outcome: "shed",
            })
            .inc();
    }

    fn admitted(&self, client: &crate::caller::ClientKey) {
        self.client_requests
            .get_or_create(&ClientOutcome {
                client: self.client_label(client),
                outcome: "admitted",
            })
            .inc();
    }

    fn queue_wait(&self, method: Method, waited: Duration) {
        self.queue_wait
            .get_or_create(&MethodLabel {
                method: method.name(),
            })
            .observe(waited.as_secs_f64());
    }

    fn service_time(&self, method: Method, took: Duration) {
        self.service_time
            .get_or_create(&MethodLabel {
                method: method.name(),
            })
            .observe(took.as_secs_f64());
    }
}

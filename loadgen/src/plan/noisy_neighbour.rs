//! `noisy-neighbour`: a flood and a polite client side by side from one loadgen, each a client
//! of its own to the server (its own source address, its own bearer token, or both, on
//! connections of its own), each reported as a phase of its own: `flood` and `polite`.
//!
//! What it shows is whether the server shares its capacity fairly across clients: against a
//! FIFO server the polite client waits behind the flood's queue; against a fair one its
//! latency stays near its unloaded latency while the flood takes the rest.

use std::net::IpAddr;
use std::time::Duration;

use crate::plan::scenario::{Identity, Model, Phase, Scenario};
use crate::plan::suite::{Common, human, params};
use crate::plan::workload::WorkloadKind;

/// `noisy-neighbour`'s parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct NoisyNeighbour {
    /// The flood's users, each sending again as soon as it is answered.
    pub flood_users: u64,
    /// The polite client's rate, requests per second, on schedule.
    pub polite_rate: f64,
    /// The polite client's workers.
    pub polite_workers: u64,
    /// How long both run.
    pub duration: Duration,
    /// Who the flood is.
    pub flood: Identity,
    /// Who the polite client is.
    pub polite: Identity,
}

impl NoisyNeighbour {
    /// 200 flooding users against a polite 20 requests per second, for 30 s. Both clients
    /// are the run's own until given a source address or token each.
    pub fn full() -> Self {
        Self {
            flood_users: 200,
            polite_rate: 20.0,
            polite_workers: 2,
            duration: Duration::from_secs(30),
            flood: Identity::default(),
            polite: Identity::default(),
        }
    }

    /// 10 s.
    pub fn quick() -> Self {
        Self {
            duration: Duration::from_secs(10),
            ..Self::full()
        }
    }

    /// The scenario: phase `flood` (closed users) and phase `polite` (paced), side by side.
    pub fn build(&self, common: &Common) -> Scenario {
        let bind = |b: Option<IpAddr>| b.map_or_else(|| "-".to_string(), |b| b.to_string());
        let token = |i: &Identity| if i.token.is_some() { "set" } else { "-" }.to_string();
        Scenario {
            name: "noisy-neighbour".into(),
            description: format!(
                "{} users flood ({}) while a polite client sends {} requests per second ({}), for {}",
                self.flood_users,
                self.flood.describe(),
                self.polite_rate,
                self.polite.describe(),
                human(self.duration)
            ),
            parameters: params(&[
                ("flood_users", self.flood_users.to_string()),
                ("polite_rate", self.polite_rate.to_string()),
                ("polite_workers", self.polite_workers.to_string()),
                ("duration", human(self.duration)),
                ("flood_bind", bind(self.flood.bind)),
                ("polite_bind", bind(self.polite.bind)),
                ("flood_token", token(&self.flood)),
                ("polite_token", token(&self.polite)),
            ]),
            phases: vec![
                Phase {
                    name: "flood".into(),
                    model: Model::Closed {
                        users: self.flood_users,
                        iterations: None,
                        duration: Some(self.duration),
                        think: Duration::ZERO,
                        stagger: None,
                    },
                },
                Phase {
                    name: "polite".into(),
                    model: Model::Paced {
                        workers: self.polite_workers.max(1),
                        rate: self.polite_rate,
                        duration: self.duration,
                    },
                },
            ],
            workload: common.workload(WorkloadKind::Vector),
            // No verdict of its own: whether the polite client should be served well depends
            // on the server's admission; add thresholds such as `p99<50ms@polite`.
            thresholds: Vec::new(),
            monitor_every: None,
            check_recovery: false,
            timeout: None,
            identities: vec![self.flood.clone(), self.polite.clone()],
        }
    }
}

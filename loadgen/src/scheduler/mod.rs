//! The scheduler: schedules a scenario's requests, sends them with deadlines and retries, and
//! records every outcome. A scenario says *what* load; this module says *how* it is sent.
//!
//! Load models, in k6's vocabulary, one module each:
//! - **closed** (`closed`: fixed users; `ramping`: ramping users): each user sends its
//!   next request when the previous one answered (plus an optional think time). Throughput is
//!   whatever the server allows.
//! - **paced** (`paced`): `workers` tasks sending at a fixed total rate on a fixed schedule
//!   (wrk2's model).
//! - **open** (`open`: fixed or ramping arrival rate): requests are sent on schedule whether
//!   or not earlier ones have answered, up to `max_in_flight` at once; a request that cannot
//!   be sent on time because that many are outstanding is counted as *dropped*.
//!
//! In the paced and open models a request's latency runs from its *intended* send time, so a
//! server stall shows in full in the percentiles instead of being hidden by senders waiting
//! (coordinated omission). The service time from the actual send is recorded beside it.
//!
//! The rooms: the scenario it runs comes from [`crate::plan::scenario`] (what load: phases,
//! models, sharding); [`context`] (what every request shares, and the one `execute` that owns
//! retries), [`retry`] (which failures are retried, and the budget that keeps retries from
//! becoming a storm), the models, `judge` (thresholds judged while the run goes on), [`run`]
//! (a scenario, phase by phase) and [`senders`] (the threads that send: each runs its share of
//! every phase).

mod closed;
pub mod context;
mod judge;
mod open;
mod paced;
mod ramping;
pub mod retry;
pub mod run;
pub mod senders;

pub use context::{Context, Stop};
pub use run::run_scenario;
pub use senders::Senders;

//! What is measured: every request's outcome and latency ([`stats`]), the recall of sampled
//! searches ([`recall`]), the writes the server acknowledged ([`acks`]), the server's own
//! account of itself ([`monitor`]: its `Stats` while load runs; [`scrape`]: its Prometheus
//! endpoint) and the loadgen's own cost ([`process`]).

pub mod acks;
pub mod monitor;
pub mod process;
pub mod recall;
pub mod scrape;
pub mod stats;

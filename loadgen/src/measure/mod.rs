//! What is measured: every request's outcome and latency ([`outcomes`], recorded per sending
//! thread and per phase by [`recorder`], in [`histogram`]s, charted by [`timeline`] and cut by time into [`slices`] for comparisons), the recall of sampled
//! searches ([`recall`]), the writes the server acknowledged ([`acks`]), the server's own
//! account of itself ([`monitor`]: its `Stats` while load runs; [`scrape`]: its Prometheus
//! endpoint) and the loadgen's own cost ([`process`]).

pub mod acks;
pub mod histogram;
pub mod monitor;
pub mod outcomes;
pub mod process;
pub mod recall;
pub mod recorder;
pub mod scrape;
pub mod slices;
pub mod timeline;

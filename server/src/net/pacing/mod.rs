//! Pacing: a connection that keeps asking for answers that are not admitted work (refusals,
//! health checks, `Stats`, reflection, auth and decode errors) is read slowly, so that a flood
//! of cheap calls costs its sender, not the server.
//!
//! Why: a refusal is cheap, but not free. A closed-loop client gets each refusal back at once
//! and sends the next request at once, so past a point the server's CPU goes to reading,
//! pricing and refusing requests, and the index work that admission protects gets nothing
//! (figures in `docs/overload.md`). No answer can be cheap enough against a sender that is not slowed down; not reading is free: the
//! peer's requests then wait in its own buffers, held back by TCP and HTTP/2 flow control.
//!
//! How:
//! - Every answer that is not the result of admitted work is a *cheap answer*, and is charged
//!   to its connection by [`PacingLayer`] (outermost, so refusals from every layer count).
//! - Each connection has an allowance ([`Config::connection_rate`] answers a second, with a
//!   burst): a kubelet probe, the loadgen's monitor, or a polite client refused now and then
//!   never exceeds it and is never paced. A connection that is paced loses its allowance
//!   until it has asked for no more than it for a while, so that the allowances of a flood's
//!   many connections do not add up to a budget that grows with every connection opened.
//! - Beyond its allowance a connection draws on one budget shared by the whole server
//!   ([`Config::excess_rate`]). While that budget lasts nothing is paused, so a moderate
//!   overload (a few times capacity) is shed at full speed. Once it is spent, a connection that
//!   draws on it is not read again until the budget has refilled for its charge (at most
//!   [`Config::max_pause`]), and its reads are then limited ([`SHED_READ_BYTES`] after a
//!   refusal of work, [`PACED_READ_BYTES`] after other cheap answers), so it brings a handful
//!   of requests at a time rather than everything it has buffered. The total
//!   rate of excess answers is so held near `excess_rate`, however many connections flood.
//! - Every answer that is admitted work earns the budget [`Config::shed_per_served`] more
//!   excess refusals of work (RESOURCE_EXHAUSTED; other cheap answers, such as health checks
//!   or wrong tokens, have a budget of the same `excess_rate` that nothing earns into): an
//!   open-model overload of a few times capacity (about 1 + that many times) is refused at
//!   full speed whatever the cost of a search, since what refusing costs then stays a small
//!   fraction of what serving costs. Only beyond it, or under a
//!   flood of calls that do no work at all, are connections paused.
//! - Whatever the rates above allow, excess answers may cost the request path no more than
//!   [`Config::excess_cpu`] (a share of the CPUs, `--pace-cpu-share`): each is priced at what
//!   a cheap answer costs the request path, measured as the server runs ([`crate::cpu`];
//!   the serving CPU less what the requests served meanwhile cost, see [`AnswerPrice`]), and once
//!   that budget is spent too, whoever draws on it is paused the same way. The rates count
//!   answers; the CPU is what index work loses to them, and a refusal's price depends on the
//!   machine, TLS, the size of requests and how the flood reads (see `docs/overload.md`).
//! - When admission has room again (its queue drained below half), it wakes the connection
//!   paused longest ([`Pacer::room`]), so pacing never leaves slots idle while a paced client
//!   has work waiting; it reads [`ROOM_READ_BYTES`] at once. And since a wake-up may bring no
//!   admitted work (so nothing finishes to call for the next), [`Pacer::tend_room`] asks
//!   admission every millisecond while connections wait paused.
//!
//! Admitted work is never charged: a client whose requests are served pays with the work.
//!
//! The parts: [`settings`] (flags and settings), [`budget`] (the [`Pacer`]: the shared budget
//! and the connections paused on it), [`price`] (what a cheap answer costs), [`connection`]
//! and [`pause`] (one connection's charges and pause), [`read_gate`] (what its socket may read),
//! [`charge`] (what an answer is charged as) and [`layer`] (the tower layer that charges).

mod budget;
mod charge;
mod connection;
mod layer;
mod pause;
mod price;
mod read_gate;
mod settings;
#[cfg(test)]
mod tests;

pub use budget::Pacer;
pub use charge::Charge;
pub use connection::Connection;
pub use layer::{Lookup, PacingLayer, PacingService};
pub use read_gate::{
    MAX_LIMITED_READ_BYTES, PACED_READ_BYTES, ROOM_READ_BYTES, ReadGate, SHED_READ_BYTES,
};
pub use settings::{Args, Config};

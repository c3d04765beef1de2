//! The engine: one vector index (points, HNSW graph, embedder) and the rules for using it from
//! async code.
//!
//! Index work is CPU-bound and synchronous, so every search and write runs on tokio's blocking
//! pool, never on the threads that drive the network, except on threads that exist for admitted
//! work alone ([`run_searches_inline_on_this_thread`]), where an approximate search runs in
//! place. Searches first take one of a fixed number of *search permits* (one per search thread
//! the ANN index allows). Writes arrive as logged [`Record`]s and are
//! applied one at a time in sequence order (see `storage`) to the point store and the
//! [`Tail`] together, which makes them searchable at once; the graph takes them from the tail in
//! the background, on indexer threads ([`Engine::run_indexer`], one per CPU where the graph
//! takes inserts side by side, see `--index-threads`), which are the only writers of the graph
//! (the `Ann` contract). A search scans the tail exactly and merges it with the graph's
//! answer, dropping graph hits whose point is gone or newer in the tail.
//!
//! Lock order: `writer`, then `graph_writers`, then `store`, then `tail`; each indexer holds
//! `graph_writers` (shared) for one point at a time, and removals and a snapshot
//! ([`Engine::freeze`]) hold it alone, so a snapshot waits for at most one insert per indexer.
//!
//! The parts: [`types`] (what a search and a write carry), [`state`] (the [`Engine`] and its
//! locks), [`search`], [`write`] (the write path), [`indexer`] (tail to graph), [`frozen`]
//! (a consistent view for snapshots) and [`settings`] (the index's flags).

mod frozen;
mod indexer;
mod search;
mod settings;
mod state;
#[cfg(test)]
mod tests;
mod types;
mod write;

pub use frozen::Frozen;
pub use search::run_searches_inline_on_this_thread;
pub use settings::Args;
pub use state::{Engine, TAIL_LIMIT};
pub use types::{Hit, NewPoint, PointData, Query, Record, Search, Shape};
pub use write::PreloadError;

//! Searching: within the search-permit limit, on the blocking pool or in place, the graph's
//! answer merged with an exact scan of the tail.

use std::cell::Cell;
use std::sync::Arc;

use super::state::Engine;
use super::types::{Hit, Query, Search};
use crate::error::Error;
use crate::index::Neighbor;
use crate::index::store::StoredPoint;
use crate::index::tail;

thread_local! {
    /// Whether this thread runs approximate searches in place ([`Engine::search`]).
    static SEARCHES_INLINE: Cell<bool> = const { Cell::new(false) };
}

/// Marks the calling thread as one that runs approximate searches in place rather than
/// handing them to the blocking pool: a worker of the runtime of admitted work, whose tasks
/// are searches and the steps around them (`admission::work`).
///
/// Why: a hand-off to the blocking pool and back is two thread switches per search, on top
/// of the two between the request path and the work runtime, and on a small server those
/// switches cost the request path a large share of the CPU a search takes (figures in
/// `docs/overload.md`). In place, a worker runs a search, releases its slot and starts the
/// next admitted one without leaving the CPU. Exact scans still go to the pool: they can
/// take long enough to hold up the runtime's other admitted requests (the start of the next
/// granted one, the release of slots).
///
/// Every approximate search on such a thread runs in place: that runtime holds admitted work
/// only (requests wait for their turn in admission's fair queue, and are started on it when
/// granted: `admission::Launch`), so a search in place holds up no request that is still to
/// take its place in the fair queue.
///
/// A search in place runs at the worker's priority, not index work's (`--index-nice`): the
/// worker must keep its own for the steps around every request (starting the next granted
/// request, releasing slots), or the request path crowds out those steps under a flood.
pub fn run_searches_inline_on_this_thread() {
    SEARCHES_INLINE.with(|inline| inline.set(true));
}

/// Graph hits asked for beyond `k` to make up for hits the tail shadows, at most.
const MAX_OVERFETCH: usize = 1024;

impl Search {
    /// Whether [`Engine::search`] runs this search in place on the calling thread (see
    /// [`run_searches_inline_on_this_thread`]) rather than on the blocking pool.
    pub(super) fn runs_in_place(&self) -> bool {
        !self.exact && SEARCHES_INLINE.with(Cell::get)
    }
}

impl Engine {
    /// One point by id.
    pub fn get(&self, id: u64) -> Result<StoredPoint, Error> {
        self.store
            .read()
            .map_err(|_| Error::Worker("point store lock poisoned".into()))?
            .get(id)
            .ok_or(Error::NotFound { id })
    }

    /// Runs a search within the search-permit limit: on the blocking pool, or in place on a
    /// thread marked by [`run_searches_inline_on_this_thread`] (approximate searches only).
    pub async fn search(self: &Arc<Self>, search: Search) -> Result<Vec<Hit>, Error> {
        let permit = self
            .search_permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Error::Unavailable("server is shutting down".into()))?;
        if search.runs_in_place() {
            let _permit = permit;
            let _work = crate::cpu::IndexWork::in_place();
            return self.search_blocking(&search);
        }
        let engine = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let _work = crate::cpu::IndexWork::begin();
            engine.search_blocking(&search)
        })
        .await
        .map_err(|e| Error::Worker(e.to_string()))?
    }

    /// A search, synchronously. The caller must respect the search-permit limit
    /// ([`Engine::search`] does).
    pub fn search_blocking(&self, search: &Search) -> Result<Vec<Hit>, Error> {
        let embedded;
        let query: &[f32] = match &search.query {
            Query::Vector(v) => v,
            Query::Text(t) => {
                embedded = self.embedder.embed(t);
                &embedded
            }
        };
        let neighbors: Vec<Neighbor> = if search.exact {
            self.store_read()?.exact_search(query, search.k)
        } else {
            let ef = search.ef.unwrap_or(self.default_ef);
            self.approximate(query, search.k, ef)?
        };
        let store = self.store_read()?;
        Ok(neighbors
            .into_iter()
            // A point deleted while this search ran may still be in an answer.
            .filter(|n| store.contains(n.id))
            .map(|n| Hit {
                id: n.id,
                distance: n.distance,
                payload: search
                    .with_payload
                    .then(|| store.payload(n.id).cloned().unwrap_or_default()),
            })
            .collect())
    }

    /// The graph's answer merged with an exact scan of the tail. The tail is read first: a
    /// point that leaves it afterwards was put in the graph before it left.
    fn approximate(&self, query: &[f32], k: usize, ef: usize) -> Result<Vec<Neighbor>, Error> {
        let (from_tail, shadowed) = {
            let tail = self.tail_read()?;
            let hits = if tail.is_empty() {
                Vec::new()
            } else {
                tail.exact_search(query, k)
            };
            // Graph entries the tail shadows are the ones waiting for removal.
            (hits, tail.removals())
        };
        let from_graph = self
            .ann
            .search(query, k + shadowed.min(MAX_OVERFETCH), ef)?;
        let from_graph = {
            let store = self.store_read()?;
            let tail = self.tail_read()?;
            from_graph
                .into_iter()
                .filter(|n| store.contains(n.id) && !tail.shadows(n.id))
                .collect()
        };
        Ok(tail::merge(from_graph, from_tail, k))
    }
}

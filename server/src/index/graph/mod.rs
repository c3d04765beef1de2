//! Our own HNSW graph (Malkov & Yashunin, "Efficient and robust approximate nearest neighbor
//! search using Hierarchical Navigable Small World graphs") behind the [`Ann`] trait.
//!
//! Why it exists: usearch does about as many distance computations as hnswlib for the same
//! recall, yet answers well below its QPS (`docs/benchmarks.md`): each distance goes through indirect calls, every
//! candidate's key is read for a predicate that always passes, and nothing is prefetched. Here
//! the hot loop is ours, and the layout is chosen for it:
//! - vectors live inline in one contiguous slab (`Slab`), each starting on a cache line, on
//!   huge pages where Linux gives them (`kernels::advise_huge_pages`: fewer TLB misses),
//!   addressed by an internal `u32` row; cosine vectors are normalised on the way in, so every
//!   cosine distance is `1 - a·b` (`distance::unit`: one dot product, no norms);
//! - a search walks the graph with a second copy of the vectors at half width (f16: half the
//!   bytes to wait for, and 100k x 128-d then fits the L3 cache), and ranks the best `ef` it
//!   found again with the f32 vectors, so its answers and distances are exact; inserts link by
//!   the f32 vectors (the ann bench's figures against hnswlib: `docs/benchmarks.md`);
//! - level-0 neighbour lists, where almost all the work happens, sit in one flat array with a
//!   fixed block of `1 + 2M` words per row (count, then neighbours); the upper levels, which
//!   only one node in `M` has, are a small vector per row;
//! - a search marks visited rows in a reused generation-stamped array (no hashing, no
//!   clearing), taken from a pool, and gathers a node's unvisited neighbours first, asking the
//!   CPU to prefetch their vectors, before computing any of their distances, so the memory
//!   loads overlap instead of each distance waiting for its own;
//! - neighbours are chosen with the paper's heuristic (keep a candidate only if it is nearer
//!   to the new node than to every neighbour already kept), which is what gives HNSW its recall
//!   on clustered data.
//!
//! External ids map to rows through a hash map. `remove` leaves a tombstone: the node stays in
//! the graph and is still traversed (its links keep the graph navigable) but is never
//! returned; inserting an id again tombstones its old row. An insert takes a tombstoned row
//! when there is one (as hnswlib's `replace_deleted` does), so a graph under rewrites and
//! deletes stays at its live size plus the tombstones of the moment instead of growing
//! without end: the row keeps its level, takes the new vector, and is linked as a new node;
//! first, each of the old node's neighbours chooses its links again among its own neighbours
//! and the old node's, so that the links that led to the old vector are dropped rather than
//! left pointing at a vector they were never chosen for.
//!
//! Concurrency (the [`Ann`] contract: inserts of distinct ids from up to
//! [`Ann::insert_threads`] threads, removes and saves alone, searches beside all of them):
//! the graph sits in an `RwLock`. An insert does all the expensive work (the searches for its
//! neighbours, the pruning of their lists) under the *read* lock, beside searches and other
//! inserts, into a plan, and takes the write lock only to apply it: append one row and copy
//! a few neighbour lists. Plans made side by side are reconciled when applied: each takes the
//! next row then, and a neighbour list that changed since its plan read it is made again from
//! what it holds now. Inserts that would change what other plans rely on (the first node, a
//! new top level, a reused tombstone) run alone, behind a second lock (`writers`), as do
//! removes. Planners move in step (see `GraphAnn::wait_for_applies`), so that a second
//! writer builds the graph faster than one (`docs/benchmarks.md`).
//!
//! Files (`save`/[`GraphAnn::load`]): a versioned little-endian format of our own, checked
//! with a CRC-32 and validated field by field, so that a file of another width, metric or
//! version is refused by name and a truncated or corrupt one is an error, never a panic.
//!
//! The parts: [`nodes`] (the graph proper and a search's walk), [`insert`] (insert planning
//! and levels), [`ann`] (the [`GraphAnn`] behind [`Ann`], its locks and pools), [`file`] (the
//! format), [`slab`] (vector storage) and [`scratch`] (a search's working state).

mod ann;
mod file;
mod insert;
mod nodes;
mod scratch;
mod slab;
#[cfg(test)]
mod tests;

pub use ann::GraphAnn;
pub use file::is_graph_file;

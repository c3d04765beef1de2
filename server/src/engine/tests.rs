//! The engine's unit tests: searches in place, narrowing, the write path and the indexers.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::*;
use crate::error::Error;
use crate::index::store::Payload;
use crate::index::{AnnEngine, HnswParams, Metric};

/// Approximate searches run in place only on a marked thread; exact scans never do.
#[test]
fn searches_run_in_place_only_on_marked_threads() {
    let search = |exact| Search {
        query: Query::Vector(vec![0.0; 4]),
        k: 1,
        ef: None,
        exact,
        with_payload: false,
    };
    // A fresh thread, so that the mark does not stay on a thread other tests run on.
    std::thread::spawn(move || {
        assert!(!search(false).runs_in_place(), "an unmarked thread");
        run_searches_inline_on_this_thread();
        assert!(search(false).runs_in_place());
        assert!(!search(true).runs_in_place(), "an exact scan");
    })
    .join()
    .expect("the checks pass");
}

#[test]
fn a_narrowed_search_keeps_at_least_k_and_leaves_exact_scans_whole() {
    let search = |k, ef, exact| Search {
        query: Query::Vector(vec![0.0; 3]),
        k,
        ef,
        exact,
        with_payload: false,
    };
    let ef_of = |s: Search| s.ef;
    assert_eq!(ef_of(search(10, None, false).narrowed(0.25, 64)), Some(16));
    assert_eq!(
        ef_of(search(10, Some(512), false).narrowed(0.5, 64)),
        Some(256)
    );
    // Rounded up, and never below k (fewer candidates than k would return fewer hits).
    assert_eq!(
        ef_of(search(10, Some(100), false).narrowed(0.333, 64)),
        Some(34)
    );
    assert_eq!(ef_of(search(40, None, false).narrowed(0.25, 64)), Some(40));
    // Full breadth changes nothing: the server default still applies later.
    assert_eq!(ef_of(search(10, None, false).narrowed(1.0, 64)), None);
    assert_eq!(ef_of(search(10, None, true).narrowed(0.1, 64)), None);
    assert_eq!(
        ef_of(search(10, Some(64), false).narrowed(f64::NAN, 64)),
        Some(64)
    );
}

#[test]
fn apply_refuses_a_logged_vector_of_another_width() {
    let shape = Shape {
        dimensions: 3,
        metric: Metric::L2,
    };
    let engine = Engine::new(shape, HnswParams::default(), 16).expect("engine");
    let record = Record::Upsert(vec![
        (1, vec![1.0, 2.0, 3.0], Payload::new()),
        (2, vec![1.0, 2.0], Payload::new()),
    ]);
    let error = engine
        .apply(1, &record)
        .expect_err("two values in a 3-wide index");
    assert!(
        matches!(&error, Error::InvalidArgument { field, .. } if field == "point 2"),
        "{error:?}"
    );
    assert!(engine.is_empty(), "nothing of the record is applied");
    assert_eq!(engine.sequence(), 0);
}

/// On usearch where the build has it (these tests were written against it), else on
/// our graph.
fn l2_engine(dimensions: usize) -> Engine {
    #[cfg(feature = "usearch")]
    let ann = AnnEngine::Usearch;
    #[cfg(not(feature = "usearch"))]
    let ann = AnnEngine::Graph;
    l2_engine_of(dimensions, ann)
}

fn l2_engine_of(dimensions: usize, engine: AnnEngine) -> Engine {
    let shape = Shape {
        dimensions,
        metric: Metric::L2,
    };
    let hnsw = HnswParams {
        engine,
        ..HnswParams::default()
    };
    Engine::new(shape, hnsw, 256).expect("engine")
}

fn nearest(engine: &Engine, vector: &[f32], k: usize) -> Vec<Hit> {
    engine
        .search_blocking(&Search {
            query: Query::Vector(vector.to_vec()),
            k,
            ef: Some(256),
            exact: false,
            with_payload: false,
        })
        .expect("search")
}

/// Applied and not indexed (no indexer runs here): found by its own vector all the same,
/// and a replaced point is found at its new place only, before and after indexing.
#[test]
fn a_written_point_is_found_before_the_graph_has_it() {
    let engine = l2_engine(2);
    let upsert = |sequence, id, v: [f32; 2]| {
        engine
            .apply(
                sequence,
                &Record::Upsert(vec![(id, v.to_vec(), Payload::new())]),
            )
            .expect("apply")
    };
    upsert(1, 1, [0.0, 0.0]);
    upsert(2, 2, [10.0, 0.0]);
    engine.index_all().expect("index");
    assert_eq!(engine.tail_len(), 0);
    upsert(3, 3, [5.0, 5.0]);
    assert_eq!(engine.tail_len(), 1);
    assert_eq!(nearest(&engine, &[5.0, 5.0], 1)[0].id, 3);
    // Replaced: the graph's old vector of 1 must not answer for it.
    upsert(4, 1, [100.0, 100.0]);
    let hits = nearest(&engine, &[0.0, 0.0], 3);
    assert_eq!(hits.iter().map(|h| h.id).collect::<Vec<_>>(), vec![3, 2, 1]);
    assert_eq!(hits[2].distance, 2.0 * 100.0 * 100.0);
    engine.apply(5, &Record::Delete(vec![2])).expect("delete");
    assert_eq!(nearest(&engine, &[10.0, 0.0], 3).len(), 2);
    engine.index_all().expect("index");
    assert_eq!(engine.tail_len(), 0);
    let hits = nearest(&engine, &[0.0, 0.0], 3);
    assert_eq!(hits.iter().map(|h| h.id).collect::<Vec<_>>(), vec![3, 1]);
}

/// A full tail holds the writer until the indexer makes room.
#[test]
fn a_full_tail_holds_writers_until_indexed() {
    let engine = Arc::new(l2_engine(1).with_tail_limit(3));
    let points = (0..3u64)
        .map(|id| (id, vec![id as f32], Payload::new()))
        .collect();
    engine.apply(1, &Record::Upsert(points)).expect("apply");
    let indexer = {
        let engine = Arc::clone(&engine);
        std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(50));
            engine.index_step().expect("index")
        })
    };
    let stop = AtomicBool::new(false);
    engine.wait_for_room(&stop);
    assert_eq!(
        engine.tail_len(),
        2,
        "room was made before the writer went on"
    );
    assert!(indexer.join().expect("indexer"));
}

/// Indexers side by side while points are written, rewritten and deleted: once they
/// have caught up, the graph holds exactly the stored points, each at its current vector
/// (no stale write left behind by an insert that raced its own rewrite, none lost).
#[test]
fn indexers_side_by_side_leave_the_graph_equal_to_the_store() {
    use rand::{Rng, SeedableRng};
    let shape = Shape {
        dimensions: 16,
        metric: Metric::L2,
    };
    let hnsw = HnswParams {
        insert_threads: 3,
        ..HnswParams::default()
    };
    let engine = Arc::new(Engine::new(shape, hnsw, 64).expect("engine"));
    assert_eq!(engine.indexers(), 3);
    let stop = Arc::new(AtomicBool::new(false));
    let indexers: Vec<_> = (0..engine.indexers())
        .map(|_| {
            let (engine, stop) = (Arc::clone(&engine), Arc::clone(&stop));
            std::thread::spawn(move || engine.run_indexer(&stop))
        })
        .collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(16);
    // Few ids, so that a point is often written again while an indexer inserts it.
    for sequence in 1..=20_000u64 {
        let id = rng.random_range(0..50u64);
        let record = if rng.random_bool(0.15) {
            Record::Delete(vec![id])
        } else {
            let v = (0..16)
                .map(|_| rng.random_range(-100.0..100.0f32))
                .collect();
            Record::Upsert(vec![(id, v, Payload::new())])
        };
        engine.apply(sequence, &record).expect("apply");
        if sequence % 20 == 0 {
            // Let the indexers take points while writes go on.
            std::thread::sleep(std::time::Duration::from_micros(100));
        }
    }
    stop.store(true, Ordering::Release);
    for indexer in indexers {
        indexer.join().expect("indexer");
    }
    engine.index_all().expect("index");
    assert_eq!(engine.tail_len(), 0);
    let frozen = engine.freeze().expect("freeze");
    let store = engine.store_read().expect("store");
    assert_eq!(
        frozen.ann().len(),
        store.len(),
        "graph and store hold the same points"
    );
    for (id, vector, _) in store.iter() {
        let hits = frozen.ann().search(vector, 1, 256).expect("search");
        assert_eq!(
            hits.first().map(|h| (h.id, h.distance)),
            Some((id, 0.0)),
            "point {id}"
        );
    }
}

mod merged {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Upsert(u64, [i8; 3]),
        Delete(u64),
        Index(usize),
    }

    /// Writes of fresh ids only, or (`rewrites`) of ids 0..40 again and deletes too.
    fn ops(rewrites: bool) -> impl Strategy<Value = Vec<(usize, Op)>> {
        let op = prop_oneof![
            4 => (0..40u64, any::<[i8; 3]>()).prop_map(|(id, v)| Op::Upsert(id, v)),
            if rewrites { 1 } else { 0 } => (0..40u64).prop_map(Op::Delete),
            1 => (0..20usize).prop_map(Op::Index),
        ];
        proptest::collection::vec(op, 1..120)
            .prop_map(move |ops| ops.into_iter().enumerate().collect())
    }

    /// Either graph implementation (`--ann-engine`) this build has.
    #[cfg(feature = "usearch")]
    fn ann_engine() -> impl Strategy<Value = AnnEngine> {
        prop_oneof![Just(AnnEngine::Usearch), Just(AnnEngine::Graph)]
    }

    /// The one graph implementation a build without usearch has.
    #[cfg(not(feature = "usearch"))]
    fn ann_engine() -> impl Strategy<Value = AnnEngine> {
        Just(AnnEngine::Graph)
    }

    /// Applies `ops` (a fresh id per upsert unless `rewrites`); returns the engine.
    fn run(ops: &[(usize, Op)], rewrites: bool, ann: AnnEngine) -> Engine {
        let engine = l2_engine_of(3, ann);
        for (i, op) in ops {
            let sequence = *i as u64 + 1;
            match op {
                Op::Upsert(id, v) => {
                    let id = if rewrites { *id } else { *i as u64 };
                    let v = v.iter().map(|&x| f32::from(x)).collect();
                    let record = Record::Upsert(vec![(id, v, Payload::new())]);
                    engine.apply(sequence, &record).expect("upsert");
                }
                Op::Delete(id) => {
                    engine
                        .apply(sequence, &Record::Delete(vec![*id]))
                        .expect("delete");
                }
                Op::Index(n) => {
                    for _ in 0..*n {
                        engine.index_step().expect("index");
                    }
                }
            }
        }
        engine
    }

    fn vector(v: [i8; 3]) -> Vec<f32> {
        v.iter().map(|&x| f32::from(x)).collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Whatever part of the points the graph has taken, graph + tail answers what the
        /// exact scan answers (small sets, breadth beyond their size: HNSW is exact there).
        #[test]
        fn graph_and_tail_merged_equal_the_exact_scan(
            ops in ops(false),
            query in any::<[i8; 3]>(),
            ann in ann_engine(),
        ) {
            let engine = run(&ops, false, ann);
            let query = vector(query);
            let k = 5;
            let exact = engine.store_read().expect("store").exact_search(&query, k);
            let merged = nearest(&engine, &query, k);
            // Ties may order ids differently; the distances must be the same.
            let want: Vec<f32> = exact.iter().map(|n| n.distance).collect();
            let got: Vec<f32> = merged.iter().map(|h| h.distance).collect();
            prop_assert_eq!(got, want);
        }

        /// With points rewritten and deleted while the graph catches up: every hit is a
        /// stored point at the distance of its current vector (never a stale graph
        /// vector, never twice), nearest first, and every tail point that belongs in the
        /// exact answer is in it. (The graph's own recall after removals is usearch's:
        /// removed nodes can leave others unreachable even on tiny sets, so exact
        /// equality is not asked of it here.)
        #[test]
        fn rewritten_points_answer_with_their_current_vector(
            ops in ops(true),
            query in any::<[i8; 3]>(),
            ann in ann_engine(),
        ) {
            let engine = run(&ops, true, ann);
            let query = vector(query);
            let k = 5;
            let merged = nearest(&engine, &query, k);
            let mut ids: Vec<u64> = merged.iter().map(|h| h.id).collect();
            ids.sort_unstable();
            ids.dedup();
            prop_assert_eq!(ids.len(), merged.len(), "each id once");
            prop_assert!(merged.windows(2).all(|w| w[0].distance <= w[1].distance));
            for hit in &merged {
                let stored = engine.get(hit.id).expect("a hit is a stored point");
                let d = crate::index::distance::l2_squared_portable(&stored.vector, &query);
                prop_assert_eq!(d, hit.distance);
            }
            let exact = engine.store_read().expect("store").exact_search(&query, k);
            let worst = merged.last().map_or(f32::INFINITY, |h| h.distance);
            for n in exact {
                if engine.tail_read().expect("tail").contains(n.id) && n.distance < worst {
                    prop_assert!(merged.iter().any(|h| h.id == n.id), "tail point {} missed", n.id);
                }
            }
        }
    }
}

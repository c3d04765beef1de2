//! The graph's unit tests: recall, inserts side by side, tombstones, files, and a model check.

use super::ann::GraphAnn;
use super::file;
use crate::index::store::{Payload, PointStore};
use crate::index::{Ann, HnswParams, IndexError, Metric, kernels};
use proptest::prelude::{
    ProptestConfig, Strategy, any, prop_assert, prop_assert_eq, prop_oneof, proptest,
};
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use vecrig::synthetic::Synthetic;

fn params() -> HnswParams {
    HnswParams::default()
}

fn clustered(dims: usize, n: u64, metric: Metric) -> (Synthetic, GraphAnn) {
    let data = Synthetic::new(dims, 32, 3);
    let ann = GraphAnn::new(dims, metric, params()).expect("graph");
    for id in 0..n {
        ann.insert(id, &data.point(id).vector).expect("insert");
    }
    (data, ann)
}

/// recall@10 of the graph against the exact scan, on a 10k clustered set (as for usearch).
#[test]
fn recall_at_10_against_exact_scan() {
    let dims = 64;
    let (data, ann) = clustered(dims, 10_000, Metric::Cosine);
    let mut store = PointStore::new(dims, Metric::Cosine);
    for id in 0..10_000 {
        store.upsert(id, &data.point(id).vector, Payload::new());
    }
    assert_eq!(ann.len(), 10_000);
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    let (mut found, mut total) = (0usize, 0usize);
    for _ in 0..200 {
        let q = data.query_vector(&mut rng);
        let exact = store.exact_search(&q, 10);
        let truth: Vec<u64> = exact.iter().map(|n| n.id).collect();
        let got = ann.search(&q, 10, 64).expect("search");
        assert_eq!(got.len(), 10);
        assert!(got.windows(2).all(|w| w[0].distance <= w[1].distance));
        // Distances agree between the two paths.
        if got[0].id == exact[0].id {
            assert!((got[0].distance - exact[0].distance).abs() < 1e-3);
        }
        found += got.iter().filter(|n| truth.contains(&n.id)).count();
        total += truth.len();
    }
    let recall = found as f64 / total as f64;
    assert!(recall >= 0.95, "recall@10 = {recall:.3}");
}

#[test]
fn every_point_is_found_by_its_own_vector() {
    for metric in [Metric::Cosine, Metric::L2] {
        let (data, ann) = clustered(32, 3000, metric);
        for id in 0..3000 {
            let hits = ann.search(&data.point(id).vector, 1, 32).expect("search");
            // Under cosine and l2 nothing is nearer to a vector than itself.
            assert_eq!(hits[0].id, id, "{metric}: {hits:?}");
            assert!(hits[0].distance.abs() < 1e-4, "{metric}: {hits:?}");
        }
    }
}

/// Inserts side by side (the server's indexers), with searches running beside them:
/// every link is a real row, every point is found by its own vector, recall holds.
#[test]
fn inserts_side_by_side_keep_every_point_findable() {
    let (dims, n, writers) = (32, 6000u64, 4u64);
    let data = Synthetic::new(dims, 32, 3);
    let ann = GraphAnn::new(
        dims,
        Metric::L2,
        HnswParams {
            insert_threads: writers as usize,
            ..params()
        },
    )
    .expect("graph");
    assert_eq!(ann.insert_threads(), writers as usize);
    std::thread::scope(|scope| {
        for first in 0..writers {
            let (ann, data) = (&ann, &data);
            scope.spawn(move || {
                for id in (first..n).step_by(writers as usize) {
                    ann.insert(id, &data.point(id).vector).expect("insert");
                }
            });
        }
        let (ann, data) = (&ann, &data);
        scope.spawn(move || {
            let mut rng = rand::rngs::StdRng::seed_from_u64(4);
            for _ in 0..500 {
                let hits = ann
                    .search(&data.query_vector(&mut rng), 10, 32)
                    .expect("search");
                assert!(hits.windows(2).all(|w| w[0].distance <= w[1].distance));
            }
        });
    });
    assert_eq!(ann.len(), n as usize);
    assert_eq!(ann.rows(), n as usize, "no row taken twice or skipped");
    {
        let graph = ann.graph.read().expect("graph");
        for row in 0..n as u32 {
            for l in 0..=usize::from(graph.levels[row as usize]) {
                let links = graph.links(row, l);
                assert!(links.len() <= graph.capacity(l));
                for (i, &to) in links.iter().enumerate() {
                    assert!(to < n as u32 && to != row, "{row} level {l} links {to}");
                    assert!(!links[..i].contains(&to), "{row} links {to} twice");
                }
            }
        }
    }
    for id in 0..n {
        let hits = ann.search(&data.point(id).vector, 1, 32).expect("search");
        assert_eq!(hits[0].id, id, "{hits:?}");
    }
    let mut store = PointStore::new(dims, Metric::L2);
    for id in 0..n {
        store.upsert(id, &data.point(id).vector, Payload::new());
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    let (mut found, mut total) = (0usize, 0usize);
    for _ in 0..200 {
        let q = data.query_vector(&mut rng);
        let truth: Vec<u64> = store.exact_search(&q, 10).iter().map(|h| h.id).collect();
        let got = ann.search(&q, 10, 64).expect("search");
        found += got.iter().filter(|h| truth.contains(&h.id)).count();
        total += truth.len();
    }
    let recall = found as f64 / total as f64;
    assert!(recall >= 0.95, "recall@10 = {recall:.3}");
}

#[test]
fn remove_hides_a_point_and_reinsert_replaces_it() {
    let (data, ann) = clustered(16, 2000, Metric::L2);
    let v = data.point(7).vector;
    ann.remove(7).expect("remove");
    ann.remove(7).expect("absent ids are ignored");
    assert!(!ann.contains(7));
    assert_eq!(ann.len(), 1999);
    assert_eq!(ann.tombstones(), 1);
    let hits = ann.search(&v, 10, 64).expect("search");
    assert_eq!(
        hits.len(),
        10,
        "tombstones are traversed, results still full"
    );
    assert!(hits.iter().all(|h| h.id != 7));

    // Re-inserting an id replaces its vector: found at the new place, not the old.
    let far = vec![1000.0; 16];
    ann.insert(8, &far).expect("replace");
    assert_eq!(ann.len(), 1999);
    // 8 took 7's tombstoned row, and left its own as the one tombstone.
    assert_eq!(ann.tombstones(), 1);
    assert_eq!(ann.rows(), 2000, "no row added");
    let hits = ann.search(&far, 1, 16).expect("search");
    assert_eq!((hits[0].id, hits[0].distance), (8, 0.0));
    let old = data.point(8).vector;
    let hits = ann.search(&old, 10, 64).expect("search");
    assert!(hits.iter().all(|h| h.id != 8), "the old vector is gone");

    // A removed id comes back with an insert.
    ann.insert(7, &v).expect("insert again");
    assert!(ann.contains(7));
    assert_eq!(ann.search(&v, 1, 16).expect("search")[0].id, 7);
}

#[test]
fn rewrites_reuse_tombstoned_rows_and_keep_recall() {
    // Every point rewritten three times with a new vector (another point of the same
    // clustered distribution), and a tenth removed and inserted again: the graph stays at
    // its live size, and searches stay as good as on a graph built once.
    let (data, ann) = clustered(16, 2000, Metric::L2);
    let live = |round: u64, id: u64| data.point((id * 7 + round * 2003) % 6000).vector;
    for round in 1..=3 {
        for id in 0..2000 {
            ann.insert(id, &live(round, id)).expect("rewrite");
        }
        for id in (0..2000).step_by(10) {
            ann.remove(id).expect("remove");
        }
        for id in (0..2000).step_by(10) {
            ann.insert(id, &live(round, id)).expect("insert again");
        }
    }
    assert_eq!(ann.len(), 2000);
    assert!(
        ann.rows() <= 2001,
        "tombstoned rows are reused: {} rows for 2000 points",
        ann.rows()
    );
    // Recall@10 against an exact scan of the current vectors.
    let current: Vec<(u64, Vec<f32>)> = (0..2000).map(|id| (id, live(3, id))).collect();
    let fresh = GraphAnn::new(16, Metric::L2, params()).expect("graph");
    for (id, v) in &current {
        fresh.insert(*id, v).expect("insert");
    }
    let recall = |ann: &GraphAnn| {
        let queries = 200;
        let mut hits_found = 0;
        for q in 0..queries {
            let query = data.point(10_000 + q).vector;
            let mut exact: Vec<(f32, u64)> = current
                .iter()
                .map(|(id, v)| (kernels::l2_squared(&query, v), *id))
                .collect();
            exact.sort_by(|a, b| a.0.total_cmp(&b.0));
            let truth: Vec<u64> = exact.iter().take(10).map(|e| e.1).collect();
            let found = ann.search(&query, 10, 32).expect("search");
            hits_found += found.iter().filter(|h| truth.contains(&h.id)).count();
        }
        hits_found as f64 / (queries as f64 * 10.0)
    };
    let (rewritten, built_once) = (recall(&ann), recall(&fresh));
    assert!(
        rewritten >= built_once - 0.03,
        "recall@10 after rewrites {rewritten}, built once {built_once}"
    );
}

#[test]
fn wrong_width_is_an_error() {
    let ann = GraphAnn::new(4, Metric::L2, params()).expect("graph");
    assert!(ann.insert(1, &[1.0, 2.0]).is_err());
    assert!(ann.search(&[1.0; 5], 1, 8).is_err());
    assert!(ann.search(&[1.0; 4], 1, 8).expect("empty").is_empty());
}

#[test]
fn save_and_load_give_identical_answers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("graph");
    let (data, ann) = clustered(24, 3000, Metric::Cosine);
    ann.remove(3).expect("remove");
    ann.insert(4, &data.point(5).vector).expect("replace");
    ann.save(&path).expect("save");
    let loaded = GraphAnn::load(&path, 24, Metric::Cosine, params()).expect("load");
    assert_eq!(loaded.len(), ann.len());
    assert_eq!(loaded.tombstones(), ann.tombstones());
    assert!(!loaded.contains(3) && loaded.contains(4));
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    for _ in 0..100 {
        let q = data.query_vector(&mut rng);
        assert_eq!(
            loaded.search(&q, 10, 40).expect("search"),
            ann.search(&q, 10, 40).expect("search")
        );
    }
    // Both keep working as indexes after the round trip.
    loaded
        .insert(99_999, &data.point(99_999).vector)
        .expect("insert");
    assert_eq!(
        loaded.search(&data.point(99_999).vector, 1, 16).expect("s")[0].id,
        99_999
    );
    // An empty graph round-trips too.
    let empty = GraphAnn::new(24, Metric::Cosine, params()).expect("graph");
    empty.save(&path).expect("save");
    let loaded = GraphAnn::load(&path, 24, Metric::Cosine, params()).expect("load");
    assert!(loaded.is_empty());
}

#[test]
fn a_file_of_another_shape_is_refused_by_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("graph");
    let (_, ann) = clustered(8, 100, Metric::L2);
    ann.save(&path).expect("save");
    let err = GraphAnn::load(&path, 9, Metric::L2, params()).expect_err("width");
    assert!(err.to_string().contains("8 dimensions"), "{err}");
    let err = GraphAnn::load(&path, 8, Metric::Cosine, params()).expect_err("metric");
    assert!(err.to_string().contains("metric l2"), "{err}");
    let mut bytes = std::fs::read(&path).expect("read");
    bytes[8] = 2; // version
    std::fs::write(&path, &bytes).expect("write");
    let err = GraphAnn::load(&path, 8, Metric::L2, params()).expect_err("version");
    assert!(err.to_string().contains("version 2"), "{err}");
    std::fs::write(&path, b"usearch, probably").expect("write");
    let err = GraphAnn::load(&path, 8, Metric::L2, params()).expect_err("magic");
    assert!(err.to_string().contains("magic"), "{err}");
    let missing = dir.path().join("missing");
    assert!(matches!(
        GraphAnn::load(&missing, 8, Metric::L2, params()),
        Err(IndexError::Io { .. })
    ));
}

#[test]
fn a_truncated_or_corrupt_file_is_an_error_not_a_panic() {
    let (_, ann) = clustered(8, 300, Metric::L2);
    let bytes = {
        let graph = ann.graph.read().expect("lock");
        file::encode(&graph)
    };
    assert!(file::decode(&bytes, 8, Metric::L2).is_ok());
    for len in (0..bytes.len()).step_by(7) {
        assert!(file::decode(&bytes[..len], 8, Metric::L2).is_err(), "{len}");
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    for _ in 0..500 {
        let mut damaged = bytes.clone();
        let at = rng.random_range(0..damaged.len());
        damaged[at] ^= 1 << rng.random_range(0..8);
        assert!(file::decode(&damaged, 8, Metric::L2).is_err(), "byte {at}");
    }
}

/// A corrupt file whose checksum was recomputed (so only the structural checks stand
/// between it and the graph) is still refused or loaded, never a panic.
#[test]
fn structural_damage_behind_a_valid_checksum_does_not_panic() {
    let (_, ann) = clustered(4, 200, Metric::L2);
    let bytes = {
        let graph = ann.graph.read().expect("lock");
        file::encode(&graph)
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(6);
    for _ in 0..2000 {
        let mut damaged = bytes[..bytes.len() - 4].to_vec();
        let at = rng.random_range(17..damaged.len());
        damaged[at] = rng.random();
        let crc = crc32fast::hash(&damaged);
        damaged.extend_from_slice(&crc.to_le_bytes());
        if let Ok(graph) = file::decode(&damaged, 4, Metric::L2) {
            let loaded = GraphAnn::from_graph(
                graph,
                HnswParams {
                    search_threads: 1,
                    ..params()
                },
            );
            let _ = loaded.search(&[1.0, 2.0, 3.0, 4.0], 5, 16).expect("search");
        }
    }
}

#[derive(Debug, Clone)]
enum Op {
    Insert(u64, [i8; 3]),
    Remove(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0u64..40, any::<[i8; 3]>()).prop_map(|(id, v)| Op::Insert(id, v)),
        1 => (0u64..40).prop_map(Op::Remove),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Whatever mix of inserts, rewrites and removals: the graph holds exactly the live
    /// ids, and a search answers only live ids, each once, nearest first, at the distance
    /// of its current vector; and as many as asked for (tombstones keep it navigable).
    #[test]
    fn answers_only_live_ids_at_their_current_distance(
        ops in proptest::collection::vec(op(), 1..120),
        query in any::<[i8; 3]>(),
    ) {
        let ann = GraphAnn::new(3, Metric::L2, HnswParams {
            connectivity: 4,
            ef_construction: 16,
            search_threads: 1,
            ..HnswParams::default()
        }).expect("graph");
        let mut model: HashMap<u64, Vec<f32>> = HashMap::new();
        for op in &ops {
            match op {
                Op::Insert(id, v) => {
                    let v: Vec<f32> = v.iter().map(|&x| f32::from(x)).collect();
                    ann.insert(*id, &v).expect("insert");
                    model.insert(*id, v);
                }
                Op::Remove(id) => {
                    ann.remove(*id).expect("remove");
                    model.remove(id);
                }
            }
        }
        prop_assert_eq!(ann.len(), model.len());
        for id in 0..40 {
            prop_assert_eq!(ann.contains(id), model.contains_key(&id));
        }
        let query: Vec<f32> = query.iter().map(|&x| f32::from(x)).collect();
        let hits = ann.search(&query, 5, 200).expect("search");
        let mut ids: Vec<u64> = hits.iter().map(|h| h.id).collect();
        ids.sort_unstable();
        ids.dedup();
        prop_assert_eq!(ids.len(), hits.len(), "each id once");
        prop_assert_eq!(hits.len(), model.len().min(5));
        prop_assert!(hits.windows(2).all(|w| w[0].distance <= w[1].distance));
        for hit in &hits {
            let v = model.get(&hit.id).expect("a hit is live");
            prop_assert_eq!(crate::index::distance::l2_squared_portable(v, &query), hit.distance);
        }
    }
}

//! The integration tests: each file of tests/ is a module of this one binary, so the
//! workspace is compiled and linked into a test binary once, not once per file.
//!
//! Two tiers. The default one covers every behaviour with small sizes. The heavy one is the
//! tests marked `#[ignore = "heavy tier: ..."]` (floods, fairness, the degradation curve,
//! Docker) plus `VECRIG_STRESS_PROFILE=full` (the stress scenarios at full size, many more
//! `kill -9` rounds); `scripts/test --heavy` runs it, one test at a time, since its tests
//! measure the machine.

mod common;

mod abuse;
mod builtin_sets;
mod client_address;
mod collapse;
mod compare;
mod datasets;
mod degradation;
mod docker;
mod durability;
mod dynamic_target;
mod dynamic_vecrig;
mod fairness;
mod flags;
mod hostile;
mod hot_path;
mod interop;
mod load_models;
mod milvus;
mod noisy_neighbour;
mod overload;
mod peaks;
mod probe;
mod recall;
mod reports;
mod server;
mod stall;
mod stress_testing_framework;
mod surface;
mod tls;

/// With `autotests = false`, a file in tests/ that is not a module here would never be
/// compiled, and its tests would silently not run.
#[test]
fn every_test_file_is_a_module_of_this_binary() {
    let tests = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    let main = std::fs::read_to_string(tests.join("main.rs")).expect("tests/main.rs");
    let missing: Vec<String> = std::fs::read_dir(&tests)
        .expect("tests/")
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter_map(|name| Some(name.strip_suffix(".rs")?.to_string()))
        .filter(|name| name != "main" && !main.contains(&format!("\nmod {name};\n")))
        .collect();
    assert!(
        missing.is_empty(),
        "tests/ files not in tests/main.rs: {missing:?}"
    );
}

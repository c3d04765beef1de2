//! What the loadgen's benches share.

use std::path::{Path, PathBuf};

/// The `vecrig-server` binary beside `loadgen` (both in target/release).
pub fn server_binary(loadgen: &Path) -> PathBuf {
    let path = loadgen
        .parent()
        .map(|dir| dir.join("vecrig-server"))
        .expect("target dir");
    assert!(
        path.exists(),
        "{} is missing: `cargo build --release --workspace` first",
        path.display()
    );
    path
}

//! `vecrig-loadgen` binary.

fn main() {}

//! The stress-harness API that integration tests drive (filled in by the loadgen work).

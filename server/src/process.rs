//! Facts about this process read from the operating system: its resident memory, for the
//! memory guard, the metrics endpoint and `Stats`.

/// Resident memory of this process, from `/proc/self/statm` (Linux only).
pub fn resident_memory_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let resident_pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(resident_pages * page_size())
}

/// Resident memory as read at most every 100 ms: for `Stats`, which anyone may call at any
/// rate, so that a flood of it reads `/proc` ten times a second, not once per call (a read
/// of `/proc/self/statm` takes the process's memory map lock, which page faults need too).
pub fn recent_resident_memory_bytes() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::{Duration, Instant};
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    static READ_AT_MS: AtomicU64 = AtomicU64::new(u64::MAX);
    static BYTES: AtomicU64 = AtomicU64::new(0);
    let now_ms = START.get_or_init(Instant::now).elapsed().as_millis() as u64;
    let read_at = READ_AT_MS.load(Ordering::Acquire);
    let fresh = Duration::from_millis(100).as_millis() as u64;
    if read_at == u64::MAX || now_ms.saturating_sub(read_at) >= fresh {
        BYTES.store(resident_memory_bytes().unwrap_or(0), Ordering::Release);
        READ_AT_MS.store(now_ms, Ordering::Release);
    }
    BYTES.load(Ordering::Acquire)
}

fn page_size() -> u64 {
    // Every Linux platform we target uses 4 KiB base pages; reading it would need libc.
    4096
}

/// CPUs this process may use.
pub fn available_cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
}

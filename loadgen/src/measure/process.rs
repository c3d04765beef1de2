//! The loadgen's own CPU and memory, so a run can tell when the generator, not the server,
//! was the bottleneck.

use std::time::Instant;

use vecrig::validation::report::ProcessFigures;

/// Clock ticks per second of `/proc/self/stat` times: 100 on every Linux we target
/// (`sysconf(_SC_CLK_TCK)` would need libc for a constant).
const TICKS_PER_SECOND: f64 = 100.0;

/// CPU seconds (user + system) used by this process so far.
pub fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / TICKS_PER_SECOND)
}

/// Resident and peak resident memory of this process, bytes.
pub fn memory() -> Option<(u64, u64)> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb * 1024)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// Measures the process between `start` and `finish`.
#[derive(Debug, Clone, Copy)]
pub struct Meter {
    wall: Instant,
    cpu: f64,
}

impl Meter {
    /// Starts measuring.
    pub fn start() -> Self {
        Self {
            wall: Instant::now(),
            cpu: cpu_seconds().unwrap_or(0.0),
        }
    }

    /// CPU used since start, and cores' worth of CPU per wall second.
    pub fn finish(&self) -> ProcessFigures {
        let cpu = cpu_seconds().unwrap_or(0.0) - self.cpu;
        let wall = self.wall.elapsed().as_secs_f64().max(1e-9);
        let (rss, max_rss) = memory().unwrap_or((0, 0));
        ProcessFigures {
            cpu_seconds: cpu,
            cpu_cores_used: cpu / wall,
            rss_bytes: rss,
            max_rss_bytes: max_rss,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_figures() {
        let meter = Meter::start();
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_add(i * i);
        }
        std::hint::black_box(x);
        let f = meter.finish();
        assert!(f.cpu_seconds >= 0.0);
        assert!(f.rss_bytes > 0 && f.max_rss_bytes >= f.rss_bytes);
        assert!(cpu_seconds().is_some());
    }
}

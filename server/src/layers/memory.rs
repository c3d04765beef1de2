//! The memory guard: refuse work while the process is close to its memory limit, so that an
//! overloaded server answers `RESOURCE_EXHAUSTED` instead of being killed by the kernel.
//!
//! A container's memory limit is enforced by the OOM killer: there is no back pressure, the
//! process just dies, and every client sees `UNAVAILABLE` until it has restarted and replayed
//! its log. The index only grows with writes, so the guard refuses writes (`Upsert`) once the
//! resident memory reaches a first watermark, and everything else but the calls that cost
//! nothing or free memory (`Stats`, `Get`, `Delete`) at a second, higher one. Searches keep
//! working while writes are refused: the server degrades to read-only instead of failing.
//!
//! The first watermark is well below the limit (70%) on purpose: the write-ahead log goes
//! through the page cache, which the kernel charges to the same cgroup. In our memory fault
//! runs (a 200 MB container taking 25 MB/s of writes), refusing writes at 80% left the log too
//! little cache: the kernel reclaimed on every write and the server stalled for 10 s and more,
//! alive but useless; at 70% and 60% it kept answering in milliseconds. Once a watermark is
//! crossed, the calls it refuses resume only [`HYSTERESIS`] of the limit below it, so a server
//! at the edge does not flap between accepting and refusing.
//!
//! The limit is the cgroup's (`memory.max` on cgroup v2, `memory.limit_in_bytes` on v1), read
//! once at start, or `--memory-limit`. The resident set is read from `/proc/self/statm`, at most
//! every [`SAMPLE_EVERY`], so the check costs an atomic load on the hot path.
//!
//! Like admission, the guard is a tower layer that decides on the request's path before its
//! body is read: a refused 4 MB upsert is never decoded.

use std::convert::Infallible;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tonic::Status;
use tonic::body::Body;
use tonic::codegen::http;
use tonic::server::NamedService;
use tower::{Layer, Service};

use crate::method::Method;

/// How often the resident set is re-read at most.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(10);

/// How far below a watermark memory must fall before the calls it refused resume, as a
/// fraction of the limit.
pub const HYSTERESIS: f64 = 0.05;

/// cgroup v1 reports "no limit" as a huge page-rounded number; anything above this is none.
const UNLIMITED_V1: u64 = 1 << 60;

/// The memory flags (flattened into the server's).
#[derive(Debug, Clone, clap::Args)]
#[group(skip)]
pub struct Args {
    /// Memory the process may use: `auto` (the cgroup's limit, if any), `none`, or a size
    /// (`512MiB`, `2GB`, bytes).
    #[arg(long, env = "VECRIG_MEMORY_LIMIT", default_value = "auto", value_parser = parse_limit)]
    pub memory_limit: Limit,
    /// Refuse upserts once resident memory reaches this fraction of the limit.
    #[arg(long, env = "VECRIG_MEMORY_REFUSE_WRITES", default_value_t = 0.70)]
    pub memory_refuse_writes: f64,
    /// Refuse everything but Stats, Get and Delete once resident memory reaches this fraction.
    #[arg(long, env = "VECRIG_MEMORY_REFUSE_ALL", default_value_t = 0.90)]
    pub memory_refuse_all: f64,
}

/// Where the memory limit comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// The cgroup's limit, if the process is in one with a limit.
    Auto,
    /// No guard.
    None,
    /// This many bytes.
    Bytes(u64),
}

/// Parses `auto`, `none`/`off` or a size with an optional unit.
pub fn parse_limit(text: &str) -> Result<Limit, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "auto" => return Ok(Limit::Auto),
        "none" | "off" => return Ok(Limit::None),
        _ => {}
    }
    parse_size(text).map(Limit::Bytes)
}

/// Parses `512MiB`, `2GB`, `1g`, `1048576`: a number with an optional decimal or binary unit.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("{text:?}: expected a size such as 512MiB, 2GB or 1073741824"))?;
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        other => return Err(format!("{text:?}: unknown unit {other:?}")),
    };
    let bytes = number * factor as f64;
    if !(bytes.is_finite() && bytes >= 1.0) {
        return Err(format!("{text:?}: must be at least one byte"));
    }
    Ok(bytes as u64)
}

/// Validated guard settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Config {
    /// Where the limit comes from.
    pub limit: Limit,
    /// Fraction of the limit at which writes are refused.
    pub refuse_writes: f64,
    /// Fraction of the limit at which everything but Stats, Get and Delete is refused.
    pub refuse_all: f64,
}

impl Default for Config {
    /// The command line's defaults.
    fn default() -> Self {
        Self::try_from(&crate::flags::defaults::<Args>()).expect("the default fractions are valid")
    }
}

impl TryFrom<&Args> for Config {
    type Error = String;
    fn try_from(args: &Args) -> Result<Self, String> {
        let fraction = |name: &str, v: f64| {
            if v > 0.0 && v <= 1.0 {
                Ok(v)
            } else {
                Err(format!("--{name} must be in (0, 1], got {v}"))
            }
        };
        let refuse_writes = fraction("memory-refuse-writes", args.memory_refuse_writes)?;
        let refuse_all = fraction("memory-refuse-all", args.memory_refuse_all)?;
        if refuse_all < refuse_writes {
            return Err(format!(
                "--memory-refuse-all ({refuse_all}) must not be below --memory-refuse-writes ({refuse_writes})"
            ));
        }
        Ok(Self {
            limit: args.memory_limit,
            refuse_writes,
            refuse_all,
        })
    }
}

/// The memory limit of the cgroup this process is in, if any: the smallest limit on the way
/// from its cgroup up to the root (v2), or its memory cgroup's (v1). `root` is normally
/// `/sys/fs/cgroup` and `self_cgroup` the text of `/proc/self/cgroup`.
pub fn cgroup_limit(root: &Path, self_cgroup: &str) -> Option<u64> {
    let mut limits = Vec::new();
    for line in self_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let relative = path.trim_start_matches('/');
        if controllers.is_empty() {
            // v2: every ancestor's memory.max applies. Inside a container with its own
            // cgroup namespace the path is "/" and the container's limit is at the root.
            let mut dir = root.join(relative);
            loop {
                limits.extend(read_limit(&dir.join("memory.max")));
                if dir.as_path() == root || !dir.pop() {
                    break;
                }
            }
        } else if controllers.split(',').any(|c| c == "memory") {
            // v1: the container's own memory cgroup is mounted at the controller's root.
            let base = root.join("memory");
            limits.extend(read_limit(
                &base.join(relative).join("memory.limit_in_bytes"),
            ));
            limits.extend(read_limit(&base.join("memory.limit_in_bytes")));
        }
    }
    limits.into_iter().min()
}

fn read_limit(path: &PathBuf) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    let value: u64 = text.trim().parse().ok()?; // "max" (v2, no limit) does not parse
    (value < UNLIMITED_V1).then_some(value)
}

/// What the guard lets through now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Pressure {
    /// Everything.
    Normal = 0,
    /// Everything but writes.
    RefuseWrites = 1,
    /// Only Stats, Get and Delete.
    RefuseAll = 2,
}

/// Reads the resident set of this process, in bytes.
pub type RssReader = Box<dyn Fn() -> Option<u64> + Send + Sync>;

/// The guard's state, shared by the layer's clones.
pub struct MemoryGuard {
    limit: Option<u64>,
    writes_at: u64,
    all_at: u64,
    hysteresis: u64,
    read_rss: RssReader,
    started: Instant,
    /// Micros since `started` of the last sample, and the value then.
    sampled_at: AtomicU64,
    rss: AtomicU64,
    level: AtomicU8,
    refused: AtomicU64,
}

impl std::fmt::Debug for MemoryGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryGuard")
            .field("limit", &self.limit)
            .field("writes_at", &self.writes_at)
            .field("all_at", &self.all_at)
            .finish()
    }
}

impl MemoryGuard {
    /// A guard for `config`, resolving `auto` from this process's cgroup.
    pub fn new(config: &Config) -> Arc<Self> {
        let limit = match config.limit {
            Limit::None => None,
            Limit::Bytes(b) => Some(b),
            Limit::Auto => std::fs::read_to_string("/proc/self/cgroup")
                .ok()
                .and_then(|text| cgroup_limit(Path::new("/sys/fs/cgroup"), &text)),
        };
        Self::with_reader(
            limit,
            config,
            Box::new(crate::process::resident_memory_bytes),
        )
    }

    /// A guard with an explicit `limit` and resident-set reader (tests use a fake one).
    pub fn with_reader(limit: Option<u64>, config: &Config, read_rss: RssReader) -> Arc<Self> {
        let at = |fraction: f64| limit.map_or(u64::MAX, |l| (l as f64 * fraction) as u64);
        Arc::new(Self {
            limit,
            writes_at: at(config.refuse_writes),
            all_at: at(config.refuse_all),
            hysteresis: limit.map_or(0, |l| (l as f64 * HYSTERESIS) as u64),
            read_rss,
            started: Instant::now(),
            sampled_at: AtomicU64::new(u64::MAX),
            rss: AtomicU64::new(0),
            level: AtomicU8::new(Pressure::Normal as u8),
            refused: AtomicU64::new(0),
        })
    }

    /// The limit in force, if any.
    pub fn limit(&self) -> Option<u64> {
        self.limit
    }

    /// Requests refused for memory since start.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// The pressure now and the resident set it was judged on.
    pub fn pressure(&self) -> (Pressure, u64) {
        if self.limit.is_none() {
            return (Pressure::Normal, 0);
        }
        let now = self.started.elapsed().as_micros() as u64;
        let last = self.sampled_at.load(Ordering::Relaxed);
        let rss = if last == u64::MAX || now.saturating_sub(last) >= SAMPLE_EVERY.as_micros() as u64
        {
            // Several callers may re-read at once; each stores a fresh value, no harm.
            let rss = (self.read_rss)().unwrap_or(0);
            self.rss.store(rss, Ordering::Relaxed);
            self.sampled_at.store(now, Ordering::Relaxed);
            rss
        } else {
            self.rss.load(Ordering::Relaxed)
        };
        let before = self.level.load(Ordering::Relaxed);
        // Past a watermark: stay there until memory is a hysteresis below it.
        let above = |at: u64, level: Pressure| {
            rss >= at || (before >= level as u8 && rss >= at.saturating_sub(self.hysteresis))
        };
        let pressure = if above(self.all_at, Pressure::RefuseAll) {
            Pressure::RefuseAll
        } else if above(self.writes_at, Pressure::RefuseWrites) {
            Pressure::RefuseWrites
        } else {
            Pressure::Normal
        };
        self.level.store(pressure as u8, Ordering::Relaxed);
        if before != pressure as u8 {
            // Logged on each change of level only: a server refusing thousands of writes a
            // second must not log each one.
            tracing::warn!(
                ?pressure,
                rss_bytes = rss,
                limit_bytes = self.limit,
                "memory pressure changed"
            );
        }
        (pressure, rss)
    }

    /// Whether a call to `method` may run now; the refusal to send otherwise.
    pub fn check(&self, method: Method) -> Result<(), Status> {
        let (pressure, rss) = self.pressure();
        let refused = match method {
            // Cost nothing, or free memory: always allowed, so operators can see and fix.
            Method::Stats | Method::Get | Method::Delete => false,
            Method::Upsert => pressure >= Pressure::RefuseWrites,
            _ => pressure >= Pressure::RefuseAll,
        };
        if !refused {
            return Ok(());
        }
        self.refused.fetch_add(1, Ordering::Relaxed);
        let mb = |b: u64| b as f64 / 1e6;
        Err(Status::resource_exhausted(format!(
            "server memory is at {:.0} MB of its {:.0} MB limit: {} refused until it falls below {:.0} MB",
            mb(rss),
            mb(self.limit.unwrap_or(0)),
            if method == Method::Upsert {
                "writes are"
            } else {
                "this call is"
            },
            mb(if method == Method::Upsert {
                self.writes_at
            } else {
                self.all_at
            }),
        )))
    }
}

/// Puts a service behind a [`MemoryGuard`].
#[derive(Debug, Clone)]
pub struct MemoryLayer {
    guard: Arc<MemoryGuard>,
}

impl MemoryLayer {
    /// A layer sharing `guard`.
    pub fn new(guard: Arc<MemoryGuard>) -> Self {
        Self { guard }
    }
}

impl<S> Layer<S> for MemoryLayer {
    type Service = MemoryService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        MemoryService {
            inner,
            guard: Arc::clone(&self.guard),
        }
    }
}

/// A service behind the memory guard.
#[derive(Debug, Clone)]
pub struct MemoryService<S> {
    inner: S,
    guard: Arc<MemoryGuard>,
}

impl<S: NamedService> NamedService for MemoryService<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> Service<http::Request<B>> for MemoryService<S>
where
    S: Service<http::Request<B>, Response = http::Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        match self.guard.check(Method::of_request(&request)) {
            Ok(()) => Box::pin(self.inner.call(request)),
            Err(status) => Box::pin(std::future::ready(Ok(status.into_http()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    fn guard(limit: Option<u64>, rss: Arc<AtomicU64>) -> Arc<MemoryGuard> {
        MemoryGuard::with_reader(
            limit,
            &Config::default(),
            Box::new(move || Some(rss.load(Ordering::Relaxed))),
        )
    }

    #[test]
    fn refuses_writes_then_everything_but_reads_of_state() {
        let rss = Arc::new(AtomicU64::new(100));
        let g = guard(Some(1000), Arc::clone(&rss));
        let upsert = "/vecrig.v1.VectorIndex/Upsert";
        let search = "/vecrig.v1.VectorIndex/Search";
        let at = |value: u64| {
            rss.store(value, Ordering::Relaxed);
            std::thread::sleep(SAMPLE_EVERY);
        };
        assert!(g.check(Method::of(upsert)).is_ok() && g.check(Method::of(search)).is_ok());

        at(750);
        let refused = g
            .check(Method::of(upsert))
            .expect_err("writes refused at 75%");
        assert_eq!(refused.code(), Code::ResourceExhausted);
        assert!(
            refused.message().contains("writes are refused"),
            "{refused:?}"
        );
        assert!(g.check(Method::of(search)).is_ok(), "searches go on at 75%");

        at(950);
        assert_eq!(
            g.check(Method::of(search)).map_err(|s| s.code()),
            Err(Code::ResourceExhausted)
        );
        for always in ["Stats", "Get", "Delete"] {
            assert!(
                g.check(Method::of(&format!("/vecrig.v1.VectorIndex/{always}")))
                    .is_ok()
            );
        }
        assert_eq!(g.refused(), 2);

        // Just under a watermark is not enough to resume (no flapping at the edge) ...
        at(880);
        assert!(
            g.check(Method::of(search)).is_err(),
            "still refusing all at 88%"
        );
        at(680);
        assert!(g.check(Method::of(search)).is_ok());
        assert!(
            g.check(Method::of(upsert)).is_err(),
            "still refusing writes at 68%"
        );
        // ... a hysteresis below it is.
        at(600);
        assert!(
            g.check(Method::of(upsert)).is_ok(),
            "writes resume once memory is back"
        );
        at(690);
        assert!(
            g.check(Method::of(upsert)).is_ok(),
            "and are not refused again below the watermark"
        );
    }

    #[test]
    fn no_limit_no_guard() {
        let g = guard(None, Arc::new(AtomicU64::new(u64::MAX)));
        assert_eq!(g.pressure().0, Pressure::Normal);
        assert!(g.check(Method::of("/vecrig.v1.VectorIndex/Upsert")).is_ok());
    }

    #[test]
    fn sizes_and_limits_parse() {
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("2GB"), Ok(2_000_000_000));
        assert_eq!(parse_size("1g"), Ok(1_000_000_000));
        assert_eq!(parse_size(" 4096 "), Ok(4096));
        assert_eq!(parse_size("1.5KiB"), Ok(1536));
        for bad in ["", "MB", "12XB", "-1", "0"] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse_limit("auto"), Ok(Limit::Auto));
        assert_eq!(parse_limit("OFF"), Ok(Limit::None));
        assert_eq!(parse_limit("1MiB"), Ok(Limit::Bytes(1 << 20)));
    }

    #[test]
    fn watermarks_are_validated() {
        let args = |w: f64, a: f64| Args {
            memory_limit: Limit::Auto,
            memory_refuse_writes: w,
            memory_refuse_all: a,
        };
        assert!(Config::try_from(&args(0.8, 0.9)).is_ok());
        assert!(Config::try_from(&args(0.0, 0.9)).is_err());
        assert!(Config::try_from(&args(0.8, 1.5)).is_err());
        assert!(Config::try_from(&args(0.9, 0.8)).is_err());
    }

    #[test]
    fn cgroup_limits_v2_v1_and_none() {
        let root = tempfile::tempdir().expect("tempdir");
        let r = root.path();
        // v2, container view: the limit at the root of its namespace.
        std::fs::write(r.join("memory.max"), "268435456\n").expect("write");
        assert_eq!(cgroup_limit(r, "0::/\n"), Some(268_435_456));
        // v2, host view: the smallest limit on the way up wins; "max" is no limit.
        std::fs::create_dir_all(r.join("a/b")).expect("mkdir");
        std::fs::write(r.join("a/memory.max"), "1000\n").expect("write");
        std::fs::write(r.join("a/b/memory.max"), "max\n").expect("write");
        assert_eq!(cgroup_limit(r, "0::/a/b\n"), Some(1000));
        std::fs::remove_file(r.join("memory.max")).expect("rm");
        std::fs::remove_file(r.join("a/memory.max")).expect("rm");
        assert_eq!(cgroup_limit(r, "0::/a/b\n"), None);
        // v1: the memory controller's file; the "unlimited" value means none.
        std::fs::create_dir_all(r.join("memory")).expect("mkdir");
        std::fs::write(r.join("memory/memory.limit_in_bytes"), "536870912\n").expect("write");
        let v1 = "4:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n0::/\n";
        assert_eq!(cgroup_limit(r, v1), Some(536_870_912));
        std::fs::write(
            r.join("memory/memory.limit_in_bytes"),
            "9223372036854771712\n",
        )
        .expect("write");
        assert_eq!(cgroup_limit(r, v1), None);
        assert_eq!(cgroup_limit(r, "garbage"), None);
    }
}

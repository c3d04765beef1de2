//! Admission's settings: its flags (defaults written here only), the validated [`Config`],
//! and the adaptive limit's [`AdaptiveConfig`].

use std::time::Duration;

/// Admission's flags (flattened into the server's); their defaults are written here only.
#[derive(Debug, Clone, clap::Args)]
#[group(skip)]
pub struct Args {
    /// Requests served at once [default: one per CPU: two CPU-bound searches sharing one CPU
    /// serve no more than one, and each waits twice as long].
    #[arg(long, env = "VECRIG_CONCURRENCY_LIMIT")]
    pub concurrency_limit: Option<usize>,
    /// Requests that may wait for a slot before further ones are shed.
    #[arg(long, env = "VECRIG_QUEUE_DEPTH", default_value_t = 2048)]
    pub queue_depth: usize,
    /// Longest a request may wait for admission before it is shed.
    #[arg(long, env = "VECRIG_MAX_QUEUE_WAIT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub max_queue_wait: Duration,
    /// CoDel-style target (e.g. 5ms): once the queue has not emptied for --queue-interval,
    /// arrivals expected to wait more than twice this are shed at once, and those between one
    /// and two times it, one for every two requests served [default: off].
    #[arg(long, env = "VECRIG_QUEUE_TARGET", value_parser = humantime::parse_duration)]
    pub queue_target: Option<Duration>,
    /// How long the queue must stay non-empty before --queue-target applies.
    #[arg(long, env = "VECRIG_QUEUE_INTERVAL", default_value = "100ms", value_parser = humantime::parse_duration)]
    pub queue_interval: Duration,
    /// Bytes of request bodies that may wait for admission at once; beyond, requests are shed.
    #[arg(long, env = "VECRIG_MAX_QUEUED_BYTES", default_value_t = 256 << 20)]
    pub max_queued_bytes: usize,
    /// Let the concurrency limit follow measured service time (a gradient controller, see
    /// `adaptive`); --concurrency-limit is then where it starts.
    #[arg(long, env = "VECRIG_ADAPTIVE_LIMIT")]
    pub adaptive_limit: bool,
    /// Highest limit --adaptive-limit may reach [default: 8 x CPUs].
    #[arg(long, env = "VECRIG_ADAPTIVE_MAX_LIMIT", requires = "adaptive_limit")]
    pub adaptive_max_limit: Option<usize>,
    /// Brownout: while a queue stands, run searches with a smaller ef (down to
    /// --brownout-floor of it), trading recall for throughput; full ef again as the queue
    /// drains (see `admission::brownout`).
    #[arg(long, env = "VECRIG_BROWNOUT", conflicts_with = "no_admission")]
    pub brownout: bool,
    /// Lowest share of its ef a search runs with under --brownout (never below its k).
    #[arg(long, env = "VECRIG_BROWNOUT_FLOOR", default_value_t = 0.25, requires = "brownout", value_parser = share)]
    pub brownout_floor: f64,
    /// Turn admission control off (no limit, no queue bound, no shedding): only as the
    /// baseline that shows what admission is for.
    #[arg(long, env = "VECRIG_NO_ADMISSION", hide = true)]
    pub no_admission: bool,
    /// One first-come-first-served queue for all clients and connections, as before fair
    /// admission (a full queue refuses whoever arrives): only as the baseline that shows
    /// what fairness is for.
    #[arg(
        long,
        env = "VECRIG_FIFO_ADMISSION",
        conflicts_with = "no_admission",
        hide = true
    )]
    pub fifo_admission: bool,
}

/// Admission control sizes.
#[derive(Debug, Clone, Copy)]
pub struct Config {
    /// Requests served at once.
    pub concurrency_limit: usize,
    /// Requests allowed to wait for a slot; beyond that, requests are shed.
    pub queue_depth: usize,
    /// Longest wait for a slot.
    pub max_queue_wait: Duration,
    /// CoDel-style target wait under a standing queue (`None`: off).
    pub queue_target: Option<Duration>,
    /// How long the queue must stand before `queue_target` applies.
    pub queue_interval: Duration,
    /// Bytes of request bodies allowed to wait at once.
    pub max_queued_bytes: usize,
    /// Whether admission control is on at all.
    pub enabled: bool,
    /// Whether capacity is shared fairly across clients, then connections (`false`: one
    /// FIFO queue, every request the same anonymous caller).
    pub fair: bool,
    /// The adaptive limit's controller (`None`: the limit stays fixed).
    pub adaptive: Option<AdaptiveConfig>,
    /// The brownout controller (`None`: searches always run at full breadth).
    pub brownout: Option<BrownoutConfig>,
}

impl Default for Config {
    /// The command line's defaults.
    fn default() -> Self {
        Self::from(&crate::flags::defaults::<Args>())
    }
}

impl From<&Args> for Config {
    fn from(args: &Args) -> Self {
        let cpus = crate::process::available_cpus();
        Self {
            concurrency_limit: args.concurrency_limit.unwrap_or(cpus).max(1),
            queue_depth: args.queue_depth,
            max_queue_wait: args.max_queue_wait,
            queue_target: args.queue_target,
            queue_interval: args.queue_interval,
            max_queued_bytes: args.max_queued_bytes.max(1 << 20),
            enabled: !args.no_admission,
            fair: !args.fifo_admission,
            adaptive: args
                .adaptive_limit
                .then(|| AdaptiveConfig::with_max(args.adaptive_max_limit.unwrap_or(8 * cpus))),
            brownout: args
                .brownout
                .then(|| BrownoutConfig::with_floor(args.brownout_floor)),
        }
    }
}

/// A share in (0, 1], for --brownout-floor.
fn share(text: &str) -> Result<f64, String> {
    let value: f64 = text.parse().map_err(|e| format!("{e}"))?;
    if value > 0.0 && value <= 1.0 {
        Ok(value)
    } else {
        Err(format!("must be more than 0 and at most 1, got {value}"))
    }
}

/// The controller's settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdaptiveConfig {
    /// Lowest limit, in slots; also the limit held while `min_rtt` is measured.
    pub min_limit: usize,
    /// Highest limit, in slots.
    pub max_limit: usize,
    /// How often the limit is recomputed.
    pub window: Duration,
    /// Fraction above the no-load service time that is tolerated before the limit shrinks.
    pub buffer: f64,
    /// How often the no-load service time is measured again.
    pub min_rtt_interval: Duration,
    /// Requests whose mean makes a `min_rtt` measurement.
    pub min_rtt_samples: u64,
    /// Fewest requests in a window for it to move the limit.
    pub min_window_samples: u64,
    /// Weight of each new computation in the limit (an exponential moving average).
    pub smoothing: f64,
}

impl AdaptiveConfig {
    /// Envoy's defaults where they carry over, between 1 slot and `max_limit`.
    pub fn with_max(max_limit: usize) -> Self {
        Self {
            min_limit: 1,
            max_limit: max_limit.max(1),
            window: Duration::from_millis(100),
            // Envoy's default is 25%; on a machine whose cores the server shares (with its
            // clients, in this project's benches) service time wanders by more than that
            // without any overload, and the limit would chase the noise downwards.
            buffer: 0.5,
            min_rtt_interval: Duration::from_secs(30),
            min_rtt_samples: 50,
            min_window_samples: 5,
            // Netflix's Gradient2 default: one noisy window moves the limit a fifth of the way.
            smoothing: 0.2,
        }
    }
}

/// The brownout controller's settings (see `brownout`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BrownoutConfig {
    /// Lowest breadth (share of `ef`), in `(0, 1]`.
    pub floor: f64,
    /// How often the queue is looked at.
    pub tick: Duration,
    /// Breadth is multiplied by this under a standing queue.
    pub decrease: f64,
    /// Breadth grows by this while the queue is empty.
    pub increase: f64,
}

impl BrownoutConfig {
    /// The defaults, down to `floor`.
    pub fn with_floor(floor: f64) -> Self {
        Self {
            floor: floor.clamp(0.01, 1.0),
            tick: Duration::from_millis(50),
            decrease: 0.8,
            increase: 0.05,
        }
    }
}

//! The pacing flags and the settings they are validated into.

use std::time::Duration;

/// The pacing flags (flattened into the server's).
#[derive(Debug, Clone, clap::Args)]
#[group(skip)]
pub struct Args {
    /// Cheap answers (refusals, health, Stats, reflection, errors) one connection may get per
    /// second before it draws on the server's shared excess budget.
    #[arg(long, env = "VECRIG_PACE_CONNECTION_RATE", default_value_t = 50.0)]
    pub pace_connection_rate: f64,
    /// Cheap answers per second and per CPU, beyond the connections' allowances, that the
    /// server gives before the connections asking for more are read slowly (0: no pacing).
    /// The default spends a few percent of each CPU on answers nothing else pays for
    /// (docs/overload.md).
    #[arg(long, env = "VECRIG_PACE_EXCESS_RATE", default_value_t = 500.0)]
    pub pace_excess_rate: f64,
    /// Further cheap answers each served request adds to the shared budget, so that offered
    /// load up to about 1 + this many times capacity is refused at full speed (a refusal
    /// costs a few percent of a search).
    #[arg(long, env = "VECRIG_PACE_SHED_PER_SERVED", default_value_t = 3.0)]
    pub pace_shed_per_served: f64,
    /// Share of the CPUs that excess cheap answers may cost the request path, whatever the
    /// rates above allow (each priced at the measured request-path CPU per cheap answer); beyond
    /// it, connections asking for more are read slowly (0: no ceiling). It keeps a closed-loop
    /// flood from taking the CPU that admitted work needs (docs/overload.md).
    #[arg(long, env = "VECRIG_PACE_CPU_SHARE", default_value_t = 0.15)]
    pub pace_cpu_share: f64,
    /// Longest a paced connection goes unread at a time (below the keepalive timeout, so that
    /// a paced peer's ping answers are read in time).
    #[arg(long, env = "VECRIG_PACE_MAX_PAUSE", default_value = "1s", value_parser = humantime::parse_duration)]
    pub pace_max_pause: Duration,
}

/// Pacing settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Config {
    /// Cheap answers a connection may get per second without being paced (also its burst).
    pub connection_rate: f64,
    /// Cheap answers per second (the whole server's) beyond the allowances before connections
    /// are paused; 0 turns pacing off.
    pub excess_rate: f64,
    /// Excess answers each served request adds to the shared budget.
    pub shed_per_served: f64,
    /// CPU seconds a second (the whole server's) that excess answers may cost the request
    /// path; 0: no ceiling.
    pub excess_cpu: f64,
    /// Longest pause.
    pub max_pause: Duration,
}

impl Config {
    /// Whether pacing is on.
    pub fn enabled(&self) -> bool {
        self.excess_rate > 0.0
    }
}

impl TryFrom<&Args> for Config {
    type Error = String;

    fn try_from(args: &Args) -> Result<Self, String> {
        let finite = |name: &str, v: f64| {
            if v.is_finite() && v >= 0.0 {
                Ok(v)
            } else {
                Err(format!("--{name} must be a non-negative number, got {v}"))
            }
        };
        Ok(Self {
            connection_rate: finite("pace-connection-rate", args.pace_connection_rate)?,
            excess_rate: finite("pace-excess-rate", args.pace_excess_rate)?
                * crate::process::available_cpus() as f64,
            shed_per_served: finite("pace-shed-per-served", args.pace_shed_per_served)?,
            excess_cpu: match finite("pace-cpu-share", args.pace_cpu_share)? {
                share if share <= 1.0 => share * crate::process::available_cpus() as f64,
                share => return Err(format!("--pace-cpu-share must be at most 1, got {share}")),
            },
            max_pause: args.pace_max_pause,
        })
    }
}

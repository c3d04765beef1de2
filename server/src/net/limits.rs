//! The connection and HTTP/2 bounds: their flags (defaults written here only) and the
//! validated [`ConnectionLimits`] that the accept loop, the sockets and the HTTP/2 settings
//! read.

use std::time::Duration;

/// The connection and HTTP/2 flags (flattened into the server's); their defaults are
/// written here only.
#[derive(Debug, Clone, clap::Args)]
#[group(skip)]
pub struct Args {
    /// HTTP/2 streams one connection may have open at once.
    #[arg(long, env = "VECRIG_MAX_CONCURRENT_STREAMS", default_value_t = 1024)]
    pub max_concurrent_streams: u32,
    // Far above what a load rig's clients open (connection pools of tens), far below a
    // typical RLIMIT_NOFILE of a server process.
    /// Connections open at once; at the cap a new one evicts the oldest that has sent nothing
    /// yet, or is closed at once.
    #[arg(long, env = "VECRIG_MAX_CONNECTIONS", default_value_t = 4096)]
    pub max_connections: usize,
    // A real client sends its preface in the first round trip.
    /// Time a new connection has to send its first bytes (HTTP/2 preface or TLS hello).
    #[arg(long, env = "VECRIG_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub handshake_timeout: Duration,
    /// A connection that sends nothing for this long is closed (keep it above keepalive
    /// interval + timeout, so live clients, which answer pings, never look idle).
    #[arg(long, env = "VECRIG_IDLE_TIMEOUT", default_value = "5m", value_parser = humantime::parse_duration)]
    pub idle_timeout: Duration,
    // A client that keeps a connection for its next call within minutes keeps it; a pool of
    // connections opened and then left alone frees its places under the cap.
    /// A connection with no request open for this long is closed, however it answers pings
    /// (gRPC's MAX_CONNECTION_IDLE; 0: never).
    #[arg(long, env = "VECRIG_MAX_CONNECTION_IDLE", default_value = "5m", value_parser = humantime::parse_duration)]
    pub max_connection_idle: Duration,
    // A 32 MiB upsert over a slow link still fits; a stalled body does not hold on.
    /// Time a VectorIndex request's body has to arrive whole once its headers have.
    #[arg(long, env = "VECRIG_REQUEST_READ_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub request_read_timeout: Duration,
    // Reading bodies before admission takes them out of HTTP/2 flow control, which bounded
    // them before: this bound replaces it. Eight largest messages; thousands of ordinary
    // (kilobyte) requests.
    /// Bytes of request bodies held at once, read but not yet answered.
    #[arg(long, env = "VECRIG_REQUEST_BUFFER_BYTES", default_value_t = 256 * 1024 * 1024)]
    pub request_buffer_bytes: usize,
    // hyper's default, made explicit: gRPC metadata (auth tokens included) is far smaller.
    /// Largest HTTP/2 header list (metadata) of a request, in bytes.
    #[arg(long, env = "VECRIG_MAX_HEADER_BYTES", default_value_t = 16 * 1024)]
    pub max_header_bytes: u32,
    // h2's default (20), made explicit: tonic leaves it to h2.
    /// Streams a peer may reset before the server accepts them, per connection, before it is
    /// disconnected (the rapid-reset guard).
    #[arg(long, env = "VECRIG_MAX_PENDING_RESET_STREAMS", default_value_t = 20)]
    pub max_pending_reset_streams: usize,
    // hyper's defaults (1 MiB each): enough for full speed on a LAN, and bounds the memory
    // one connection can fill with data the server has not read yet.
    /// HTTP/2 stream flow-control window, in bytes.
    #[arg(long, env = "VECRIG_STREAM_WINDOW_BYTES", default_value_t = 1024 * 1024)]
    pub stream_window_bytes: u32,
    /// HTTP/2 connection flow-control window, in bytes.
    #[arg(long, env = "VECRIG_CONNECTION_WINDOW_BYTES", default_value_t = 1024 * 1024)]
    pub connection_window_bytes: u32,
    // The HTTP/2 minimum and h2's default: larger frames buy nothing for gRPC.
    /// Largest HTTP/2 frame accepted, in bytes (16 KiB ..= 16 MiB - 1).
    #[arg(long, env = "VECRIG_MAX_FRAME_BYTES", default_value_t = 16 * 1024)]
    pub max_frame_bytes: u32,
    // Four lanes keep a polite client apart from up to three flooding addresses; an idle lane
    // costs parked threads only.
    /// Request-path runtimes that connections are spread over, all of one client address's
    /// connections on the same one (1: one runtime for everybody).
    #[arg(long, env = "VECRIG_REQUEST_LANES", default_value_t = 4, hide = true)]
    pub request_lanes: usize,
    /// Interval of HTTP/2 keepalive pings.
    #[arg(long, env = "VECRIG_KEEPALIVE_INTERVAL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub keepalive_interval: Duration,
    /// Time a peer has to answer a keepalive ping before it is disconnected.
    #[arg(long, env = "VECRIG_KEEPALIVE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub keepalive_timeout: Duration,
}

/// Streams the server may reset for protocol errors, per connection, before closing it:
/// hyper's default, explicit because tonic otherwise passes "no limit" (not a flag).
const MAX_LOCAL_ERROR_RESETS: usize = 1024;

/// Connection-level and HTTP/2 bounds (the `--max-connections` ... flags).
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Connections open at once. At the cap a new connection evicts the oldest one that has
    /// not sent a byte yet, or, if there is none, is closed as soon as it is accepted.
    pub max_connections: usize,
    /// Time a new connection has to send its first bytes (the HTTP/2 preface, or a TLS hello).
    pub handshake_timeout: Duration,
    /// A connection from which no byte arrives for this long is closed. Longer than
    /// keepalive interval + timeout, so a live client, which answers pings, never looks idle.
    pub idle_timeout: Duration,
    /// Time a VectorIndex request's body has to arrive whole once its headers have.
    pub request_read_timeout: Duration,
    /// Bytes of request bodies the server holds at once, read but not yet answered; a body
    /// that would exceed it waits (within its read timeout). At least one largest message.
    pub request_buffer_bytes: usize,
    /// Largest header list (HTTP/2 SETTINGS_MAX_HEADER_LIST_SIZE), in bytes.
    pub max_header_bytes: u32,
    /// Streams reset by the peer before the server accepted them, per connection, before the
    /// connection is closed with ENHANCE_YOUR_CALM (hyper's rapid-reset guard).
    pub max_pending_reset_streams: usize,
    /// Streams the server had to reset for protocol errors, per connection, before the
    /// connection is closed (RUSTSEC-2024-0003).
    pub max_local_error_resets: usize,
    /// HTTP/2 stream flow-control window, in bytes: what one stream may push unread.
    pub stream_window_bytes: u32,
    /// HTTP/2 connection flow-control window, in bytes: what one connection may push unread.
    pub connection_window_bytes: u32,
    /// Largest HTTP/2 frame the server accepts, in bytes.
    pub max_frame_bytes: u32,
    /// Interval of HTTP/2 pings; a peer that does not answer one within the keepalive timeout
    /// is disconnected.
    pub keepalive_interval: Duration,
    /// Time a peer has to answer a ping.
    pub keepalive_timeout: Duration,
    /// A connection with no request open for this long is closed (`None`: never). Closing
    /// it is safe: nothing is in flight on it, and gRPC clients reconnect on their next call.
    pub max_connection_idle: Option<Duration>,
    /// Request-path runtimes connections are spread over, by client address (at least one).
    pub request_lanes: usize,
}

impl Default for ConnectionLimits {
    /// The command line's defaults.
    fn default() -> Self {
        Self::try_from(&crate::flags::defaults::<Args>()).expect("the default limits are valid")
    }
}

impl TryFrom<&Args> for ConnectionLimits {
    type Error = String;

    fn try_from(args: &Args) -> Result<Self, String> {
        // RFC 9113 6.5.2: frame sizes outside this range are protocol errors.
        if !(16_384..=16_777_215).contains(&args.max_frame_bytes) {
            return Err(format!(
                "--max-frame-bytes must be in 16384..=16777215, got {}",
                args.max_frame_bytes
            ));
        }
        if args.idle_timeout <= args.keepalive_interval + args.keepalive_timeout {
            return Err(format!(
                "--idle-timeout ({}) must exceed --keepalive-interval + --keepalive-timeout, or \
                 live clients would be cut off between pings",
                humantime::format_duration(args.idle_timeout)
            ));
        }
        Ok(Self {
            max_connections: args.max_connections.max(1),
            handshake_timeout: args.handshake_timeout,
            idle_timeout: args.idle_timeout,
            request_read_timeout: args.request_read_timeout,
            request_buffer_bytes: args.request_buffer_bytes,
            max_header_bytes: args.max_header_bytes.max(1024),
            max_pending_reset_streams: args.max_pending_reset_streams,
            max_local_error_resets: MAX_LOCAL_ERROR_RESETS,
            // Below the 65,535-byte HTTP/2 default window the server would slow every upload.
            stream_window_bytes: args.stream_window_bytes.max(65_535),
            connection_window_bytes: args.connection_window_bytes.max(65_535),
            max_frame_bytes: args.max_frame_bytes,
            keepalive_interval: args.keepalive_interval,
            keepalive_timeout: args.keepalive_timeout,
            // 0 turns it off.
            max_connection_idle: Some(args.max_connection_idle).filter(|d| !d.is_zero()),
            request_lanes: args.request_lanes.max(1),
        })
    }
}

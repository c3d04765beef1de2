//! HTTP/2 settings on tonic's server builder: streams per connection, header list size,
//! reset-stream guards, flow-control windows, frame size, keepalive pings.

use tonic::transport::Server;

use super::limits::ConnectionLimits;

/// Applies the HTTP/2 limits to tonic's server builder.
pub fn apply<L>(
    builder: Server<L>,
    limits: &ConnectionLimits,
    max_concurrent_streams: u32,
) -> Server<L> {
    builder
        // Bounds the streams one connection can open; admission bounds the work they cause.
        .max_concurrent_streams(Some(max_concurrent_streams))
        // Oversized header blocks are refused (431 + REFUSED_STREAM) instead of buffered.
        .http2_max_header_list_size(limits.max_header_bytes)
        // Rapid reset (CVE-2023-44487): streams opened and reset before they are accepted.
        .http2_max_pending_accept_reset_streams(Some(limits.max_pending_reset_streams))
        // A peer that keeps provoking stream errors is disconnected.
        .http2_max_local_error_reset_streams(Some(limits.max_local_error_resets))
        .initial_stream_window_size(limits.stream_window_bytes)
        .initial_connection_window_size(limits.connection_window_bytes)
        .max_frame_size(limits.max_frame_bytes)
        // Pings find dead or frozen peers whose connections would otherwise hold streams forever.
        .http2_keepalive_interval(Some(limits.keepalive_interval))
        .http2_keepalive_timeout(Some(limits.keepalive_timeout))
}

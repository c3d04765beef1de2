//! A connection's state, shared by the session that drives it ([`super`]) and the reading
//! of what the server sends ([`super::receive`]): kept apart from both, so that neither
//! imports the other's internals back.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::task::Waker;

use bytes::{Bytes, BytesMut};
use tokio::sync::Notify;

use super::super::grpc::{Answer, Messages};

/// Flow-control windows we offer the server: large enough that a search answer never waits
/// for a window update (hyper's defaults: 2 MiB a stream, 5 MiB a connection). Received bytes
/// are given back once half a window's worth has gathered.
pub(super) const STREAM_WINDOW: u32 = 2 * 1024 * 1024;
pub(super) const CONNECTION_WINDOW: u32 = 5 * 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// Takes new streams.
    Open,
    /// GOAWAY received, out of stream ids, or the owner gone: the open streams finish, no
    /// new one starts.
    Draining,
    /// Gone: every stream has been answered.
    Closed,
}

pub(super) struct Inner {
    /// Frames waiting to be written, in order.
    pub(super) out: RefCell<BytesMut>,
    /// Wakes the writer when `out` fills from empty or the connection ends.
    pub(super) writer: Notify,
    pub(super) streams: RefCell<HashMap<u32, Stream, BuildHasherDefault<StreamIdHasher>>>,
    /// Streams with request data waiting for a window, in the order they blocked.
    pub(super) blocked: RefCell<VecDeque<u32>>,
    pub(super) next_id: Cell<u32>,
    pub(super) phase: Cell<Phase>,
    /// Why the connection closed (or is draining), for the answers it gives.
    pub(super) why: RefCell<String>,
    pub(super) owner_gone: Cell<bool>,
    /// The server's SETTINGS.
    pub(super) max_streams: Cell<usize>,
    pub(super) max_frame: Cell<usize>,
    pub(super) initial_window: Cell<i64>,
    /// Our send window on the connection.
    pub(super) window: Cell<i64>,
    /// Bytes received on the connection not yet given back with a WINDOW_UPDATE.
    pub(super) unacked: Cell<u32>,
    /// The highest stream id opened (0: none); frames for streams above it are for streams
    /// never opened.
    pub(super) last_opened: Cell<u32>,
    /// Bytes of answers to the server's PINGs and SETTINGS queued since the writer last took
    /// the output.
    pub(super) replies: Cell<usize>,
    pub(super) decoder: RefCell<loona_hpack::Decoder<'static>>,
    /// A header block waiting for its CONTINUATION frames: stream, HEADERS flags, fragments.
    pub(super) partial: RefCell<Option<(u32, u8, BytesMut)>>,
    /// Set when the server's first SETTINGS arrive (or the connection ends).
    pub(super) settings_seen: Cell<bool>,
    pub(super) settled: Notify,
    pub(super) pong: Notify,
    /// Called when the connection stops taking streams, so waiters look again.
    pub(super) on_draining: Box<dyn Fn()>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner")
            .field("phase", &self.phase.get())
            .field("streams", &self.streams.borrow().len())
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
pub(super) struct Stream {
    /// Our send window on the stream.
    pub(super) window: i64,
    /// Request data not yet sent for want of a window.
    pub(super) pending: Option<Bytes>,
    /// We have not sent END_STREAM yet.
    pub(super) local_open: bool,
    /// The server has not sent END_STREAM (or a reset) yet.
    pub(super) remote_open: bool,
    /// The response's `:status`, once its headers arrived.
    pub(super) status: Option<u16>,
    /// The body, read as gRPC messages.
    pub(super) body: Messages,
    /// The body, when the caller keeps it.
    pub(super) keep: Option<BytesMut>,
    /// Bytes received on the stream not yet given back.
    pub(super) unacked: u32,
    pub(super) outcome: Option<Answer>,
    pub(super) waker: Option<Waker>,
}

/// Hashes a stream id with one multiplication (Fibonacci hashing): ids are ours, unique and
/// not chosen by anyone hostile, and SipHash, the default, was 1.8% of the loadgen's
/// instructions per request.
#[derive(Default)]
pub(super) struct StreamIdHasher(u64);

impl Hasher for StreamIdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_u32(&mut self, id: u32) {
        self.0 = u64::from(id).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

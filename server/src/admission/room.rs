//! Who admission tells when its queue has room again.

use std::sync::Arc;

/// Called, as admitted requests finish, while the queue has room for more work: the request
/// path uses it to resume reading connections it paused (`crate::net::pacing`).
pub type RoomSignal = Arc<dyn Fn() + Send + Sync>;

/// Holds the [`RoomSignal`], once set (a closure has no `Debug`).
#[derive(Default)]
pub(super) struct RoomSignalCell(pub(super) std::sync::OnceLock<RoomSignal>);

impl std::fmt::Debug for RoomSignalCell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.get().is_some() {
            "RoomSignalCell(set)"
        } else {
            "RoomSignalCell(unset)"
        })
    }
}

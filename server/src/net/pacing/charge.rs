//! What a charged answer was: a refusal of work, or another cheap answer.

/// What a charged answer was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Charge {
    /// Work refused by admission for lack of room (RESOURCE_EXHAUSTED): the connection has
    /// work waiting that room would let in, so [`Pacer::room`] may resume it early.
    Shed,
    /// Any other cheap answer: health, Stats, reflection, auth and validation errors. Room in
    /// the queue does not help these, so they wait out their pause.
    Cheap,
}

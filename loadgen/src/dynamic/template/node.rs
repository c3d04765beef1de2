//! What a checked template is made of: the points and numbers one request is rendered from
//! ([`Fill`]), the tree of what each field is set to ([`Node`]), and the vectors appended as
//! bytes after the rest of a message ([`Appended`]). Checking ([`super`]), rendering
//! ([`super::render`]) and encoding ([`super::encode`]) all read these; this module imports
//! none of them.

use prost_reflect::{FieldDescriptor, Kind, MapKey, MessageDescriptor, Value};

use super::generator::{Encoding, FieldGenerator, Piece};

/// One point of a request: the query of a search, or a point written.
#[derive(Debug, Clone, Copy)]
pub struct Point<'a> {
    /// Its id.
    pub id: u64,
    /// Its vector.
    pub vector: &'a [f32],
    /// Its text.
    pub text: &'a str,
}

/// What one request is rendered from.
#[derive(Debug, Clone, Copy)]
pub struct Fill<'a> {
    /// The points (one for a search).
    pub points: &'a [Point<'a>],
    /// The sending user.
    pub user: u64,
    /// The user's request number.
    pub iteration: u64,
    /// Neighbours asked for.
    pub k: u32,
    /// The acknowledgement stamp of a write that has one, else empty.
    pub stamp: &'a str,
    /// Bytes of filler per point.
    pub pad: usize,
}

/// The fields a template sets in one message, each with what it is set to.
pub(super) type Fields = Vec<(FieldDescriptor, Node)>;

#[derive(Debug, Clone)]
pub(super) enum Node {
    Message(MessageDescriptor, Fields),
    /// A message whose encoding is the value of a `bytes` field.
    Encoded(MessageDescriptor, Fields),
    List(Vec<Node>),
    /// One element per point of the request.
    PerPoint(Box<Node>),
    Map(Vec<(MapKey, Node)>),
    Literal(Value),
    /// A generator alone; the kind is the field's (its elements' for a repeated field).
    Generate(FieldGenerator, Kind),
    /// A `string` or `bytes` field's text with generators inside it.
    Interpolate(Vec<Piece>, Kind),
}

/// A vector or text appended after the rest of the message: the field numbers of its
/// enclosing singular message fields, outermost first, its own field number, and what it holds.
#[derive(Debug, Clone)]
pub(super) struct Appended {
    pub(super) path: Vec<u32>,
    pub(super) number: u32,
    pub(super) holds: Holds,
    /// Whether the field is written when empty (it has presence: a oneof's member), as
    /// protobuf writes it.
    pub(super) presence: bool,
}

/// What an appended field holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Holds {
    /// The first point's vector (`false`) or every point's, one after another.
    Vectors(Encoding, bool),
    Text,
}

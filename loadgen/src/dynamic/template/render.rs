//! A checked template rendered for one request: as a [`DynamicMessage`], and the fast path's
//! vectors appended as bytes.

use prost::Message;
use prost_reflect::{DynamicMessage, Kind, MessageDescriptor, Value};

use super::generator::{FieldGenerator, Piece};
use super::node::{Appended, Fields, Fill, Holds, Node, Point};

pub(super) fn message(
    descriptor: &MessageDescriptor,
    fields: &Fields,
    fill: &Fill<'_>,
    point: usize,
) -> DynamicMessage {
    let mut message = DynamicMessage::new(descriptor.clone());
    for (field, child) in fields {
        message.set_field(field, render(child, fill, point));
    }
    message
}

pub(super) const NO_POINT: Point<'static> = Point {
    id: 0,
    vector: &[],
    text: "",
};

pub(super) fn render(node: &Node, fill: &Fill<'_>, point: usize) -> Value {
    match node {
        Node::Message(descriptor, fields) => {
            Value::Message(message(descriptor, fields, fill, point))
        }
        Node::Encoded(descriptor, fields) => Value::Bytes(
            message(descriptor, fields, fill, point)
                .encode_to_vec()
                .into(),
        ),
        Node::List(items) => Value::List(items.iter().map(|n| render(n, fill, point)).collect()),
        Node::PerPoint(item) => Value::List(
            (0..fill.points.len())
                .map(|i| render(item, fill, i))
                .collect(),
        ),
        Node::Map(entries) => Value::Map(
            entries
                .iter()
                .filter(|(_, n)| !absent(n, fill))
                .map(|(k, n)| (k.clone(), render(n, fill, point)))
                .collect(),
        ),
        Node::Literal(value) => value.clone(),
        Node::Generate(generator, kind) => generate(*generator, kind, fill, point),
        Node::Interpolate(pieces, kind) => {
            let at = fill.points.get(point).copied().unwrap_or(NO_POINT);
            let text = interpolate(pieces, fill, &at);
            match kind {
                Kind::Bytes => Value::Bytes(text.into_bytes().into()),
                _ => Value::String(text),
            }
        }
    }
}

/// The text of `pieces` for point `at`: the numbers in decimal, the stamp as it is.
pub(super) fn interpolate(pieces: &[Piece], fill: &Fill<'_>, at: &Point<'_>) -> String {
    let mut text = String::new();
    for piece in pieces {
        match piece {
            Piece::Text(t) => text.push_str(t),
            Piece::Generate(FieldGenerator::Stamp) => text.push_str(fill.stamp),
            Piece::Generate(g) => text.push_str(&number_of(*g, fill, at).to_string()),
        }
    }
    text
}

/// The number a number generator gives (0 for any other).
pub(super) fn number_of(generator: FieldGenerator, fill: &Fill<'_>, at: &Point<'_>) -> u64 {
    match generator {
        FieldGenerator::Id => at.id,
        FieldGenerator::User => fill.user,
        FieldGenerator::Iteration => fill.iteration,
        FieldGenerator::K => fill.k.into(),
        FieldGenerator::BatchSize => fill.points.len() as u64,
        _ => 0,
    }
}

fn generate(generator: FieldGenerator, kind: &Kind, fill: &Fill<'_>, point: usize) -> Value {
    let at = fill.points.get(point).copied().unwrap_or(NO_POINT);
    if let Some((encoding, all)) = generator.encoding_in(kind) {
        let vectors: &[Point<'_>] = if all {
            fill.points
        } else {
            std::slice::from_ref(&at)
        };
        return match kind {
            Kind::Bytes => {
                let length = vectors.iter().map(|p| p.vector.len()).sum::<usize>();
                let mut bytes = Vec::with_capacity(length * encoding.width());
                vectors
                    .iter()
                    .for_each(|p| encoding.write(p.vector, &mut bytes));
                Value::Bytes(bytes.into())
            }
            Kind::Double => Value::List(
                vectors
                    .iter()
                    .flat_map(|p| p.vector.iter().map(|&x| Value::F64(x.into())))
                    .collect(),
            ),
            _ => Value::List(
                vectors
                    .iter()
                    .flat_map(|p| p.vector.iter().map(|&x| Value::F32(x)))
                    .collect(),
            ),
        };
    }
    match generator {
        FieldGenerator::Text => Value::String(at.text.to_string()),
        FieldGenerator::Payload => {
            let payload = format!("{{\"id\":{},\"user\":{}}}", at.id, fill.user);
            match kind {
                Kind::Bytes => Value::Bytes(payload.into_bytes().into()),
                _ => Value::String(payload),
            }
        }
        FieldGenerator::Ids => {
            Value::List(fill.points.iter().map(|p| number(p.id, kind)).collect())
        }
        FieldGenerator::Stamp => Value::String(fill.stamp.to_string()),
        FieldGenerator::Uuid => Value::String(super::generator::uuid(at.id)),
        FieldGenerator::Pad => {
            let pad = "x".repeat(fill.pad);
            match kind {
                Kind::Bytes => Value::Bytes(pad.into_bytes().into()),
                _ => Value::String(pad),
            }
        }
        number_generator => number(number_of(number_generator, fill, &at), kind),
    }
}

/// `n` as a value of the integer, float, double or string `kind` (checked at compile time to
/// be one).
fn number(n: u64, kind: &Kind) -> Value {
    match kind {
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => Value::I32(n as i32),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => Value::I64(n as i64),
        Kind::Uint32 | Kind::Fixed32 => Value::U32(n as u32),
        Kind::Float => Value::F32(n as f32),
        Kind::Double => Value::F64(n as f64),
        Kind::String => Value::String(n.to_string()),
        _ => Value::U64(n),
    }
}

/// Whether a map entry rendered from `node` is left out of this request: a stamp or a pad
/// that it does not have.
fn absent(node: &Node, fill: &Fill<'_>) -> bool {
    match node {
        Node::Generate(FieldGenerator::Stamp, _) => fill.stamp.is_empty(),
        Node::Generate(FieldGenerator::Pad, _) => fill.pad == 0,
        _ => false,
    }
}

/// The points whose vectors an appended field holds, and their payload's length in bytes.
fn payload<'f>(appended: &Appended, fill: &'f Fill<'f>) -> (&'f [Point<'f>], usize) {
    let first = fill.points.get(..1).unwrap_or_default();
    match appended.holds {
        Holds::Vectors(encoding, all) => {
            let points = if all { fill.points } else { first };
            let values: usize = points.iter().map(|p| p.vector.len()).sum();
            (points, values * encoding.width())
        }
        Holds::Text => (first, first.first().map_or(0, |p| p.text.len())),
    }
}

/// An upper bound of the bytes [`append`] writes (for the request's capacity).
pub(super) fn appended_len(appended: &Appended, fill: &Fill<'_>) -> usize {
    payload(appended, fill).1 + 16 * (appended.path.len() + 1)
}

/// Appends the vectors (or text) `appended` holds as the length-delimited field
/// `appended.number` (packed floats and bytes are written alike), inside its enclosing message
/// fields: their lengths are counted first, innermost out, so every byte is written once.
pub(super) fn append(out: &mut Vec<u8>, appended: &Appended, fill: &Fill<'_>) {
    use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};
    let (points, payload) = payload(appended, fill);
    if payload == 0 && !appended.presence {
        // An empty value is a default one: protobuf leaves it out (its enclosing messages are
        // written with the rest).
        return;
    }
    // The length of what each enclosing field holds, innermost first.
    let mut lengths = Vec::with_capacity(appended.path.len());
    let mut length = key_len(appended.number) + encoded_len_varint(payload as u64) + payload;
    for &number in appended.path.iter().rev() {
        lengths.push(length);
        length += key_len(number) + encoded_len_varint(length as u64);
    }
    out.reserve(length);
    for (&number, &holds) in appended.path.iter().zip(lengths.iter().rev()) {
        encode_key(number, WireType::LengthDelimited, out);
        encode_varint(holds as u64, out);
    }
    encode_key(appended.number, WireType::LengthDelimited, out);
    encode_varint(payload as u64, out);
    match appended.holds {
        Holds::Vectors(encoding, _) => points.iter().for_each(|p| encoding.write(p.vector, out)),
        Holds::Text => points
            .iter()
            .for_each(|p| out.extend_from_slice(p.text.as_bytes())),
    }
}

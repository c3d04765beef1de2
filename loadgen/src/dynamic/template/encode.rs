//! The hot path's encoding of a template's varying fields: written straight to protobuf's wire
//! format, without building a [`DynamicMessage`] per request. A field with no generator is
//! encoded once, when the template is checked; messages (and messages encoded into `bytes`:
//! the same wire bytes) are written field by field, vectors as their packed bytes, numbers and
//! texts by their kind. What has no writer of its own here (maps, and repeated numbers other
//! than `{{ids}}`) is rendered and encoded by prost-reflect, that field alone.
//!
//! Protobuf leaves out a field without presence that holds its default (0, an empty string or
//! list); so do these writers, so that the target decodes the very message
//! [`super::Template::render`] builds.

use std::borrow::Cow;

use prost::Message;
use prost_reflect::{DynamicMessage, FieldDescriptor, Kind};

use super::generator::{Encoding, FieldGenerator};
use super::node::{Fields, Fill, Node, Point};
use super::render;

/// How one field (or one element of a repeated field) is written.
#[derive(Debug, Clone)]
pub(super) enum Part {
    /// Its encoding, the same in every request.
    Fixed(Vec<u8>),
    /// A message, or a message encoded into `bytes`: written field by field. An empty one is
    /// left out when `keep_empty` is false (a `bytes` field without presence).
    Message {
        number: u32,
        keep_empty: bool,
        parts: Vec<Part>,
    },
    /// The parts once per point of the request.
    PerPoint(Vec<Part>),
    /// The point's vector, or every point's, packed (a repeated float or double field) or as
    /// bytes.
    Vector {
        number: u32,
        encoding: Encoding,
        all: bool,
        keep_empty: bool,
    },
    /// A number generator, or `{{ids}}`, in a field of `kind`.
    Numbers {
        number: u32,
        kind: Kind,
        generator: FieldGenerator,
        packed: bool,
        keep_default: bool,
    },
    /// A `string` or `bytes` field's text.
    Text {
        number: u32,
        node: Node,
        keep_empty: bool,
    },
    /// Rendered and encoded by prost-reflect.
    Rendered(FieldDescriptor, Node),
}

/// The writers of `fields`, in the order of their numbers as protobuf writes them (a message
/// encoded into `bytes` is then the very bytes it encodes to).
pub(super) fn plan(fields: &Fields) -> Vec<Part> {
    let mut fields: Vec<_> = fields.iter().collect();
    fields.sort_by_key(|(field, _)| field.number());
    fields
        .into_iter()
        .flat_map(|(field, node)| plan_field(field, node))
        .collect()
}

/// Whether a repeated field of `kind` may be packed (its elements then are not occurrences of
/// their own).
fn packable(kind: &Kind) -> bool {
    !matches!(kind, Kind::Message(_) | Kind::String | Kind::Bytes)
}

fn plan_field(field: &FieldDescriptor, node: &Node) -> Vec<Part> {
    let number = field.number();
    let presence = field.supports_presence();
    if !generates(node) {
        return vec![Part::Fixed(encode_alone(field, node))];
    }
    let part = match node {
        Node::Message(_, inner) => Part::Message {
            number,
            keep_empty: true,
            parts: plan(inner),
        },
        Node::Encoded(_, inner) => Part::Message {
            number,
            keep_empty: presence,
            parts: plan(inner),
        },
        Node::List(items) if !field.is_map() && !packable(&field.kind()) => {
            return items.iter().map(|item| element(field, item)).collect();
        }
        Node::PerPoint(item) if !packable(&field.kind()) => {
            Part::PerPoint(vec![element(field, item)])
        }
        Node::Generate(generator, kind) => match generator.encoding_in(kind) {
            Some((encoding, all)) => Part::Vector {
                number,
                encoding,
                all,
                keep_empty: presence,
            },
            None if generator.is_number() || *generator == FieldGenerator::Ids => Part::Numbers {
                number,
                kind: kind.clone(),
                generator: *generator,
                packed: field.is_packed(),
                // A list of ids is written as it is, zeros too.
                keep_default: presence || *generator == FieldGenerator::Ids,
            },
            None => Part::Text {
                number,
                node: node.clone(),
                keep_empty: presence,
            },
        },
        Node::Interpolate(..) => Part::Text {
            number,
            node: node.clone(),
            keep_empty: presence,
        },
        _ => Part::Rendered(field.clone(), node.clone()),
    };
    vec![part]
}

/// The writer of one element of the repeated `field` (of messages, strings or bytes): always
/// written, empty or not.
fn element(field: &FieldDescriptor, item: &Node) -> Part {
    let number = field.number();
    match item {
        _ if !generates(item) => Part::Fixed(encode_alone(field, &Node::List(vec![item.clone()]))),
        Node::Message(_, inner) | Node::Encoded(_, inner) => Part::Message {
            number,
            keep_empty: true,
            parts: plan(inner),
        },
        Node::Generate(generator, kind) => match generator.encoding_in(kind) {
            Some((encoding, all)) => Part::Vector {
                number,
                encoding,
                all,
                keep_empty: true,
            },
            None if generator.is_number() => Part::Numbers {
                number,
                kind: kind.clone(),
                generator: *generator,
                packed: false,
                keep_default: true,
            },
            None => Part::Text {
                number,
                node: item.clone(),
                keep_empty: true,
            },
        },
        Node::Interpolate(..) => Part::Text {
            number,
            node: item.clone(),
            keep_empty: true,
        },
        _ => Part::Rendered(field.clone(), Node::List(vec![item.clone()])),
    }
}

/// Whether `node` mentions any generator (or has an element per point).
fn generates(node: &Node) -> bool {
    match node {
        Node::Message(_, fields) | Node::Encoded(_, fields) => {
            fields.iter().any(|(_, child)| generates(child))
        }
        Node::List(items) => items.iter().any(generates),
        Node::PerPoint(_) | Node::Generate(..) | Node::Interpolate(..) => true,
        Node::Map(entries) => entries.iter().any(|(_, child)| generates(child)),
        Node::Literal(_) => false,
    }
}

/// `field` set to what `node` renders, encoded alone (`node` has no generator: any fill).
fn encode_alone(field: &FieldDescriptor, node: &Node) -> Vec<u8> {
    let fill = Fill {
        points: &[],
        user: 0,
        iteration: 0,
        k: 0,
        stamp: "",
        pad: 0,
    };
    let mut out = Vec::new();
    rendered(field, node, &fill, 0, &mut out);
    out
}

fn rendered(
    field: &FieldDescriptor,
    node: &Node,
    fill: &Fill<'_>,
    point: usize,
    out: &mut Vec<u8>,
) {
    let mut message = DynamicMessage::new(field.parent_message().clone());
    message.set_field(field, render::render(node, fill, point));
    // Cannot fail: a Vec grows as needed.
    let _ = message.encode(out);
}

/// Writes `parts` for the request `fill`, point `point` (a per-point element's).
pub(super) fn write(parts: &[Part], fill: &Fill<'_>, point: usize, out: &mut Vec<u8>) {
    use prost::encoding::{WireType, encode_key, encode_varint};
    for part in parts {
        match part {
            Part::Fixed(bytes) => out.extend_from_slice(bytes),
            Part::Message {
                number,
                keep_empty,
                parts,
            } => {
                let mut body = Vec::new();
                write(parts, fill, point, &mut body);
                if body.is_empty() && !keep_empty {
                    continue;
                }
                encode_key(*number, WireType::LengthDelimited, out);
                encode_varint(body.len() as u64, out);
                out.extend_from_slice(&body);
            }
            Part::PerPoint(parts) => {
                (0..fill.points.len()).for_each(|i| write(parts, fill, i, out));
            }
            Part::Vector {
                number,
                encoding,
                all,
                keep_empty,
            } => {
                let at = fill.points.get(point).map(std::slice::from_ref);
                let points = if *all {
                    fill.points
                } else {
                    at.unwrap_or_default()
                };
                let values: usize = points.iter().map(|p| p.vector.len()).sum();
                if values == 0 && !keep_empty {
                    continue;
                }
                encode_key(*number, WireType::LengthDelimited, out);
                encode_varint((values * encoding.width()) as u64, out);
                points.iter().for_each(|p| encoding.write(p.vector, out));
            }
            Part::Numbers {
                number,
                kind,
                generator,
                packed,
                keep_default,
            } => {
                let at = fill.points.get(point);
                let values: Vec<u64> = match generator {
                    FieldGenerator::Ids => fill.points.iter().map(|p| p.id).collect(),
                    g => vec![render::number_of(*g, fill, at.unwrap_or(&render::NO_POINT))],
                };
                numbers(kind, *number, *packed, !keep_default, &values, out);
            }
            Part::Text {
                number,
                node,
                keep_empty,
            } => {
                let at = fill.points.get(point).unwrap_or(&render::NO_POINT);
                let text = text(node, fill, at);
                if text.is_empty() && !keep_empty {
                    continue;
                }
                encode_key(*number, WireType::LengthDelimited, out);
                encode_varint(text.len() as u64, out);
                out.extend_from_slice(text.as_bytes());
            }
            Part::Rendered(field, node) => rendered(field, node, fill, point, out),
        }
    }
}

/// The text a text node gives (a text generator, or text with generators inside it).
fn text<'a>(node: &Node, fill: &Fill<'a>, at: &Point<'a>) -> Cow<'a, str> {
    match node {
        Node::Generate(FieldGenerator::Text, _) => Cow::Borrowed(at.text),
        Node::Generate(FieldGenerator::Stamp, _) => Cow::Borrowed(fill.stamp),
        Node::Generate(FieldGenerator::Uuid, _) => Cow::Owned(super::generator::uuid(at.id)),
        Node::Generate(FieldGenerator::Pad, _) => Cow::Owned("x".repeat(fill.pad)),
        Node::Generate(FieldGenerator::Payload, _) => {
            Cow::Owned(format!("{{\"id\":{},\"user\":{}}}", at.id, fill.user))
        }
        Node::Interpolate(pieces, _) => Cow::Owned(render::interpolate(pieces, fill, at)),
        _ => Cow::Borrowed(""),
    }
}

/// Writes `values` as the field `number` of `kind` (an integer, float, double or string),
/// packed or one occurrence each; with `skip_default`, a single value that converts to 0 is
/// left out, as protobuf leaves out a default.
fn numbers(
    kind: &Kind,
    number: u32,
    packed: bool,
    skip_default: bool,
    values: &[u64],
    out: &mut Vec<u8>,
) {
    use prost::encoding as wire;
    macro_rules! put {
        ($module:ident, $t:ty) => {{
            let values: Vec<$t> = values.iter().map(|&n| n as $t).collect();
            if skip_default && values.iter().all(|&v| v == <$t>::default()) {
                return;
            }
            if packed {
                wire::$module::encode_packed(number, &values, out)
            } else {
                wire::$module::encode_repeated(number, &values, out)
            }
        }};
    }
    match kind {
        Kind::Int32 => put!(int32, i32),
        Kind::Int64 => put!(int64, i64),
        Kind::Uint32 => put!(uint32, u32),
        Kind::Uint64 => put!(uint64, u64),
        Kind::Sint32 => put!(sint32, i32),
        Kind::Sint64 => put!(sint64, i64),
        Kind::Fixed32 => put!(fixed32, u32),
        Kind::Fixed64 => put!(fixed64, u64),
        Kind::Sfixed32 => put!(sfixed32, i32),
        Kind::Sfixed64 => put!(sfixed64, i64),
        Kind::Float => put!(float, f32),
        Kind::Double => put!(double, f64),
        _ => values
            .iter()
            .for_each(|n| wire::string::encode(number, &n.to_string(), out)),
    }
}

//! Request templates: a JSON rendering of a request message with generators in place of
//! values, checked once against the message's descriptor and rendered per request into a
//! [`DynamicMessage`].
//!
//! A generator is `{{name}}` in a JSON string. Alone (the field's whole value) it fills:
//! - `{{vector}}`: the request's vector (the query, or the point written): a repeated `float`
//!   or `double` field, or `bytes` (little-endian f32, as Milvus's placeholders want);
//!   `{{vector_f16}}`, `{{vector_bf16}}`: the same as IEEE half or bfloat16, into `bytes`;
//! - `{{vectors}}` (`_f16`, `_bf16`): every vector of the batch one after another, the same
//!   fields (a column-wise write: Milvus's `float_vector.data`);
//! - `{{ids}}`: every id of the batch, in order, in a repeated integer or string field;
//! - `{{text}}`: the query's text, or the point's, in the synthetic vocabulary (`string`);
//! - `{{payload}}`: a short payload of the point, `{"id":ID,"user":USER}` (`string` or `bytes`);
//! - numbers, into an integer, `float`, `double` or `string` field (decimal): `{{id}}` (the
//!   point's id, or the search's), `{{user}}` and `{{iteration}}` (who sends the request, its
//!   number), `{{k}}` (neighbours asked for), `{{batch_size}}` (the request's points);
//! - `{{uuid}}`: the point's id as a UUID (its low 64 bits), for services whose keys must be
//!   UUIDs (`string`);
//! - `{{stamp}}`: the run's acknowledgement stamp, on writes whose acknowledgements are read
//!   back after a fault ([`crate::measure::acks`]), `string`;
//! - `{{pad}}`: filler of the scenario's pad size (memory pressure), `string` or `bytes`.
//!
//! Inside a longer string (`"{\"ef\": {{k}}}"`, into `string` or `bytes`) the numbers and
//! `{{stamp}}` are written out; the others have no text form and are refused there. A map
//! entry whose value is `{{stamp}}` or `{{pad}}` alone is left out of a request that has none.
//!
//! Every other value is a literal of the field's type (numbers in range, enums by name, strings,
//! nested objects for messages, objects for maps). A `bytes` field may hold a message of its
//! own, encoded (Milvus's `placeholder_group`): an object whose `"@encode"` names the type, its
//! other keys that type's fields, templated like any other. In a write, a repeated field
//! written as a list of one element that mentions `{{id}}` is that element once per point of
//! the batch: `"points": [{"id": "{{id}}", "values": "{{vector}}"}]`.
//!
//! On the hot path a request is encoded straight to bytes ([`Template::encode`]), without a
//! [`DynamicMessage`] (maps and lists of numbers with generators in them aside): the top-level
//! fields that are the same in every request of a run (literals, and `{{k}}`) are encoded once
//! and copied; the varying ones are written field by field (`template/encode.rs`: a message
//! encoded into `bytes` has the wire bytes of a message field, a vector is its packed
//! floats); a vector whose field sits in singular messages only (the usual search) is
//! appended after the rest as its packed bytes, wrapped in its enclosing message fields (a
//! `{{text}}` there likewise), since protobuf merges a repeated occurrence of a singular
//! message field into the first. A message's fields may come in any order, so the three are
//! written one after the other, and the target decodes the message [`Template::render`]
//! builds.
//!
//! Checking happens before any load: an unknown field, a value of the wrong type or a
//! generator where it cannot go is a [`TemplateError`] naming the field's path, never a
//! request full of INVALID_ARGUMENT. Rendering cannot fail.

mod encode;
mod generator;
mod node;
mod render;
#[cfg(test)]
mod tests;

use prost_reflect::{
    DescriptorPool, DynamicMessage, EnumDescriptor, FieldDescriptor, Kind, MapKey,
    MessageDescriptor, Value,
};
use serde_json::Value as Json;

pub use generator::FieldGenerator;
use node::{Appended, Fields, Holds, Node};
pub use node::{Fill, Point};

/// `id` as the UUID `{{uuid}}` writes for it.
pub fn uuid_of(id: u64) -> String {
    generator::uuid(id)
}
use generator::{Parsed, Piece, parse};

/// Bytes ahead of a gRPC message in its frame: a flag byte (compressed or not) and the
/// message's length, 4 bytes big-endian.
pub const GRPC_PREFIX: usize = 5;

/// The key of an object that is a message encoded into a `bytes` field.
const ENCODE: &str = "@encode";

/// A template that does not fit its message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("template field `{path}`: {reason}")]
pub struct TemplateError {
    /// Where in the template: `records[0].embedding`.
    pub path: String,
    /// What is wrong.
    pub reason: String,
}

/// A checked template of one message.
#[derive(Debug, Clone)]
pub struct Template {
    root: (MessageDescriptor, Fields),
    /// The root's fields, without the vectors that are appended as bytes, that vary from
    /// request to request (they mention a generator other than `{{k}}`), as their writers.
    varying: Vec<encode::Part>,
    /// The root's other fields: the same in every request of a run.
    fixed: Fields,
    /// `fixed` encoded, for the `k` it was encoded with (the first request's).
    fixed_encoded: std::sync::OnceLock<(u32, Vec<u8>)>,
    /// Those vectors: where they are, and how they are written.
    appended: Vec<Appended>,
    uses: Vec<FieldGenerator>,
}

impl Template {
    /// Checks `json` against `message`; a message named by `"@encode"` is looked up in
    /// `message`'s pool.
    pub fn compile(json: &Json, message: &MessageDescriptor) -> Result<Self, TemplateError> {
        let mut check = Check {
            pool: message.parent_pool().clone(),
            uses: Vec::new(),
        };
        let root = (message.clone(), check.fields(json, message, "")?);
        let mut uses = check.uses;
        uses.sort();
        uses.dedup();
        let mut lean = root.1.clone();
        let mut appended = Vec::new();
        split_vectors(&mut lean, &mut Vec::new(), &mut appended);
        let (varying, fixed): (Fields, Fields) =
            lean.into_iter().partition(|(_, node)| varies(node));
        Ok(Self {
            root,
            varying: encode::plan(&varying),
            fixed,
            fixed_encoded: std::sync::OnceLock::new(),
            appended,
            uses,
        })
    }

    /// Whether the template uses `generator` anywhere.
    pub fn uses(&self, generator: FieldGenerator) -> bool {
        self.uses.contains(&generator)
    }

    /// Whether the template uses any generator of vectors (`{{vector}}`, `{{vectors}}`, in
    /// any encoding).
    pub fn uses_vector(&self) -> bool {
        self.uses.iter().any(|g| g.vector().is_some())
    }

    /// The request for `fill`, as a message.
    pub fn render(&self, fill: &Fill<'_>) -> DynamicMessage {
        let (descriptor, fields) = &self.root;
        render::message(descriptor, fields, fill, 0)
    }

    /// The request for `fill`, encoded: the message [`render`](Self::render) builds, with its
    /// appendable vectors written as packed bytes after the rest.
    pub fn encode(&self, fill: &Fill<'_>) -> Vec<u8> {
        self.encode_after(fill, 0)
    }

    /// The request for `fill` as a gRPC frame, ready to send: a flag byte (uncompressed), the
    /// message's length, the message [`encode`](Self::encode) gives, in one allocation.
    pub fn frame(&self, fill: &Fill<'_>) -> bytes::Bytes {
        let mut frame = self.encode_after(fill, GRPC_PREFIX);
        let length = (frame.len() - GRPC_PREFIX) as u32;
        frame[1..GRPC_PREFIX].copy_from_slice(&length.to_be_bytes());
        frame.into()
    }

    /// [`encode`](Self::encode), after `headroom` zero bytes.
    fn encode_after(&self, fill: &Fill<'_>, headroom: usize) -> Vec<u8> {
        use prost::Message;
        let descriptor = &self.root.0;
        // The first request's fixed part is kept for the run (a run asks for one k).
        let render_fixed = || render::message(descriptor, &self.fixed, fill, 0).encode_to_vec();
        let cached = self.fixed_encoded.get_or_init(|| (fill.k, render_fixed()));
        let fresh;
        let fixed: &[u8] = if cached.0 == fill.k {
            &cached.1
        } else {
            fresh = render_fixed();
            &fresh
        };
        let appended: usize = self
            .appended
            .iter()
            .map(|a| render::appended_len(a, fill))
            .sum();
        // A guess of the varying part: the batch's vectors as f32 and a little more per point.
        let varying = if self.varying.is_empty() {
            0
        } else {
            let values: usize = fill.points.iter().map(|p| p.vector.len()).sum();
            64 + values * 4 + fill.points.len() * 32
        };
        let mut out = Vec::with_capacity(headroom + fixed.len() + varying + appended);
        out.resize(headroom, 0);
        out.extend_from_slice(fixed);
        encode::write(&self.varying, fill, 0, &mut out);
        for appended in &self.appended {
            render::append(&mut out, appended, fill);
        }
        out
    }
}

/// Moves the vectors of `fields` that sit in singular messages only out to `out`.
fn split_vectors(fields: &mut Fields, path: &mut Vec<u32>, out: &mut Vec<Appended>) {
    fields.retain_mut(|(field, node)| match node {
        Node::Generate(generator, kind) if generator.vector().is_some() => {
            if let Some((encoding, all)) = generator.encoding_in(kind) {
                out.push(Appended {
                    path: path.clone(),
                    number: field.number(),
                    holds: Holds::Vectors(encoding, all),
                    presence: field.supports_presence(),
                });
            }
            false
        }
        Node::Generate(FieldGenerator::Text, _) => {
            out.push(Appended {
                path: path.clone(),
                number: field.number(),
                holds: Holds::Text,
                presence: field.supports_presence(),
            });
            false
        }
        Node::Message(_, inner) if !field.is_list() && !field.is_map() => {
            path.push(field.number());
            split_vectors(inner, path, out);
            path.pop();
            true
        }
        _ => true,
    });
}

/// Whether what `node` renders differs from request to request of a run: it mentions a
/// generator other than `{{k}}` (a run's k is fixed), or has an element per point.
fn varies(node: &Node) -> bool {
    match node {
        Node::Message(_, fields) | Node::Encoded(_, fields) => {
            fields.iter().any(|(_, child)| varies(child))
        }
        Node::List(items) => items.iter().any(varies),
        Node::PerPoint(_) => true,
        Node::Map(entries) => entries.iter().any(|(_, child)| varies(child)),
        Node::Literal(_) => false,
        Node::Generate(generator, _) => *generator != FieldGenerator::K,
        Node::Interpolate(pieces, _) => pieces
            .iter()
            .any(|p| matches!(p, Piece::Generate(g) if *g != FieldGenerator::K)),
    }
}

fn join(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_string()
    } else {
        format!("{path}.{name}")
    }
}

fn err(path: &str, reason: impl Into<String>) -> TemplateError {
    TemplateError {
        path: if path.is_empty() {
            "(root)".into()
        } else {
            path.to_string()
        },
        reason: reason.into(),
    }
}

fn kind_name(kind: &Kind) -> String {
    match kind {
        Kind::Message(m) => format!("message {}", m.full_name()),
        Kind::Enum(e) => format!("enum {}", e.full_name()),
        other => format!("{other:?}").to_lowercase(),
    }
}

fn is_integer(kind: &Kind) -> bool {
    matches!(
        kind,
        Kind::Int32
            | Kind::Int64
            | Kind::Uint32
            | Kind::Uint64
            | Kind::Sint32
            | Kind::Sint64
            | Kind::Fixed32
            | Kind::Fixed64
            | Kind::Sfixed32
            | Kind::Sfixed64
    )
}

/// Whether a string mentions `{{id}}`, alone or inside text.
fn mentions_id(json: &Json) -> bool {
    match json {
        Json::String(s) => parse(s)
            .is_ok_and(|p| p.mentions(FieldGenerator::Id) || p.mentions(FieldGenerator::Uuid)),
        Json::Array(items) => items.iter().any(mentions_id),
        Json::Object(fields) => fields.values().any(mentions_id),
        _ => false,
    }
}

/// A template being checked: where `"@encode"` types are looked up, and the generators seen.
struct Check {
    pool: DescriptorPool,
    uses: Vec<FieldGenerator>,
}

impl Check {
    fn fields(
        &mut self,
        json: &Json,
        message: &MessageDescriptor,
        path: &str,
    ) -> Result<Fields, TemplateError> {
        let Json::Object(fields) = json else {
            return Err(err(
                path,
                format!("expected an object for message {}", message.full_name()),
            ));
        };
        let mut nodes = Vec::with_capacity(fields.len());
        for (name, value) in fields {
            let field_path = join(path, name);
            let field = message
                .get_field_by_name(name)
                .or_else(|| message.get_field_by_json_name(name))
                .ok_or_else(|| {
                    let known: Vec<String> =
                        message.fields().map(|f| f.name().to_string()).collect();
                    err(
                        &field_path,
                        format!(
                            "no such field in message {} (its fields: {})",
                            message.full_name(),
                            known.join(", ")
                        ),
                    )
                })?;
            let node = self.field(value, &field, &field_path)?;
            nodes.push((field, node));
        }
        Ok(nodes)
    }

    fn field(
        &mut self,
        json: &Json,
        field: &FieldDescriptor,
        path: &str,
    ) -> Result<Node, TemplateError> {
        let kind = field.kind();
        if field.is_map() {
            let Kind::Message(entry) = &kind else {
                return Err(err(path, "a map without an entry message"));
            };
            let Json::Object(entries) = json else {
                return Err(err(path, "expected an object for a map field"));
            };
            let (key_field, value_field) =
                (entry.map_entry_key_field(), entry.map_entry_value_field());
            let mut nodes = Vec::with_capacity(entries.len());
            for (key, value) in entries {
                let entry_path = format!("{path}[{key:?}]");
                let key = map_key(key, &key_field.kind()).map_err(|r| err(&entry_path, r))?;
                let value = self.value(value, &value_field.kind(), &entry_path)?;
                nodes.push((key, value));
            }
            return Ok(Node::Map(nodes));
        }
        if field.is_list() {
            if let Json::String(text) = json {
                return self.list_generator(text, kind, path);
            }
            let Json::Array(items) = json else {
                return Err(err(path, "a repeated field: expected a list"));
            };
            if let [item] = items.as_slice()
                && mentions_id(item)
            {
                let element = self.value(item, &kind, &format!("{path}[]"))?;
                return Ok(Node::PerPoint(Box::new(element)));
            }
            let elements = items
                .iter()
                .enumerate()
                .map(|(i, item)| self.value(item, &kind, &format!("{path}[{i}]")))
                .collect::<Result<Vec<_>, _>>()?;
            return Ok(Node::List(elements));
        }
        self.value(json, &kind, path)
    }

    /// A repeated field of `kind` elements given a string: a generator of lists.
    fn list_generator(
        &mut self,
        text: &str,
        kind: Kind,
        path: &str,
    ) -> Result<Node, TemplateError> {
        let Parsed::Whole(generator) = parse(text).map_err(|r| err(path, r))? else {
            return Err(err(
                path,
                "a repeated field: expected a list (or {{vector}}, {{vectors}}, {{ids}})",
            ));
        };
        let floats = matches!(kind, Kind::Float | Kind::Double);
        let fits = match generator {
            FieldGenerator::Vector | FieldGenerator::Vectors => floats,
            FieldGenerator::Ids => is_integer(&kind) || matches!(kind, Kind::String),
            _ => false,
        };
        if fits {
            self.uses.push(generator);
            return Ok(Node::Generate(generator, kind));
        }
        let name = generator.name();
        let reason = match generator {
            _ if generator.vector().is_some() && matches!(kind, Kind::Bytes) => format!(
                "{{{{{name}}}}} in a repeated bytes field is one element: write [\"{{{{{name}}}}}\"]"
            ),
            FieldGenerator::Vector | FieldGenerator::Vectors => format!(
                "{{{{{name}}}}} needs a repeated float or double field, or a bytes field; this one is repeated {}",
                kind_name(&kind)
            ),
            _ if generator.vector().is_some() => format!(
                "{{{{{name}}}}} needs a bytes field; this one is repeated {}",
                kind_name(&kind)
            ),
            FieldGenerator::Ids => format!(
                "{{{{ids}}}} needs a repeated integer or string field; this one is repeated {}",
                kind_name(&kind)
            ),
            _ => format!(
                "a repeated field: expected a list ({{{{{name}}}}} is one value: write [\"{{{{{name}}}}}\"])"
            ),
        };
        Err(err(path, reason))
    }

    /// A singular value of `kind` (a field, an element of a list, a map entry's value).
    fn value(&mut self, json: &Json, kind: &Kind, path: &str) -> Result<Node, TemplateError> {
        match json {
            Json::String(text) => match parse(text).map_err(|r| err(path, r))? {
                Parsed::Whole(generator) => return self.generator(generator, kind, path),
                Parsed::Pieces(pieces) => return self.interpolate(pieces, kind, path),
                Parsed::Plain => {}
            },
            Json::Object(object) if object.contains_key(ENCODE) => {
                if !matches!(kind, Kind::Bytes) {
                    return Err(err(
                        path,
                        format!(
                            "\"{ENCODE}\" needs a bytes field (it writes the message's encoding); this one is {}",
                            kind_name(kind)
                        ),
                    ));
                }
                return self.encoded(object, path);
            }
            _ => {}
        }
        if let Kind::Message(message) = kind {
            return Ok(Node::Message(
                message.clone(),
                self.fields(json, message, path)?,
            ));
        }
        literal(json, kind)
            .map(Node::Literal)
            .map_err(|reason| err(path, reason))
    }

    /// `generator` alone as a singular value of `kind`.
    fn generator(
        &mut self,
        generator: FieldGenerator,
        kind: &Kind,
        path: &str,
    ) -> Result<Node, TemplateError> {
        let (fits, wants) = match generator {
            FieldGenerator::Vector | FieldGenerator::Vectors => (
                matches!(kind, Kind::Bytes),
                "a repeated float or double field, or a bytes field",
            ),
            FieldGenerator::VectorF16
            | FieldGenerator::VectorBf16
            | FieldGenerator::VectorsF16
            | FieldGenerator::VectorsBf16 => (matches!(kind, Kind::Bytes), "a bytes field"),
            FieldGenerator::Ids => (false, "a repeated integer or string field"),
            FieldGenerator::Text | FieldGenerator::Stamp | FieldGenerator::Uuid => {
                (matches!(kind, Kind::String), "a string field")
            }
            FieldGenerator::Payload | FieldGenerator::Pad => (
                matches!(kind, Kind::String | Kind::Bytes),
                "a string or bytes field",
            ),
            FieldGenerator::Id
            | FieldGenerator::User
            | FieldGenerator::Iteration
            | FieldGenerator::K
            | FieldGenerator::BatchSize => (
                is_integer(kind) || matches!(kind, Kind::Float | Kind::Double | Kind::String),
                "an integer, float, double or string field",
            ),
        };
        if !fits {
            return Err(err(
                path,
                format!(
                    "{{{{{}}}}} needs {wants}; this one is {}",
                    generator.name(),
                    kind_name(kind)
                ),
            ));
        }
        self.uses.push(generator);
        Ok(Node::Generate(generator, kind.clone()))
    }

    /// Text with generators inside it, as a value of `kind`.
    fn interpolate(
        &mut self,
        pieces: Vec<Piece>,
        kind: &Kind,
        path: &str,
    ) -> Result<Node, TemplateError> {
        if !matches!(kind, Kind::String | Kind::Bytes) {
            return Err(err(
                path,
                format!(
                    "text with generators inside it needs a string or bytes field; this one is {} (a number generator alone, \"{{{{k}}}}\", fills a number)",
                    kind_name(kind)
                ),
            ));
        }
        for piece in &pieces {
            if let Piece::Generate(generator) = piece {
                if !generator.interpolates() {
                    return Err(err(
                        path,
                        format!(
                            "{{{{{}}}}} cannot be inside a longer string (only k, id, user, iteration, batch_size and stamp can): give it a field of its own",
                            generator.name()
                        ),
                    ));
                }
                self.uses.push(*generator);
            }
        }
        Ok(Node::Interpolate(pieces, kind.clone()))
    }

    /// An object with `"@encode"`: the named message, encoded into a `bytes` field.
    fn encoded(
        &mut self,
        object: &serde_json::Map<String, Json>,
        path: &str,
    ) -> Result<Node, TemplateError> {
        let Some(Json::String(name)) = object.get(ENCODE) else {
            return Err(err(
                path,
                format!("\"{ENCODE}\" names a message type: a string, e.g. \"package.Message\""),
            ));
        };
        let Some(message) = self.pool.get_message_by_name(name.trim_start_matches('.')) else {
            return Err(err(
                path,
                format!("\"{ENCODE}\": no message type {name} in the descriptors"),
            ));
        };
        let mut rest = object.clone();
        rest.remove(ENCODE);
        let fields = self.fields(&Json::Object(rest), &message, path)?;
        Ok(Node::Encoded(message, fields))
    }
}

fn literal(json: &Json, kind: &Kind) -> Result<Value, String> {
    let wrong = || format!("expected {}, got {json}", kind_name(kind));
    let int = |min: i128, max: i128| -> Result<i128, String> {
        let n = json
            .as_i64()
            .map(i128::from)
            .or_else(|| json.as_u64().map(i128::from))
            .ok_or_else(wrong)?;
        if n < min || n > max {
            return Err(format!("{n} is out of range for {}", kind_name(kind)));
        }
        Ok(n)
    };
    Ok(match kind {
        Kind::Double => Value::F64(json.as_f64().ok_or_else(wrong)?),
        Kind::Float => Value::F32(json.as_f64().ok_or_else(wrong)? as f32),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
            Value::I32(int(i32::MIN.into(), i32::MAX.into())? as i32)
        }
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => {
            Value::I64(int(i64::MIN.into(), i64::MAX.into())? as i64)
        }
        Kind::Uint32 | Kind::Fixed32 => Value::U32(int(0, u32::MAX.into())? as u32),
        Kind::Uint64 | Kind::Fixed64 => Value::U64(int(0, u64::MAX.into())? as u64),
        Kind::Bool => Value::Bool(json.as_bool().ok_or_else(wrong)?),
        // A number where text is wanted is its decimal text (`"dim": {{dimensions}}` in a
        // key-value list of strings).
        Kind::String => Value::String(match json {
            Json::Number(n) => n.to_string(),
            other => other.as_str().ok_or_else(wrong)?.to_string(),
        }),
        Kind::Bytes => Value::Bytes(
            json.as_str()
                .ok_or_else(|| {
                    format!(
                        "expected bytes (a string, or an object whose \"{ENCODE}\" names a message type), got {json}"
                    )
                })?
                .as_bytes()
                .to_vec()
                .into(),
        ),
        Kind::Enum(e) => Value::EnumNumber(enum_number(json, e)?),
        Kind::Message(_) => return Err(wrong()),
    })
}

fn enum_number(json: &Json, e: &EnumDescriptor) -> Result<i32, String> {
    if let Some(name) = json.as_str() {
        return e
            .get_value_by_name(name)
            .map(|v| v.number())
            .ok_or_else(|| {
                let names: Vec<String> = e.values().map(|v| v.name().to_string()).collect();
                format!(
                    "{name:?} is not a value of enum {} ({})",
                    e.full_name(),
                    names.join(", ")
                )
            });
    }
    let n = json
        .as_i64()
        .ok_or_else(|| format!("expected a name of enum {}, got {json}", e.full_name()))?;
    i32::try_from(n).map_err(|_| format!("{n} is out of range for enum {}", e.full_name()))
}
fn map_key(key: &str, kind: &Kind) -> Result<MapKey, String> {
    let bad = |e: String| format!("map key {key:?}: {e}");
    Ok(match kind {
        Kind::String => MapKey::String(key.to_string()),
        Kind::Bool => MapKey::Bool(key.parse().map_err(|e| bad(format!("{e}")))?),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
            MapKey::I32(key.parse().map_err(|e| bad(format!("{e}")))?)
        }
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => {
            MapKey::I64(key.parse().map_err(|e| bad(format!("{e}")))?)
        }
        Kind::Uint32 | Kind::Fixed32 => MapKey::U32(key.parse().map_err(|e| bad(format!("{e}")))?),
        Kind::Uint64 | Kind::Fixed64 => MapKey::U64(key.parse().map_err(|e| bad(format!("{e}")))?),
        other => {
            return Err(bad(format!(
                "keys of {} are not supported",
                kind_name(other)
            )));
        }
    })
}

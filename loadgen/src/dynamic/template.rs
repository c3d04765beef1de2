//! Request templates: a JSON rendering of a request message with generators in place of
//! values, checked once against the message's descriptor and rendered per request into a
//! [`DynamicMessage`].
//!
//! A generator is a JSON string that is exactly `{{name}}`:
//! - `{{vector}}`: the request's vector (the query, or the point written), in a repeated
//!   `float` or `double` field;
//! - `{{text}}`: the query's text, or the point's, in the synthetic vocabulary (`string`);
//! - `{{payload}}`: a short payload of the point, `{"id":ID,"user":USER}` (`string` or `bytes`);
//! - `{{id}}`: the point's id (a write), or the request's (a search): an integer or a string
//!   field (decimal);
//! - `{{user}}`, `{{iteration}}`: who sends the request and its number, integer or string;
//! - `{{k}}`: neighbours asked for, integer;
//! - `{{stamp}}`: the run's acknowledgement stamp, on writes whose acknowledgements are read
//!   back after a fault ([`crate::acks`]), `string`;
//! - `{{pad}}`: filler of the scenario's pad size (memory pressure), `string` or `bytes`.
//!
//! A map entry whose value is `{{stamp}}` or `{{pad}}` is left out of a request that has none
//! (a write that is not stamped, a scenario without padding).
//!
//! Every other value is a literal of the field's type (numbers in range, enums by name, strings,
//! nested objects for messages, objects for maps). In a write, a repeated field written as a
//! list of one element that mentions `{{id}}` is that element once per point of the batch:
//! `"points": [{"id": "{{id}}", "values": "{{vector}}"}]`.
//!
//! On the hot path a request is encoded straight to bytes ([`Template::encode`]): a vector
//! whose field sits in singular messages only (the usual search) is not built as a list of
//! dynamic values but appended after the rest of the message as its packed bytes, wrapped in
//! its enclosing message fields (a `{{text}}` there likewise, as its UTF-8 bytes); protobuf merges a repeated occurrence of a singular message
//! field into the first, so the target decodes the same message [`Template::render`] builds.
//! Likewise the top-level fields that are the same in every request of a run (literals, and
//! `{{k}}`) are encoded once and copied: a message's fields may come in any order, so the
//! fixed ones, the varying ones and the appended vectors are simply written one after the
//! other. A search whose only varying part is its vector (vecrig's own, and most) then builds
//! no dynamic message at all per request: it costs what a prost encoding of the message does.
//!
//! Checking happens before any load: an unknown field, a value of the wrong type or a
//! generator where it cannot go is a [`TemplateError`] naming the field's path, never a
//! request full of INVALID_ARGUMENT. Rendering cannot fail.

use prost_reflect::{
    DynamicMessage, EnumDescriptor, FieldDescriptor, Kind, MapKey, MessageDescriptor, Value,
};
use serde_json::Value as Json;

/// Bytes ahead of a gRPC message in its frame: a flag byte (compressed or not) and the
/// message's length, 4 bytes big-endian.
pub const GRPC_PREFIX: usize = 5;

/// A template that does not fit its message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("template field `{path}`: {reason}")]
pub struct TemplateError {
    /// Where in the template: `records[0].embedding`.
    pub path: String,
    /// What is wrong.
    pub reason: String,
}

/// The generators a template may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Generator {
    /// `{{vector}}`.
    Vector,
    /// `{{text}}`.
    Text,
    /// `{{payload}}`.
    Payload,
    /// `{{id}}`.
    Id,
    /// `{{user}}`.
    User,
    /// `{{iteration}}`.
    Iteration,
    /// `{{k}}`.
    K,
    /// `{{stamp}}`.
    Stamp,
    /// `{{pad}}`.
    Pad,
}

const GENERATORS: &str = "vector, text, payload, id, user, iteration, k, stamp, pad";

impl Generator {
    /// The generator a JSON string names, if it is one: `Ok(None)` for a plain string, an
    /// error for `{{...}}` naming none.
    fn parse(text: &str) -> Result<Option<Self>, String> {
        let Some(inner) = text
            .trim()
            .strip_prefix("{{")
            .and_then(|t| t.strip_suffix("}}"))
        else {
            if text.contains("{{") {
                return Err(format!(
                    "{text:?}: a generator must be the whole value, `{{{{name}}}}` alone"
                ));
            }
            return Ok(None);
        };
        Ok(Some(match inner.trim() {
            "vector" => Self::Vector,
            "text" => Self::Text,
            "payload" => Self::Payload,
            "id" => Self::Id,
            "user" => Self::User,
            "iteration" => Self::Iteration,
            "k" => Self::K,
            "stamp" => Self::Stamp,
            "pad" => Self::Pad,
            other => {
                return Err(format!(
                    "unknown generator {{{{{other}}}}}: expected one of {GENERATORS}"
                ));
            }
        }))
    }
}

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
type Fields = Vec<(FieldDescriptor, Node)>;

#[derive(Debug, Clone)]
enum Node {
    Message(MessageDescriptor, Fields),
    List(Vec<Node>),
    /// One element per point of the request.
    PerPoint(Box<Node>),
    Map(Vec<(MapKey, Node)>),
    Literal(Value),
    Generate(Generator, Kind),
}

/// A checked template of one message.
#[derive(Debug, Clone)]
pub struct Template {
    root: (MessageDescriptor, Fields),
    /// The root's fields, without the vectors that are appended as bytes, that vary from
    /// request to request (they mention a generator other than `{{k}}`).
    varying: Fields,
    /// The root's other fields: the same in every request of a run.
    fixed: Fields,
    /// `fixed` encoded, for the `k` it was encoded with (the first request's).
    fixed_encoded: std::sync::OnceLock<(u32, Vec<u8>)>,
    /// Those vectors: where they are, and their width in bytes per value.
    appended: Vec<Appended>,
    uses: Vec<Generator>,
}

/// A vector or text appended after the rest of the message: the field numbers of its
/// enclosing singular message fields, outermost first, its own field number, and what it holds.
#[derive(Debug, Clone)]
struct Appended {
    path: Vec<u32>,
    number: u32,
    holds: Holds,
}

/// What an appended field holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Holds {
    Floats,
    Doubles,
    Text,
}

impl Template {
    /// Checks `json` against `message`; `name` prefixes the paths in errors.
    pub fn compile(json: &Json, message: &MessageDescriptor) -> Result<Self, TemplateError> {
        let mut uses = Vec::new();
        let root = (message.clone(), fields(json, message, "", &mut uses)?);
        uses.sort_by_key(|g| *g as u8);
        uses.dedup();
        let mut lean = root.1.clone();
        let mut appended = Vec::new();
        split_vectors(&mut lean, &mut Vec::new(), &mut appended);
        let (varying, fixed) = lean.into_iter().partition(|(_, node)| varies(node));
        Ok(Self {
            root,
            varying,
            fixed,
            fixed_encoded: std::sync::OnceLock::new(),
            appended,
            uses,
        })
    }

    /// Whether the template uses `generator` anywhere.
    pub fn uses(&self, generator: Generator) -> bool {
        self.uses.contains(&generator)
    }

    /// The request for `fill`, as a message.
    pub fn render(&self, fill: &Fill<'_>) -> DynamicMessage {
        let (descriptor, fields) = &self.root;
        render_message(descriptor, fields, fill, 0)
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
        let varying =
            (!self.varying.is_empty()).then(|| render_message(descriptor, &self.varying, fill, 0));
        // The first request's fixed part is kept for the run (a run asks for one k).
        let render_fixed = || render_message(descriptor, &self.fixed, fill, 0).encode_to_vec();
        let cached = self.fixed_encoded.get_or_init(|| (fill.k, render_fixed()));
        let fresh;
        let fixed: &[u8] = if cached.0 == fill.k {
            &cached.1
        } else {
            fresh = render_fixed();
            &fresh
        };
        let (vector, text) = fill
            .points
            .first()
            .map_or((&[][..], ""), |p| (p.vector, p.text));
        let mut out = Vec::with_capacity(
            headroom
                + fixed.len()
                + varying.as_ref().map_or(0, Message::encoded_len)
                + 16
                + vector.len() * 8
                + text.len(),
        );
        out.resize(headroom, 0);
        out.extend_from_slice(fixed);
        if let Some(varying) = varying {
            // Cannot fail: a Vec grows as needed.
            let _ = varying.encode(&mut out);
        }
        for appended in &self.appended {
            append(&mut out, appended, vector, text);
        }
        out
    }
}

/// Moves the vectors of `fields` that sit in singular messages only out to `out`.
fn split_vectors(fields: &mut Fields, path: &mut Vec<u32>, out: &mut Vec<Appended>) {
    fields.retain_mut(|(field, node)| match node {
        Node::Generate(Generator::Vector, kind) => {
            out.push(Appended {
                path: path.clone(),
                number: field.number(),
                holds: if matches!(kind, Kind::Double) {
                    Holds::Doubles
                } else {
                    Holds::Floats
                },
            });
            false
        }
        Node::Generate(Generator::Text, _) => {
            out.push(Appended {
                path: path.clone(),
                number: field.number(),
                holds: Holds::Text,
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

/// Appends `vector` as the packed field `appended.number` (or `text` as the string field),
/// inside its enclosing message fields: their lengths are counted first, innermost out, so
/// every byte is written once.
fn append(out: &mut Vec<u8>, appended: &Appended, vector: &[f32], text: &str) {
    use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};
    let payload = match appended.holds {
        Holds::Floats => vector.len() * 4,
        Holds::Doubles => vector.len() * 8,
        Holds::Text => text.len(),
    };
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
        Holds::Floats => vector
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        Holds::Doubles => vector
            .iter()
            .for_each(|&x| out.extend_from_slice(&f64::from(x).to_le_bytes())),
        Holds::Text => out.extend_from_slice(text.as_bytes()),
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

fn message_node(
    json: &Json,
    message: &MessageDescriptor,
    path: &str,
    uses: &mut Vec<Generator>,
) -> Result<Node, TemplateError> {
    Ok(Node::Message(
        message.clone(),
        fields(json, message, path, uses)?,
    ))
}

fn fields(
    json: &Json,
    message: &MessageDescriptor,
    path: &str,
    uses: &mut Vec<Generator>,
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
                let known: Vec<String> = message.fields().map(|f| f.name().to_string()).collect();
                err(
                    &field_path,
                    format!(
                        "no such field in message {} (its fields: {})",
                        message.full_name(),
                        known.join(", ")
                    ),
                )
            })?;
        nodes.push((field.clone(), field_node(value, &field, &field_path, uses)?));
    }
    Ok(nodes)
}

fn mentions_id(json: &Json) -> bool {
    match json {
        Json::String(s) => matches!(Generator::parse(s), Ok(Some(Generator::Id))),
        Json::Array(items) => items.iter().any(mentions_id),
        Json::Object(fields) => fields.values().any(mentions_id),
        _ => false,
    }
}

fn field_node(
    json: &Json,
    field: &FieldDescriptor,
    path: &str,
    uses: &mut Vec<Generator>,
) -> Result<Node, TemplateError> {
    let kind = field.kind();
    if field.is_map() {
        let Kind::Message(entry) = &kind else {
            return Err(err(path, "a map without an entry message"));
        };
        let Json::Object(entries) = json else {
            return Err(err(path, "expected an object for a map field"));
        };
        let (key_field, value_field) = (entry.map_entry_key_field(), entry.map_entry_value_field());
        let mut nodes = Vec::with_capacity(entries.len());
        for (key, value) in entries {
            let entry_path = format!("{path}[{key:?}]");
            let key = map_key(key, &key_field.kind()).map_err(|r| err(&entry_path, r))?;
            let value = value_node(value, &value_field.kind(), &entry_path, uses)?;
            nodes.push((key, value));
        }
        return Ok(Node::Map(nodes));
    }
    if field.is_list() {
        if let Json::String(text) = json {
            return match Generator::parse(text).map_err(|r| err(path, r))? {
                Some(Generator::Vector) if matches!(kind, Kind::Float | Kind::Double) => {
                    uses.push(Generator::Vector);
                    Ok(Node::Generate(Generator::Vector, kind))
                }
                Some(Generator::Vector) => Err(err(
                    path,
                    format!(
                        "{{{{vector}}}} needs a repeated float or double field; this one is repeated {}",
                        kind_name(&kind)
                    ),
                )),
                _ => Err(err(
                    path,
                    "a repeated field: expected a list (or {{vector}})",
                )),
            };
        }
        let Json::Array(items) = json else {
            return Err(err(path, "a repeated field: expected a list"));
        };
        if let [item] = items.as_slice()
            && mentions_id(item)
        {
            let element = value_node(item, &kind, &format!("{path}[]"), uses)?;
            return Ok(Node::PerPoint(Box::new(element)));
        }
        let elements = items
            .iter()
            .enumerate()
            .map(|(i, item)| value_node(item, &kind, &format!("{path}[{i}]"), uses))
            .collect::<Result<Vec<_>, _>>()?;
        return Ok(Node::List(elements));
    }
    value_node(json, &kind, path, uses)
}

fn value_node(
    json: &Json,
    kind: &Kind,
    path: &str,
    uses: &mut Vec<Generator>,
) -> Result<Node, TemplateError> {
    if let Json::String(text) = json
        && let Some(generator) = Generator::parse(text).map_err(|r| err(path, r))?
    {
        let integer = is_integer(kind);
        let fits = match generator {
            Generator::Vector => false,
            Generator::Text => matches!(kind, Kind::String),
            Generator::Payload => matches!(kind, Kind::String | Kind::Bytes),
            Generator::Id | Generator::User | Generator::Iteration => {
                integer || matches!(kind, Kind::String)
            }
            Generator::K => integer,
            Generator::Stamp => matches!(kind, Kind::String),
            Generator::Pad => matches!(kind, Kind::String | Kind::Bytes),
        };
        if !fits {
            let wants = match generator {
                Generator::Vector => "a repeated float or double field",
                Generator::Text => "a string field",
                Generator::Payload | Generator::Pad => "a string or bytes field",
                Generator::Stamp => "a string field",
                Generator::K => "an integer field",
                _ => "an integer or string field",
            };
            return Err(err(
                path,
                format!("{text} needs {wants}; this one is {}", kind_name(kind)),
            ));
        }
        uses.push(generator);
        return Ok(Node::Generate(generator, kind.clone()));
    }
    if let Kind::Message(message) = kind {
        return message_node(json, message, path, uses);
    }
    literal(json, kind)
        .map(Node::Literal)
        .map_err(|reason| err(path, reason))
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
        Kind::String => Value::String(json.as_str().ok_or_else(wrong)?.to_string()),
        Kind::Bytes => Value::Bytes(json.as_str().ok_or_else(wrong)?.as_bytes().to_vec().into()),
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

/// `n` as a value of the integer or string `kind` (checked at compile time to be one).
fn number(n: u64, kind: &Kind) -> Value {
    match kind {
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => Value::I32(n as i32),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => Value::I64(n as i64),
        Kind::Uint32 | Kind::Fixed32 => Value::U32(n as u32),
        Kind::String => Value::String(n.to_string()),
        _ => Value::U64(n),
    }
}

/// Whether what `node` renders differs from request to request of a run: it mentions a
/// generator other than `{{k}}` (a run's k is fixed), or has an element per point.
fn varies(node: &Node) -> bool {
    match node {
        Node::Message(_, fields) => fields.iter().any(|(_, child)| varies(child)),
        Node::List(items) => items.iter().any(varies),
        Node::PerPoint(_) => true,
        Node::Map(entries) => entries.iter().any(|(_, child)| varies(child)),
        Node::Literal(_) => false,
        Node::Generate(generator, _) => *generator != Generator::K,
    }
}

fn render_message(
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

fn render(node: &Node, fill: &Fill<'_>, point: usize) -> Value {
    let empty = Point {
        id: 0,
        vector: &[],
        text: "",
    };
    let at = fill.points.get(point).copied().unwrap_or(empty);
    match node {
        Node::Message(descriptor, fields) => {
            Value::Message(render_message(descriptor, fields, fill, point))
        }
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
        Node::Generate(generator, kind) => match generator {
            Generator::Vector => Value::List(match kind {
                Kind::Double => at.vector.iter().map(|&x| Value::F64(x.into())).collect(),
                _ => at.vector.iter().map(|&x| Value::F32(x)).collect(),
            }),
            Generator::Text => Value::String(at.text.to_string()),
            Generator::Payload => {
                let payload = format!("{{\"id\":{},\"user\":{}}}", at.id, fill.user);
                match kind {
                    Kind::Bytes => Value::Bytes(payload.into_bytes().into()),
                    _ => Value::String(payload),
                }
            }
            Generator::Id => number(at.id, kind),
            Generator::User => number(fill.user, kind),
            Generator::Iteration => number(fill.iteration, kind),
            Generator::K => number(fill.k.into(), kind),
            Generator::Stamp => Value::String(fill.stamp.to_string()),
            Generator::Pad => {
                let pad = "x".repeat(fill.pad);
                match kind {
                    Kind::Bytes => Value::Bytes(pad.into_bytes().into()),
                    _ => Value::String(pad),
                }
            }
        },
    }
}

/// Whether a map entry rendered from `node` is left out of this request: a stamp or a pad
/// that it does not have.
fn absent(node: &Node, fill: &Fill<'_>) -> bool {
    match node {
        Node::Generate(Generator::Stamp, _) => fill.stamp.is_empty(),
        Node::Generate(Generator::Pad, _) => fill.pad == 0,
        _ => false,
    }
}

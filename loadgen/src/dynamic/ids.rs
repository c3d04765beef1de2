//! Where a search answer's neighbour ids are: a field path such as `result[].id` (`[]` after
//! a repeated field: every element), checked once against the response's descriptor and read
//! from a decoded answer. Only sampled searches are decoded (the recall check); the hot path
//! never reads an answer's body.

use prost_reflect::{DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, Value};

/// A checked path to the ids.
#[derive(Debug, Clone)]
pub struct IdsPath {
    text: String,
    steps: Vec<FieldDescriptor>,
}

/// A path that does not fit the response message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("ids path `{path}`: {reason}")]
pub struct IdsPathError {
    /// The path as given.
    pub path: String,
    /// What is wrong.
    pub reason: String,
}

impl IdsPath {
    /// Checks `text` against the response message: every step a field, `[]` exactly after the
    /// repeated ones, messages until the last, which holds integers or decimal strings.
    pub fn compile(text: &str, response: &MessageDescriptor) -> Result<Self, IdsPathError> {
        let fail = |reason: String| IdsPathError {
            path: text.to_string(),
            reason,
        };
        let mut message = Some(response.clone());
        let mut steps = Vec::new();
        let parts: Vec<&str> = text.split('.').collect();
        for (i, part) in parts.iter().enumerate() {
            let (name, repeated) = match part.strip_suffix("[]") {
                Some(name) => (name, true),
                None => (*part, false),
            };
            let Some(within) = &message else {
                return Err(fail(format!(
                    "`{}` is not a message: nothing to look up `{name}` in",
                    parts[..i].join(".")
                )));
            };
            let field = within.get_field_by_name(name).ok_or_else(|| {
                let known: Vec<String> = within.fields().map(|f| f.name().to_string()).collect();
                fail(format!(
                    "no field `{name}` in message {} (its fields: {})",
                    within.full_name(),
                    known.join(", ")
                ))
            })?;
            if field.is_map() {
                return Err(fail(format!("`{name}` is a map: ids are read from lists")));
            }
            match (field.is_list(), repeated) {
                (true, false) => {
                    return Err(fail(format!("`{name}` is repeated: write `{name}[]`")));
                }
                (false, true) => return Err(fail(format!("`{name}` is not repeated: drop `[]`"))),
                _ => {}
            }
            message = match field.kind() {
                Kind::Message(m) => Some(m),
                _ => None,
            };
            steps.push(field);
        }
        match steps.last().map(FieldDescriptor::kind) {
            Some(
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
                | Kind::String
                | Kind::Bytes,
            ) => Ok(Self {
                text: text.to_string(),
                steps,
            }),
            Some(other) => Err(fail(format!(
                "ids must be integers, strings or bytes; the last field holds {other:?}"
            ))),
            None => Err(fail("empty".into())),
        }
    }

    /// The path as given.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The ids in `answer`, in order. A string id that is not a decimal number can match no
    /// point the loadgen wrote, so it is read as `u64::MAX`.
    pub fn read(&self, answer: &DynamicMessage) -> Vec<u64> {
        let mut ids = Vec::new();
        collect(answer, &self.steps, &mut ids);
        ids
    }
}

fn collect(message: &DynamicMessage, steps: &[FieldDescriptor], ids: &mut Vec<u64>) {
    let Some((step, rest)) = steps.split_first() else {
        return;
    };
    let value = message.get_field(step);
    let mut visit = |value: &Value| match value {
        Value::Message(inner) => collect(inner, rest, ids),
        scalar if rest.is_empty() => ids.push(id_of(scalar)),
        _ => {}
    };
    match &*value {
        Value::List(items) => items.iter().for_each(&mut visit),
        single => visit(single),
    }
}

fn id_of(value: &Value) -> u64 {
    match value {
        Value::I32(n) => u64::try_from(*n).unwrap_or(u64::MAX),
        Value::I64(n) => u64::try_from(*n).unwrap_or(u64::MAX),
        Value::U32(n) => (*n).into(),
        Value::U64(n) => *n,
        Value::String(s) => string_id(s.trim()).unwrap_or(u64::MAX),
        Value::Bytes(b) => bytes_id(b).unwrap_or(u64::MAX),
        _ => u64::MAX,
    }
}

/// A decimal id, or a UUID (`{{uuid}}` writes the id in a UUID's low 64 bits, for services
/// whose keys must be UUIDs): its low 64 bits.
fn string_id(text: &str) -> Option<u64> {
    if let Ok(n) = text.parse() {
        return Some(n);
    }
    let hex: String = text.chars().filter(|&c| c != '-').collect();
    if hex.len() != 32 || text.len() != 36 {
        return None;
    }
    u64::from_str_radix(&hex[16..], 16).ok()
}

/// An id as bytes: a UUID's 16 (Weaviate's `id_as_bytes`), big-endian, read as its low 64
/// bits (as [`string_id`] reads its text), or a big-endian integer of at most 8.
fn bytes_id(bytes: &[u8]) -> Option<u64> {
    let low = match bytes.len() {
        16 => &bytes[8..],
        0..=8 => bytes,
        _ => return None,
    };
    Some(low.iter().fold(0u64, |n, &b| n << 8 | u64::from(b)))
}

#[cfg(test)]
mod tests {
    use super::{bytes_id, string_id};

    /// What `{{uuid}}` writes reads back as the id, as text and as the 16 bytes of the UUID.
    #[test]
    fn a_uuid_written_for_an_id_reads_back_as_that_id() {
        for id in [0u64, 42, 1 << 40, u64::MAX - 1] {
            let text = crate::dynamic::template::uuid_of(id);
            assert_eq!(text.len(), 36, "{text}");
            assert_eq!(string_id(&text), Some(id), "{text}");
            let hex: String = text.chars().filter(|&c| c != '-').collect();
            let bytes: Vec<u8> = (0..16)
                .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("hex"))
                .collect();
            assert_eq!(bytes_id(&bytes), Some(id), "{text}");
        }
    }

    #[test]
    fn byte_ids_are_a_uuid_or_a_big_endian_integer() {
        let mut uuid = [0u8; 16];
        uuid[15] = 42;
        uuid[0] = 0x9e;
        assert_eq!(bytes_id(&uuid), Some(42));
        assert_eq!(bytes_id(&[1, 0]), Some(256));
        assert_eq!(bytes_id(&[0; 12]), None);
    }

    #[test]
    fn string_ids_are_decimal_or_the_low_bits_of_a_uuid() {
        assert_eq!(string_id("42"), Some(42));
        assert_eq!(string_id("00000000-0000-0000-0000-00000000002a"), Some(42));
        assert_eq!(
            string_id("9e107d9d-372b-4a1b-8000-0123456789ab"),
            Some(0x8000_0123_4567_89ab)
        );
        assert_eq!(string_id("not-a-number"), None);
        assert_eq!(
            string_id("0000000000000000000000000000002a"),
            None,
            "no dashes"
        );
    }
}

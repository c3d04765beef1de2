//! Answer checks: where a target's answer carries a status of its own, and what counts as
//! success. Many vector databases answer a failed call with gRPC OK and the error in the body
//! (Milvus: `status { code: 100, reason: "collection not found" }`); a rig that counted those
//! as successes would report 0% errors while nothing was written. A checked answer that fails
//! is its own outcome, [`ANSWER_ERROR`], in every count.
//!
//! A check names one or more integer (or enum) fields, by path, that must each hold one of
//! the `ok` values (an absent field reads as 0, as protobuf decodes it), and optionally a
//! string field holding the reason. On the hot path the status fields are read by walking the
//! answer's wire encoding along their field numbers, without decoding the rest of the answer
//! (a search answer is mostly ids and scores); the reason is decoded only from a failing one.

use prost_reflect::{DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, Value};
use serde::Deserialize;

pub use vecrig::validation::report::ANSWER_ERROR;

/// One path or several, as a scenario file may give either.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    /// One.
    One(String),
    /// Several.
    Many(Vec<String>),
}

impl OneOrMany {
    /// The paths given.
    pub fn paths(&self) -> Vec<&str> {
        match self {
            Self::One(path) => vec![path.as_str()],
            Self::Many(paths) => paths.iter().map(String::as_str).collect(),
        }
    }
}

/// `check = { status = "status.code", ok = [0], reason = "status.reason" }` in a scenario
/// file: where an answer says whether it succeeded. A service that lists its failures
/// instead (Weaviate's batch `errors`) is checked with `empty = "errors"` and
/// `reason = "errors[].error"` (the first element's).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckSpec {
    /// Integer or enum fields (dotted paths through singular messages) that must each hold
    /// one of `ok`.
    #[serde(default)]
    pub status: Option<OneOrMany>,
    /// Repeated fields (through singular messages) that must be empty.
    #[serde(default)]
    pub empty: Option<OneOrMany>,
    /// The values that mean success (default: 0).
    #[serde(default = "CheckSpec::default_ok")]
    pub ok: Vec<i64>,
    /// A string field with the failure's reason, shown in the report.
    pub reason: Option<String>,
}

impl CheckSpec {
    fn default_ok() -> Vec<i64> {
        vec![0]
    }
}

/// How a status field's number is written on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    /// int32, int64, enum, bool: a varint, negative int32 as 64-bit two's complement.
    Signed,
    /// uint32, uint64.
    Unsigned,
    /// sint32, sint64: zigzag.
    Zigzag,
}

/// One status field: the field numbers from the answer's root, and how the last is encoded.
#[derive(Debug, Clone)]
struct StatusField {
    text: String,
    numbers: Vec<u32>,
    encoding: Encoding,
}

/// A check compiled against one answer type.
#[derive(Debug, Clone)]
pub struct AnswerCheck {
    answer: MessageDescriptor,
    status: Vec<StatusField>,
    /// Lists that must be empty: their text and field numbers.
    empty: Vec<(String, Vec<u32>)>,
    ok: Vec<i64>,
    reason: Option<Vec<FieldDescriptor>>,
}

/// What a path may pass through besides singular fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lists {
    /// None: a status.
    None,
    /// Only as its last field: a list that must be empty.
    Last,
    /// `name[]` anywhere, read as its first element: a reason.
    First,
}

/// The fields along a dotted path, or why it does not fit.
fn walk(
    path: &str,
    message: &MessageDescriptor,
    lists: Lists,
) -> Result<Vec<FieldDescriptor>, String> {
    let mut within = Some(message.clone());
    let mut steps = Vec::new();
    let names: Vec<&str> = path.split('.').collect();
    for (i, name) in names.iter().enumerate() {
        let last = i + 1 == names.len();
        let (name, first) = match name.strip_suffix("[]") {
            Some(name) if lists == Lists::First => (name, true),
            _ => (*name, false),
        };
        let Some(message) = within else {
            return Err(format!(
                "`{path}`: `{}` is not a message",
                steps
                    .iter()
                    .map(|f: &FieldDescriptor| f.name().to_string())
                    .collect::<Vec<_>>()
                    .join(".")
            ));
        };
        let field = message.get_field_by_name(name).ok_or_else(|| {
            let known: Vec<String> = message.fields().map(|f| f.name().to_string()).collect();
            format!(
                "`{path}`: no field `{name}` in message {} (its fields: {})",
                message.full_name(),
                known.join(", ")
            )
        })?;
        let allowed = match lists {
            Lists::None => false,
            Lists::Last => last,
            Lists::First => first,
        };
        if field.is_map() || (field.is_list() && !allowed) {
            return Err(match lists {
                Lists::None => {
                    format!("`{path}`: `{name}` is repeated; a status is a single field")
                }
                Lists::Last => {
                    format!("`{path}`: `{name}` is repeated; only the last field may be")
                }
                Lists::First => {
                    format!("`{path}`: `{name}` is repeated: write `{name}[]` (its first element)")
                }
            });
        }
        if lists == Lists::Last && last && !field.is_list() {
            return Err(format!(
                "`{path}`: `{name}` is not repeated: nothing to be empty"
            ));
        }
        if first && !field.is_list() {
            return Err(format!("`{path}`: `{name}` is not repeated: drop `[]`"));
        }
        within = match field.kind() {
            Kind::Message(m) => Some(m),
            _ => None,
        };
        steps.push(field);
    }
    Ok(steps)
}

impl AnswerCheck {
    /// Checks `spec` against the answer type `answer`.
    pub fn compile(spec: &CheckSpec, answer: &MessageDescriptor) -> Result<Self, String> {
        let paths = spec
            .status
            .as_ref()
            .map(OneOrMany::paths)
            .unwrap_or_default();
        let lists = spec
            .empty
            .as_ref()
            .map(OneOrMany::paths)
            .unwrap_or_default();
        if paths.is_empty() && lists.is_empty() {
            return Err("check: neither `status` nor `empty` names a field".into());
        }
        if spec.ok.is_empty() {
            return Err("check: `ok` lists no value".into());
        }
        let mut status = Vec::new();
        for path in paths {
            let steps = walk(path, answer, Lists::None).map_err(|e| format!("check status {e}"))?;
            let last = steps.last().map(FieldDescriptor::kind);
            let encoding = match last {
                Some(Kind::Int32 | Kind::Int64 | Kind::Enum(_) | Kind::Bool) => Encoding::Signed,
                Some(Kind::Uint32 | Kind::Uint64) => Encoding::Unsigned,
                Some(Kind::Sint32 | Kind::Sint64) => Encoding::Zigzag,
                other => {
                    return Err(format!(
                        "check status `{path}`: must be an integer or enum field (varint), not {other:?}"
                    ));
                }
            };
            status.push(StatusField {
                text: path.to_string(),
                numbers: steps.iter().map(FieldDescriptor::number).collect(),
                encoding,
            });
        }
        let mut empty = Vec::new();
        for path in lists {
            let steps = walk(path, answer, Lists::Last).map_err(|e| format!("check empty {e}"))?;
            empty.push((
                path.to_string(),
                steps.iter().map(FieldDescriptor::number).collect(),
            ));
        }
        let reason = spec
            .reason
            .as_deref()
            .map(|path| {
                let steps =
                    walk(path, answer, Lists::First).map_err(|e| format!("check reason {e}"))?;
                match steps.last().map(FieldDescriptor::kind) {
                    Some(Kind::String) => Ok(steps),
                    other => Err(format!(
                        "check reason `{path}`: must be a string field, not {other:?}"
                    )),
                }
            })
            .transpose()?;
        Ok(Self {
            answer: answer.clone(),
            status,
            empty,
            ok: spec.ok.clone(),
            reason,
        })
    }

    /// Whether `message` (an encoded answer) passes: `Ok`, or the reason it failed.
    pub fn verdict(&self, message: &[u8]) -> Result<(), String> {
        for field in &self.status {
            let Some(raw) = read_last(message, &field.numbers) else {
                return Err("the answer does not decode".into());
            };
            let value = match field.encoding {
                Encoding::Signed => raw as i64,
                Encoding::Unsigned => raw as i64,
                Encoding::Zigzag => ((raw >> 1) as i64) ^ -((raw & 1) as i64),
            };
            if !self.ok.contains(&value) {
                return Err(self.reason_of(message, &format!("{}={value}", field.text)));
            }
        }
        for (text, numbers) in &self.empty {
            match count(message, numbers) {
                None => return Err("the answer does not decode".into()),
                Some(0) => {}
                Some(n) => return Err(self.reason_of(message, &format!("{text}: {n}"))),
            }
        }
        Ok(())
    }

    /// [`verdict`](Self::verdict) of a gRPC frame (flag byte, length, message) as the wire
    /// client keeps it.
    pub fn verdict_of_frame(&self, frame: &[u8]) -> Result<(), String> {
        match frame.first() {
            Some(0) => self.verdict(frame.get(5..).unwrap_or_default()),
            Some(_) => Err("a compressed answer cannot be checked".into()),
            None => Err("an empty answer".into()),
        }
    }

    /// The reason a failing answer gives: what failed (`found`), and its reason field.
    fn reason_of(&self, message: &[u8], found: &str) -> String {
        let text = self.reason.as_ref().and_then(|steps| {
            let answer = DynamicMessage::decode(self.answer.clone(), message).ok()?;
            read_string(&answer, steps)
        });
        match text {
            Some(text) if !text.is_empty() => format!("{found}: {text}"),
            _ => found.to_string(),
        }
    }
}

/// The string at `steps`, through the first element of any list on the way.
fn read_string(message: &DynamicMessage, steps: &[FieldDescriptor]) -> Option<String> {
    let (step, rest) = steps.split_first()?;
    let value = message.get_field(step);
    let value = match &*value {
        Value::List(items) => items.first()?.clone(),
        other => other.clone(),
    };
    match value {
        Value::Message(inner) => read_string(&inner, rest),
        Value::String(text) if rest.is_empty() => Some(text),
        _ => None,
    }
}

/// How many times the last field of `numbers` occurs (through the singular messages before
/// it, all their occurrences): the elements of a list of messages or strings. `None` when
/// the bytes are not a protobuf encoding.
fn count(mut buf: &[u8], numbers: &[u32]) -> Option<u64> {
    let (&number, rest) = numbers.split_first()?;
    let mut found = 0u64;
    while !buf.is_empty() {
        let key = varint(&mut buf)?;
        let (field, wire) = ((key >> 3) as u32, key & 7);
        let hit = field == number;
        match wire {
            0 => {
                varint(&mut buf)?;
                found += u64::from(hit && rest.is_empty());
            }
            1 => {
                buf = buf.get(8..)?;
                found += u64::from(hit && rest.is_empty());
            }
            2 => {
                let len = usize::try_from(varint(&mut buf)?).ok()?;
                let inner = buf.get(..len)?;
                buf = &buf[len..];
                if hit && rest.is_empty() {
                    found += 1;
                } else if hit {
                    found += count(inner, rest)?;
                }
            }
            5 => {
                buf = buf.get(4..)?;
                found += u64::from(hit && rest.is_empty());
            }
            _ => return None,
        }
    }
    Some(found)
}

/// The varint at field path `numbers` (singular messages, then a varint field), the last
/// occurrence winning as protobuf merges them; 0 where a field is absent. `None` when the
/// bytes are not a protobuf encoding.
fn read_last(mut buf: &[u8], numbers: &[u32]) -> Option<u64> {
    let (&number, rest) = numbers.split_first()?;
    let mut found = 0u64;
    while !buf.is_empty() {
        let key = varint(&mut buf)?;
        let (field, wire) = ((key >> 3) as u32, key & 7);
        match wire {
            0 => {
                let value = varint(&mut buf)?;
                if field == number && rest.is_empty() {
                    found = value;
                }
            }
            1 => buf = buf.get(8..)?,
            2 => {
                let len = usize::try_from(varint(&mut buf)?).ok()?;
                let inner = buf.get(..len)?;
                buf = &buf[len..];
                if field == number && !rest.is_empty() {
                    let value = read_last(inner, rest)?;
                    // A later occurrence of a message merges into the earlier ones: a field
                    // it leaves out keeps the earlier value.
                    if has_path(inner, rest) {
                        found = value;
                    }
                }
            }
            5 => buf = buf.get(4..)?,
            _ => return None,
        }
    }
    Some(found)
}

/// Whether the field path occurs in `buf` at all.
fn has_path(mut buf: &[u8], numbers: &[u32]) -> bool {
    let Some((&number, rest)) = numbers.split_first() else {
        return false;
    };
    while !buf.is_empty() {
        let Some(key) = varint(&mut buf) else {
            return false;
        };
        let (field, wire) = ((key >> 3) as u32, key & 7);
        let hit = field == number;
        match wire {
            0 => {
                if varint(&mut buf).is_none() {
                    return false;
                }
                if hit && rest.is_empty() {
                    return true;
                }
            }
            1 => match buf.get(8..) {
                Some(after) => buf = after,
                None => return false,
            },
            2 => {
                let Some(len) = varint(&mut buf).and_then(|l| usize::try_from(l).ok()) else {
                    return false;
                };
                let Some(inner) = buf.get(..len) else {
                    return false;
                };
                buf = &buf[len..];
                if hit && !rest.is_empty() && has_path(inner, rest) {
                    return true;
                }
            }
            5 => match buf.get(4..) {
                Some(after) => buf = after,
                None => return false,
            },
            _ => return false,
        }
    }
    false
}

fn varint(buf: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..70).step_by(7) {
        let (&byte, rest) = buf.split_first()?;
        *buf = rest;
        value |= u64::from(byte & 0x7f) << shift.min(63);
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost_reflect::DescriptorPool;

    /// A service answering as Milvus does: a status message inside every answer.
    const PROTO: &str = r#"
        syntax = "proto3";
        package check.test;
        enum ErrorCode { Success = 0; UnexpectedError = 1; CollectionNotExists = 4; }
        message Status { ErrorCode error_code = 1; string reason = 2; int32 code = 3; sint32 zig = 4; }
        message Results { Status status = 1; repeated int64 ids = 2; double score = 3; }
        message BatchError { int32 index = 1; string error = 2; }
        message BatchReply { float took = 1; repeated BatchError errors = 2; }
    "#;

    fn message_type(name: &str) -> MessageDescriptor {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("check.proto"), PROTO).expect("write proto");
        let set = protox::compile(["check.proto"], [dir.path()]).expect("compiles");
        let pool = DescriptorPool::from_file_descriptor_set(set).expect("pool");
        pool.get_message_by_name(name).expect("message")
    }

    fn answer_type() -> MessageDescriptor {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("check.proto"), PROTO).expect("write proto");
        let set = protox::compile(["check.proto"], [dir.path()]).expect("compiles");
        let pool = DescriptorPool::from_file_descriptor_set(set).expect("pool");
        pool.get_message_by_name("check.test.Results")
            .expect("message")
    }

    /// An encoded `Results`: a status when any of its fields is given, ids, a score.
    fn encode(code: Option<i32>, error_code: Option<i32>, reason: &str, ids: &[i64]) -> Vec<u8> {
        use prost::Message;
        let results = answer_type();
        let mut answer = DynamicMessage::new(results.clone());
        if code.is_some() || error_code.is_some() || !reason.is_empty() {
            let Some(Kind::Message(status_type)) =
                results.get_field_by_name("status").map(|f| f.kind())
            else {
                panic!("status is a message");
            };
            let mut status = DynamicMessage::new(status_type);
            if let Some(code) = code {
                status.set_field_by_name("code", Value::I32(code));
            }
            if let Some(error_code) = error_code {
                status.set_field_by_name("error_code", Value::EnumNumber(error_code));
            }
            if !reason.is_empty() {
                status.set_field_by_name("reason", Value::String(reason.into()));
            }
            answer.set_field_by_name("status", Value::Message(status));
        }
        answer.set_field_by_name(
            "ids",
            Value::List(ids.iter().map(|&id| Value::I64(id)).collect()),
        );
        answer.set_field_by_name("score", Value::F64(0.5));
        answer.encode_to_vec()
    }

    fn check(status: &[&str], ok: &[i64], reason: Option<&str>) -> Result<AnswerCheck, String> {
        let spec = CheckSpec {
            status: Some(OneOrMany::Many(
                status.iter().map(|s| s.to_string()).collect(),
            )),
            empty: None,
            ok: ok.to_vec(),
            reason: reason.map(str::to_string),
        };
        AnswerCheck::compile(&spec, &answer_type())
    }

    #[test]
    fn a_status_inside_an_ok_answer_is_read_without_decoding_the_rest() {
        let check = check(
            &["status.code", "status.error_code"],
            &[0],
            Some("status.reason"),
        )
        .expect("fits");
        assert_eq!(
            check.verdict(&encode(None, None, "", &[1, 2, 3])),
            Ok(()),
            "an absent status reads as 0"
        );
        assert_eq!(check.verdict(&encode(Some(0), Some(0), "", &[1])), Ok(()));
        assert_eq!(
            check.verdict(&encode(
                Some(100),
                None,
                "collection 'x' does not exist",
                &[]
            )),
            Err("status.code=100: collection 'x' does not exist".into())
        );
        assert_eq!(
            check.verdict(&encode(None, Some(4), "", &[])),
            Err("status.error_code=4".into())
        );
        assert_eq!(
            check.verdict(&encode(Some(-5), None, "", &[7])),
            Err("status.code=-5".into()),
            "a negative int32 is a ten-byte varint"
        );
        assert!(check.verdict(&[0x0a, 0x05, 0x18]).is_err(), "truncated");
        let framed: Vec<u8> = [0u8, 0, 0, 0, 2].into_iter().chain([0x0a, 0x00]).collect();
        assert_eq!(check.verdict_of_frame(&framed), Ok(()));
        assert!(check.verdict_of_frame(&[1, 0, 0, 0, 0]).is_err());
    }

    #[test]
    fn later_occurrences_merge_as_protobuf_does() {
        let check = check(&["status.code", "status.zig"], &[0, 7], None).expect("fits");
        // status { code: 3 } status { reason: "x" }: merged, code stays 3.
        let bytes = [0x0a, 0x02, 0x18, 0x03, 0x0a, 0x03, 0x12, 0x01, b'x'];
        assert_eq!(check.verdict(&bytes), Err("status.code=3".into()));
        // status { code: 3 } status { code: 0 }: the last wins.
        let bytes = [0x0a, 0x02, 0x18, 0x03, 0x0a, 0x02, 0x18, 0x00];
        assert_eq!(check.verdict(&bytes), Ok(()));
        // sint32 zigzag: 7 is 14 on the wire, -1 is 1.
        assert_eq!(check.verdict(&[0x0a, 0x02, 0x20, 14]), Ok(()));
        assert_eq!(
            check.verdict(&[0x0a, 0x02, 0x20, 1]),
            Err("status.zig=-1".into())
        );
    }

    /// A batch answer that lists its failures (Weaviate's `errors`): the list must be empty,
    /// and the reason is its first element's.
    #[test]
    fn a_list_of_failures_must_be_empty() {
        let spec = CheckSpec {
            status: None,
            empty: Some(OneOrMany::One("errors".into())),
            ok: vec![0],
            reason: Some("errors[].error".into()),
        };
        let check =
            AnswerCheck::compile(&spec, &message_type("check.test.BatchReply")).expect("fits");
        // took: 1.5, no errors.
        let took = [0x0d, 0x00, 0x00, 0xc0, 0x3f];
        assert_eq!(check.verdict(&took), Ok(()));
        // errors { index: 3, error: "no such class" } errors { index: 4 }.
        let mut failed = took.to_vec();
        failed.extend([0x12, 0x11, 0x08, 0x03, 0x12, 0x0d]);
        failed.extend(b"no such class");
        failed.extend([0x12, 0x02, 0x08, 0x04]);
        assert_eq!(
            check.verdict(&failed),
            Err("errors: 2: no such class".into())
        );
        for (empty, reason, mentions) in [
            ("took", None, "is not repeated"),
            ("errors", Some("errors.error"), "write `errors[]`"),
            ("errors", Some("took[]"), "drop `[]`"),
        ] {
            let spec = CheckSpec {
                status: None,
                empty: Some(OneOrMany::One(empty.into())),
                ok: vec![0],
                reason: reason.map(str::to_string),
            };
            let e = AnswerCheck::compile(&spec, &message_type("check.test.BatchReply"))
                .expect_err("does not fit");
            assert!(e.contains(mentions), "{empty} / {reason:?}: {e}");
        }
    }

    #[test]
    fn checks_that_do_not_fit_name_the_field() {
        for (status, reason, mentions) in [
            (
                &["status.cod"][..],
                None,
                "no field `cod` in message check.test.Status",
            ),
            (&["status"][..], None, "must be an integer or enum field"),
            (&["ids"][..], None, "`ids` is repeated"),
            (&["score"][..], None, "must be an integer or enum field"),
            (&["status.code.x"][..], None, "is not a message"),
            (
                &["status.code"][..],
                Some("status.code"),
                "must be a string field",
            ),
        ] {
            let e = check(status, &[0], reason).expect_err("does not fit");
            assert!(e.contains(mentions), "{status:?}: {e}");
        }
        assert!(check(&[], &[0], None).is_err());
        assert!(check(&["status.code"], &[], None).is_err());
    }
}

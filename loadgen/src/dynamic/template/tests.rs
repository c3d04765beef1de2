//! Each generator and encoding against protobuf's own encoding of the same message, built by
//! hand with prost-reflect; each refusal names its field; the hot path's encoding decodes to
//! the message `render` builds.

use prost::Message;
use prost_reflect::{
    DescriptorPool, DynamicMessage, MapKey, MessageDescriptor, ReflectMessage, Value,
};
use serde_json::json;

use super::*;

const PROTOS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/protos");

fn shapes() -> DescriptorPool {
    let set = protox::compile(["shapes.proto"], [PROTOS]).expect("shapes.proto compiles");
    DescriptorPool::from_file_descriptor_set(set).expect("pool")
}

fn milvus() -> DescriptorPool {
    let dir = format!("{PROTOS}/milvus");
    let set = protox::compile(["milvus.proto"], [dir]).expect("the milvus shapes compile");
    DescriptorPool::from_file_descriptor_set(set).expect("pool")
}

fn message(pool: &DescriptorPool, name: &str) -> MessageDescriptor {
    pool.get_message_by_name(name).expect(name)
}

/// A message of type `name` with `fields` set, as protobuf builds it.
fn built(pool: &DescriptorPool, name: &str, fields: &[(&str, Value)]) -> DynamicMessage {
    let mut built = DynamicMessage::new(message(pool, name));
    for (field, value) in fields {
        built.set_field_by_name(field, value.clone());
    }
    built
}

fn bytes(data: Vec<u8>) -> Value {
    Value::Bytes(data.into())
}

fn f32_le(vectors: &[&[f32]]) -> Vec<u8> {
    vectors
        .iter()
        .flat_map(|v| v.iter().flat_map(|x| x.to_le_bytes()))
        .collect()
}

fn f16_le(vectors: &[&[f32]]) -> Vec<u8> {
    vectors
        .iter()
        .flat_map(|v| v.iter().flat_map(|&x| half::f16::from_f32(x).to_le_bytes()))
        .collect()
}

fn bf16_le(vectors: &[&[f32]]) -> Vec<u8> {
    vectors
        .iter()
        .flat_map(|v| {
            v.iter()
                .flat_map(|&x| half::bf16::from_f32(x).to_le_bytes())
        })
        .collect()
}

const A: [f32; 3] = [1.0, -2.5, 0.1];
const B: [f32; 3] = [3.0, 0.5, -0.75];
const C: [f32; 3] = [65504.0, 1e-3, 7.0];

fn points() -> [Point<'static>; 3] {
    [
        Point {
            id: 7,
            vector: &A,
            text: "seven",
        },
        Point {
            id: 8,
            vector: &B,
            text: "eight",
        },
        Point {
            id: 9,
            vector: &C,
            text: "nine",
        },
    ]
}

fn fill<'a>(points: &'a [Point<'a>]) -> Fill<'a> {
    Fill {
        points,
        user: 3,
        iteration: 4,
        k: 10,
        stamp: "s1",
        pad: 0,
    }
}

/// `template` for `fill` is `expected`: rendered, and on the hot path (encoded straight to
/// bytes, in a frame), decoded.
fn assert_renders(template: &Template, fill: &Fill<'_>, expected: &DynamicMessage) {
    let descriptor = expected.descriptor();
    let canonical =
        |bytes: &[u8]| DynamicMessage::decode(descriptor.clone(), bytes).expect("decodes");
    let expected_bytes = expected.encode_to_vec();
    let rendered = template.render(fill).encode_to_vec();
    assert_eq!(canonical(&rendered), canonical(&expected_bytes), "rendered");
    let encoded = template.encode(fill);
    assert_eq!(canonical(&encoded), canonical(&expected_bytes), "encoded");
    let frame = template.frame(fill);
    let length = u32::from_be_bytes([frame[1], frame[2], frame[3], frame[4]]) as usize;
    assert_eq!(length, frame.len() - GRPC_PREFIX, "framed");
    assert_eq!(
        canonical(&frame[GRPC_PREFIX..]),
        canonical(&encoded),
        "framed"
    );
}

fn compile(pool: &DescriptorPool, name: &str, json: Json) -> Template {
    Template::compile(&json, &message(pool, name)).expect("the template fits")
}

#[test]
fn number_generators_fill_strings_floats_and_text_converted() {
    let pool = shapes();
    let template = compile(
        &pool,
        "shapes.v1.Shapes",
        json!({
            "name": "{{k}}",
            "score": "{{user}}",
            "weight": "{{iteration}}",
            "rows": "{{batch_size}}",
            "count": "{{id}}",
            "keys": ["{{k}}", "{{batch_size}}", "{{id}}-{{iteration}}"],
            "blob": "k={{k}}",
            "params": {
                "topk": "{{k}}",
                "params": "{\"ef\": {{k}}}",
                "who": "u{{user}}-{{iteration}}-{{id}}-{{stamp}}-{{batch_size}}",
            },
        }),
    );
    let points = points();
    let fill = fill(&points[..2]);
    let params = [
        ("topk", "10"),
        ("params", r#"{"ef": 10}"#),
        ("who", "u3-4-7-s1-2"),
    ]
    .map(|(k, v)| (MapKey::String(k.into()), Value::String(v.into())));
    let expected = built(
        &pool,
        "shapes.v1.Shapes",
        &[
            ("name", Value::String("10".into())),
            ("score", Value::F32(3.0)),
            ("weight", Value::F64(4.0)),
            ("rows", Value::U32(2)),
            ("count", Value::I64(7)),
            (
                "keys",
                Value::List(["10", "2", "7-4"].map(|s| Value::String(s.into())).to_vec()),
            ),
            ("blob", bytes(b"k=10".to_vec())),
            ("params", Value::Map(params.into_iter().collect())),
        ],
    );
    assert_renders(&template, &fill, &expected);
    for generator in [
        FieldGenerator::K,
        FieldGenerator::User,
        FieldGenerator::Iteration,
        FieldGenerator::BatchSize,
        FieldGenerator::Id,
        FieldGenerator::Stamp,
    ] {
        assert!(template.uses(generator), "{generator:?}");
    }
    assert!(!template.uses_vector());
}

#[test]
fn vectors_as_bytes_are_little_endian_f32_f16_and_bf16() {
    let pool = shapes();
    let template = compile(
        &pool,
        "shapes.v1.Shapes",
        json!({
            "blob": "{{vector}}",
            "blobs": ["{{vector_f16}}", "{{vector_bf16}}", "{{vector}}"],
            "inner": {"blob": "{{vector_bf16}}", "blobs": ["{{vector}}"]},
            "nested": "{{vector_f16}}",
        }),
    );
    let points = points();
    let fill = fill(&points[..1]);
    let inner = built(
        &pool,
        "shapes.v1.Inner",
        &[
            ("blob", bytes(bf16_le(&[&A]))),
            ("blobs", Value::List(vec![bytes(f32_le(&[&A]))])),
        ],
    );
    let expected = built(
        &pool,
        "shapes.v1.Shapes",
        &[
            ("blob", bytes(f32_le(&[&A]))),
            (
                "blobs",
                Value::List(vec![
                    bytes(f16_le(&[&A])),
                    bytes(bf16_le(&[&A])),
                    bytes(f32_le(&[&A])),
                ]),
            ),
            ("inner", Value::Message(inner)),
            ("nested", bytes(f16_le(&[&A]))),
        ],
    );
    assert_renders(&template, &fill, &expected);
    // The encodings themselves, known values: 1.0 is 0x3c00 in half, 0x3f80 in bfloat16.
    let one = [Point {
        id: 0,
        vector: &[1.0, -2.0],
        text: "",
    }];
    let rendered = template.render(&super::Fill {
        points: &one,
        ..fill
    });
    assert_eq!(
        rendered
            .get_field_by_name("nested")
            .expect("set")
            .as_bytes(),
        Some(&::bytes::Bytes::from_static(&[0x00, 0x3c, 0x00, 0xc0]))
    );
    assert!(template.uses_vector() && template.uses(FieldGenerator::VectorF16));
    assert!(template.uses(FieldGenerator::VectorBf16) && template.uses(FieldGenerator::Vector));
}

#[test]
fn batches_by_column_give_every_id_and_vector_in_order_and_the_size() {
    let pool = shapes();
    let template = compile(
        &pool,
        "shapes.v1.Shapes",
        json!({
            "ids": "{{ids}}",
            "keys": "{{ids}}",
            "floats": "{{vectors}}",
            "doubles": "{{vectors}}",
            "rows": "{{batch_size}}",
            "name": "{{batch_size}}",
            "blob": "{{vectors}}",
            "nested": "{{vectors_f16}}",
            "blobs": ["{{vectors_bf16}}"],
            "inner": {"floats": "{{vectors}}", "blob": "{{vectors}}"},
        }),
    );
    let points = points();
    let fill = fill(&points);
    let all: [&[f32]; 3] = [&A, &B, &C];
    let flat: Vec<f32> = all.concat();
    let inner = built(
        &pool,
        "shapes.v1.Inner",
        &[
            (
                "floats",
                Value::List(flat.iter().map(|&x| Value::F32(x)).collect()),
            ),
            ("blob", bytes(f32_le(&all))),
        ],
    );
    let expected = built(
        &pool,
        "shapes.v1.Shapes",
        &[
            ("ids", Value::List([7, 8, 9].map(Value::I64).to_vec())),
            (
                "keys",
                Value::List(["7", "8", "9"].map(|s| Value::String(s.into())).to_vec()),
            ),
            (
                "floats",
                Value::List(flat.iter().map(|&x| Value::F32(x)).collect()),
            ),
            (
                "doubles",
                Value::List(flat.iter().map(|&x| Value::F64(x.into())).collect()),
            ),
            ("rows", Value::U32(3)),
            ("name", Value::String("3".into())),
            ("blob", bytes(f32_le(&all))),
            ("nested", bytes(f16_le(&all))),
            ("blobs", Value::List(vec![bytes(bf16_le(&all))])),
            ("inner", Value::Message(inner)),
        ],
    );
    assert_renders(&template, &fill, &expected);
    for generator in [
        FieldGenerator::Ids,
        FieldGenerator::Vectors,
        FieldGenerator::BatchSize,
        FieldGenerator::VectorsF16,
        FieldGenerator::VectorsBf16,
    ] {
        assert!(template.uses(generator), "{generator:?}");
    }
    assert!(!template.uses(FieldGenerator::Id) && !template.uses(FieldGenerator::Vector));
}

#[test]
fn a_message_encoded_into_bytes_is_its_own_encoding_templated() {
    let pool = shapes();
    let template = compile(
        &pool,
        "shapes.v1.Shapes",
        json!({
            "name": "fixed",
            "nested": {
                "@encode": "shapes.v1.Inner",
                "tag": "$0",
                "blobs": ["{{vector}}"],
                "rows": "{{k}}",
            },
            // One element per point (it mentions {{id}}), each its own encoding.
            "nesteds": [{"@encode": "shapes.v1.Inner", "tag": "p{{id}}", "floats": "{{vector}}"}],
            "inners": [{"tag": "literal", "blob": {"@encode": "shapes.v1.Inner", "rows": 5}}],
        }),
    );
    let points = points();
    let fill = fill(&points[..2]);
    let inner = |fields: &[(&str, Value)]| built(&pool, "shapes.v1.Inner", fields);
    let nested = inner(&[
        ("tag", Value::String("$0".into())),
        ("blobs", Value::List(vec![bytes(f32_le(&[&A]))])),
        ("rows", Value::U32(10)),
    ]);
    let per_point = |id: u64, v: &[f32]| {
        bytes(
            inner(&[
                ("tag", Value::String(format!("p{id}"))),
                (
                    "floats",
                    Value::List(v.iter().map(|&x| Value::F32(x)).collect()),
                ),
            ])
            .encode_to_vec(),
        )
    };
    let literal = inner(&[
        ("tag", Value::String("literal".into())),
        (
            "blob",
            bytes(inner(&[("rows", Value::U32(5))]).encode_to_vec()),
        ),
    ]);
    let expected = built(
        &pool,
        "shapes.v1.Shapes",
        &[
            ("name", Value::String("fixed".into())),
            ("nested", bytes(nested.encode_to_vec())),
            (
                "nesteds",
                Value::List(vec![per_point(7, &A), per_point(8, &B)]),
            ),
            ("inners", Value::List(vec![Value::Message(literal)])),
        ],
    );
    assert_renders(&template, &fill, &expected);
}

/// The hot path (fixed fields encoded once, the varying ones written straight to the wire,
/// vectors appended as packed bytes) gives every request its own message with the new
/// generators too: other points, users, batch sizes, a k other than the first request's,
/// zeros and empty texts (left out as protobuf leaves out defaults, but kept as elements of a
/// list and in a oneof), fields of every integer encoding, and the fields it leaves to
/// prost-reflect (maps, lists of numbers).
#[test]
fn the_hot_path_encodes_what_render_builds_with_every_new_generator() {
    let pool = shapes();
    let template = compile(
        &pool,
        "shapes.v1.Shapes",
        json!({
            "name": "{\"topk\": {{k}}}",
            "blob": "{{vector}}",
            "weight": "{{k}}",
            "rows": "{{batch_size}}",
            "count": "{{user}}",
            "ids": "{{ids}}",
            "keys": ["{{stamp}}", "x{{id}}", "{{id}}", "fixed"],
            "doubles": "{{vectors}}",
            "mode": "MODE_FAST",
            "delta": "{{iteration}}",
            "word": "{{user}}",
            "when": "{{batch_size}}",
            "hashes": ["{{id}}", 5],
            "chosen": "{{stamp}}",
            "inner": {"tag": "u{{user}}", "blob": "{{vector_bf16}}", "floats": "{{vectors}}", "rows": "{{k}}"},
            "inners": [{"tag": "{{id}}", "blobs": ["{{vector}}"], "rows": "{{iteration}}"}],
            "nested": {"@encode": "shapes.v1.Inner", "blobs": ["{{vector_f16}}"], "tag": "{{k}}"},
            "nesteds": [{"@encode": "shapes.v1.Inner", "tag": "{{stamp}}"}, {"@encode": "shapes.v1.Inner", "rows": 3}],
            "params": {"ef": "{{k}}", "at": "{{iteration}}", "stamp": "{{stamp}}"},
        }),
    );
    let zero = [Point {
        id: 0,
        vector: &[],
        text: "",
    }];
    let points = points();
    let descriptor = message(&pool, "shapes.v1.Shapes");
    let decode = |b: &[u8]| DynamicMessage::decode(descriptor.clone(), b).expect("decodes");
    for (batch, k, user, stamp) in [
        (&points[..1], 10, 1, "s1"),
        (&points[..], 10, 2, ""),
        (&points[..2], 4, 3, "s2"),
        (&points[..], 10, 0, ""),
        (&zero[..], 10, 0, ""),
        (&points[..0], 10, 5, "s3"),
    ] {
        let fill = Fill {
            points: batch,
            user,
            iteration: user * 7,
            k,
            stamp,
            pad: 0,
        };
        let rendered = template.render(&fill).encode_to_vec();
        assert_eq!(
            decode(&template.encode(&fill)),
            decode(&rendered),
            "{} points, k {k}, user {user}, stamp {stamp:?}",
            batch.len()
        );
    }
}

/// The Milvus shapes the issue names: a search's query vector in an encoded
/// PlaceholderGroup, its top k as a string and inside a JSON string; an insert by columns.
#[test]
fn milvus_search_and_insert_render_as_milvus_wants_them() {
    let pool = milvus();
    let search = compile(
        &pool,
        "milvus.proto.milvus.SearchRequest",
        json!({
            "collection_name": "docs",
            "dsl": "",
            "nq": 1,
            "placeholder_group": {"@encode": "milvus.proto.common.PlaceholderGroup",
                "placeholders": [{"tag": "$0", "type": "FloatVector", "values": ["{{vector}}"]}]},
            "search_params": [
                {"key": "anns_field", "value": "vector"},
                {"key": "topk", "value": "{{k}}"},
                {"key": "params", "value": "{\"ef\": {{k}}}"},
            ],
        }),
    );
    let points = points();
    let fill = fill(&points[..1]);
    let placeholder = built(
        &pool,
        "milvus.proto.common.PlaceholderValue",
        &[
            ("tag", Value::String("$0".into())),
            ("type", Value::EnumNumber(101)),
            ("values", Value::List(vec![bytes(f32_le(&[&A]))])),
        ],
    );
    let group = built(
        &pool,
        "milvus.proto.common.PlaceholderGroup",
        &[(
            "placeholders",
            Value::List(vec![Value::Message(placeholder)]),
        )],
    );
    let pair = |k: &str, v: &str| {
        Value::Message(built(
            &pool,
            "milvus.proto.common.KeyValuePair",
            &[
                ("key", Value::String(k.into())),
                ("value", Value::String(v.into())),
            ],
        ))
    };
    let expected = built(
        &pool,
        "milvus.proto.milvus.SearchRequest",
        &[
            ("collection_name", Value::String("docs".into())),
            ("nq", Value::I64(1)),
            ("placeholder_group", bytes(group.encode_to_vec())),
            (
                "search_params",
                Value::List(vec![
                    pair("anns_field", "vector"),
                    pair("topk", "10"),
                    pair("params", r#"{"ef": 10}"#),
                ]),
            ),
        ],
    );
    assert_renders(&search, &fill, &expected);

    let insert = compile(
        &pool,
        "milvus.proto.milvus.InsertRequest",
        json!({
            "collection_name": "docs",
            "fields_data": [
                {"field_name": "id", "type": "Int64", "scalars": {"long_data": {"data": "{{ids}}"}}},
                {"field_name": "vector", "type": "FloatVector",
                 "vectors": {"dim": 3, "float_vector": {"data": "{{vectors}}"}}},
            ],
            "num_rows": "{{batch_size}}",
        }),
    );
    assert!(insert.uses(FieldGenerator::Ids) && insert.uses_vector());
    let fill = super::Fill {
        points: &points,
        ..fill
    };
    let column = |name: &str, kind: i32, field: &str, value: DynamicMessage| {
        Value::Message(built(
            &pool,
            "milvus.proto.schema.FieldData",
            &[
                ("field_name", Value::String(name.into())),
                ("type", Value::EnumNumber(kind)),
                (field, Value::Message(value)),
            ],
        ))
    };
    let ids = built(
        &pool,
        "milvus.proto.schema.LongArray",
        &[("data", Value::List([7, 8, 9].map(Value::I64).to_vec()))],
    );
    let scalars = built(
        &pool,
        "milvus.proto.schema.ScalarField",
        &[("long_data", Value::Message(ids))],
    );
    let floats = built(
        &pool,
        "milvus.proto.schema.FloatArray",
        &[(
            "data",
            Value::List([A, B, C].concat().into_iter().map(Value::F32).collect()),
        )],
    );
    let vectors = built(
        &pool,
        "milvus.proto.schema.VectorField",
        &[
            ("dim", Value::I64(3)),
            ("float_vector", Value::Message(floats)),
        ],
    );
    let expected = built(
        &pool,
        "milvus.proto.milvus.InsertRequest",
        &[
            ("collection_name", Value::String("docs".into())),
            (
                "fields_data",
                Value::List(vec![
                    column("id", 5, "scalars", scalars),
                    column("vector", 101, "vectors", vectors),
                ]),
            ),
            ("num_rows", Value::U32(3)),
        ],
    );
    assert_renders(&insert, &fill, &expected);
}

#[test]
fn generators_where_they_cannot_go_are_refused_naming_the_field() {
    let pool = shapes();
    for (template, mentions) in [
        (
            json!({"flag": "{{k}}"}),
            "`flag`: {{k}} needs an integer, float, double or string field; this one is bool",
        ),
        (
            json!({"mode": "{{id}}"}),
            "`mode`: {{id}} needs an integer, float, double or string field; this one is enum shapes.v1.Mode",
        ),
        (
            json!({"inner": "{{batch_size}}"}),
            "`inner`: {{batch_size}} needs an integer, float, double or string field; this one is message shapes.v1.Inner",
        ),
        (
            json!({"blob": "{{user}}"}),
            "`blob`: {{user}} needs an integer, float, double or string field; this one is bytes",
        ),
        (
            json!({"name": "q={{vector}}"}),
            "`name`: {{vector}} cannot be inside a longer string",
        ),
        (
            json!({"params": {"q": "{{text}} and more"}}),
            "`params[\"q\"]`: {{text}} cannot be inside a longer string",
        ),
        (
            json!({"blob": "{{pad}}{{pad}}"}),
            "`blob`: {{pad}} cannot be inside a longer string",
        ),
        (
            json!({"name": "p: {{payload}}"}),
            "`name`: {{payload}} cannot be inside a longer string",
        ),
        (
            json!({"inner": {"tag": "{{ids}},"}}),
            "`inner.tag`: {{ids}} cannot be inside a longer string",
        ),
        (
            json!({"count": "1{{k}}"}),
            "`count`: text with generators inside it needs a string or bytes field; this one is int64",
        ),
        (
            json!({"name": "{{vector_f16}}"}),
            "`name`: {{vector_f16}} needs a bytes field; this one is string",
        ),
        (
            json!({"floats": "{{vector_bf16}}"}),
            "`floats`: {{vector_bf16}} needs a bytes field; this one is repeated float",
        ),
        (
            json!({"name": "{{vector}}"}),
            "`name`: {{vector}} needs a repeated float or double field, or a bytes field; this one is string",
        ),
        (
            json!({"ids": "{{vectors}}"}),
            "`ids`: {{vectors}} needs a repeated float or double field, or a bytes field; this one is repeated int64",
        ),
        (
            json!({"blobs": "{{vector}}"}),
            "`blobs`: {{vector}} in a repeated bytes field is one element: write [\"{{vector}}\"]",
        ),
        (
            json!({"doubles": "{{ids}}"}),
            "`doubles`: {{ids}} needs a repeated integer or string field; this one is repeated double",
        ),
        (
            json!({"count": "{{ids}}"}),
            "`count`: {{ids}} needs a repeated integer or string field; this one is int64",
        ),
        (
            json!({"ids": "{{k}}"}),
            "`ids`: a repeated field: expected a list ({{k}} is one value",
        ),
        (
            json!({"rows": "{{stamp}}"}),
            "`rows`: {{stamp}} needs a string field; this one is uint32",
        ),
        (
            json!({"name": "{{k}"}),
            "`name`: \"{{k}\": `{{` without its `}}`",
        ),
        (
            json!({"nested": {"@encode": "shapes.v1.Nope"}}),
            "`nested`: \"@encode\": no message type shapes.v1.Nope in the descriptors",
        ),
        (
            json!({"nested": {"@encode": 3}}),
            "`nested`: \"@encode\" names a message type",
        ),
        (
            json!({"name": {"@encode": "shapes.v1.Inner"}}),
            "`name`: \"@encode\" needs a bytes field (it writes the message's encoding); this one is string",
        ),
        (
            json!({"inner": {"@encode": "shapes.v1.Inner"}}),
            "`inner`: \"@encode\" needs a bytes field (it writes the message's encoding); this one is message shapes.v1.Inner",
        ),
        (
            json!({"nested": {"@encode": "shapes.v1.Inner", "tg": "x"}}),
            "`nested.tg`: no such field in message shapes.v1.Inner",
        ),
        (
            json!({"nesteds": [{"@encode": "shapes.v1.Inner", "floats": "{{vector_f16}}"}]}),
            "`nesteds[0].floats`: {{vector_f16}} needs a bytes field",
        ),
        (
            json!({"blob": {"x": 1}}),
            "`blob`: expected bytes (a string, or an object whose \"@encode\" names a message type)",
        ),
    ] {
        let e = Template::compile(&template, &message(&pool, "shapes.v1.Shapes"))
            .expect_err(&template.to_string())
            .to_string();
        assert!(
            e.starts_with("template field `") && e.contains(mentions),
            "{template}: {e}"
        );
    }
}

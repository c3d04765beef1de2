//! A target's templates checked as a whole ([`Templates`]): each method resolved in the
//! descriptors, its request template compiled against the message, its answer check and ids
//! path read; what the hot path renders every request from.

use std::collections::BTreeMap;
use std::time::Duration;

use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor, MethodDescriptor};
use serde::Deserialize;
use serde_json::Value as Json;
use tonic::Code;
use tonic::transport::Channel;
use vecrig::client::{Metadata, request_with};

use super::check::{AnswerCheck, CheckSpec};
use super::error::DynamicError;
use super::ids::IdsPath;
use super::target_spec::{CallSpec, MethodSpec, TargetSpec, request_json, substitute};
use super::template::{FieldGenerator, Template};
use super::truth::Metric;

/// One checked method: its HTTP/2 path, template and descriptor.
#[derive(Debug, Clone)]
pub struct TemplatedMethod {
    /// `/package.Service/Method`, parsed once (tonic's connections take it per request).
    pub path: http::uri::PathAndQuery,
    /// The request template.
    pub template: Template,
    /// The method's descriptor.
    pub descriptor: MethodDescriptor,
}

impl TemplatedMethod {
    fn compile(
        name: &str,
        request: &Json,
        pool: &DescriptorPool,
        vars: &BTreeMap<String, Json>,
    ) -> Result<Self, DynamicError> {
        let descriptor = super::describe::find_method(pool, name)?;
        let json = substitute(&request_json(name, request)?, vars);
        let template = Template::compile(&json, &descriptor.input()).map_err(|error| {
            DynamicError::Template {
                method: name.to_string(),
                error,
            }
        })?;
        let path = format!(
            "/{}/{}",
            descriptor.parent_service().full_name(),
            descriptor.name()
        );
        let path = path
            .parse()
            .map_err(|e| DynamicError::Spec(format!("{name}: not an HTTP/2 path ({path}): {e}")))?;
        Ok(Self {
            path,
            template,
            descriptor,
        })
    }
}

/// The answer check for a call of `method`: its own, else the target's where the answer has
/// its fields.
fn compile_check(
    method: &TemplatedMethod,
    own: Option<&CheckSpec>,
    target: Option<&CheckSpec>,
) -> Result<Option<AnswerCheck>, DynamicError> {
    let answer = method.descriptor.output();
    let fail =
        |reason: String| DynamicError::Spec(format!("{}: {reason}", method.descriptor.full_name()));
    match (own, target) {
        (Some(own), _) => AnswerCheck::compile(own, &answer).map(Some).map_err(fail),
        (None, Some(target)) => Ok(AnswerCheck::compile(target, &answer).ok()),
        (None, None) => Ok(None),
    }
}

/// One checked setup or teardown call.
#[derive(Debug, Clone)]
pub struct CheckedCall {
    /// The method and its request.
    pub method: TemplatedMethod,
    /// Where its answer says whether it succeeded.
    pub check: Option<AnswerCheck>,
    /// Failures that are not failures here.
    pub tolerate: Vec<String>,
}

impl CheckedCall {
    fn compile(
        spec: &CallSpec,
        pool: &DescriptorPool,
        vars: &BTreeMap<String, Json>,
        target: Option<&CheckSpec>,
    ) -> Result<Self, DynamicError> {
        let method = TemplatedMethod::compile(&spec.method, &spec.request, pool, vars)?;
        let check = compile_check(&method, spec.check.as_ref(), target)?;
        Ok(Self {
            method,
            check,
            tolerate: spec.tolerate.clone(),
        })
    }

    /// Whether a failure with this code name and reason is tolerated.
    fn tolerates(&self, code: &str, reason: &str) -> bool {
        let reason = reason.to_lowercase();
        self.tolerate
            .iter()
            .any(|t| t == code || reason.contains(&t.to_lowercase()))
    }

    /// Makes the call once (off the hot path) with its request rendered for `k`: `Ok` when
    /// it succeeded or failed in a tolerated way, else why not.
    pub async fn make(
        &self,
        phase: &'static str,
        channel: &Channel,
        metadata: &Metadata,
        k: u32,
        deadline: Duration,
    ) -> Result<(), DynamicError> {
        let fail = |reason: String| DynamicError::Call {
            phase,
            method: self.method.descriptor.full_name().to_string(),
            reason,
        };
        let request = self.method.template.render(&super::template::Fill {
            points: &[],
            user: 0,
            iteration: 0,
            k,
            stamp: "",
            pad: 0,
        });
        let mut grpc = tonic::client::Grpc::new(channel.clone());
        grpc.ready()
            .await
            .map_err(|e| fail(format!("UNAVAILABLE: {e}")))?;
        let path = self.method.path.clone();
        let request = request_with(
            bytes::Bytes::from(prost::Message::encode_to_vec(&request)),
            deadline,
            metadata,
        );
        match grpc.unary(request, path, super::codec::BytesCodec).await {
            Ok(answer) => {
                let Some(check) = &self.check else {
                    return Ok(());
                };
                match check.verdict(answer.get_ref()) {
                    Ok(()) => Ok(()),
                    Err(reason) if self.tolerates(super::check::ANSWER_ERROR, &reason) => Ok(()),
                    Err(reason) => Err(fail(format!("the answer says it failed: {reason}"))),
                }
            }
            Err(status) => {
                let code = vecrig::validation::report::code_name(status.code());
                if self.tolerates(code, status.message()) {
                    Ok(())
                } else {
                    Err(fail(format!("{code}: {}", status.message())))
                }
            }
        }
    }
}

/// A templated target, checked against its descriptors.
#[derive(Debug)]
pub struct Templates {
    /// The search method.
    pub search: TemplatedMethod,
    /// Where the ids are in its answer.
    pub ids: IdsPath,
    /// Searches by text, on the search's method.
    pub text_search: Option<TemplatedMethod>,
    /// Exact searches, on the search's method.
    pub exact_search: Option<TemplatedMethod>,
    /// The write method.
    pub write: Option<TemplatedMethod>,
    /// Vector width.
    pub dimensions: usize,
    /// The target's ranking.
    pub metric: Metric,
    /// First id ingest writes.
    pub first_id: u64,
    /// Where a search's answer says whether it succeeded.
    pub search_check: Option<AnswerCheck>,
    /// Where a write's answer says whether it succeeded.
    pub write_check: Option<AnswerCheck>,
    /// Calls made once before the probes.
    pub setup: Vec<CheckedCall>,
    /// Calls made once after the run.
    pub teardown: Vec<CheckedCall>,
}

/// A run's templated target shares one `Templates`: equal when the same.
impl PartialEq for Templates {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self, other)
    }
}

impl Templates {
    /// Checks `spec` against `pool`: methods, templates, the ids path.
    pub fn compile(spec: &TargetSpec, pool: &DescriptorPool) -> Result<Self, DynamicError> {
        if spec.dimensions == 0 {
            return Err(DynamicError::Spec("dimensions must be at least 1".into()));
        }
        if spec.protoset.is_some() && !spec.protos.is_empty() {
            return Err(DynamicError::Spec(
                "protos and protoset both given: the descriptors come from one or the other".into(),
            ));
        }
        let vars = spec.vars()?;
        let compile = |m: &MethodSpec| TemplatedMethod::compile(&m.method, &m.request, pool, &vars);
        let search = compile(&spec.search)?;
        let path = spec.search.ids.as_deref().ok_or_else(|| {
            DynamicError::Spec(format!(
                "search needs `ids`: where the neighbours' ids are in a {} (e.g. \"result[].id\")",
                search.descriptor.output().full_name()
            ))
        })?;
        let ids = IdsPath::compile(path, &search.descriptor.output()).map_err(|error| {
            DynamicError::Ids {
                method: spec.search.method.clone(),
                error,
            }
        })?;
        if !search.template.uses_vector() && !search.template.uses(FieldGenerator::Text) {
            return Err(DynamicError::Spec(format!(
                "the {} template uses neither {{{{vector}}}} nor {{{{text}}}}: every search would be the same",
                spec.search.method
            )));
        }
        // Another search is the same method with another request: its answers are read as
        // the search's, and the wire sends both on one path.
        let same_method = |other: &Option<MethodSpec>, name: &str, needs: FieldGenerator| {
            let Some(other) = other else {
                return Ok(None);
            };
            let method = compile(other)?;
            if method.path != search.path {
                return Err(DynamicError::Spec(format!(
                    "{name} calls {}: it must be the search's method, {}",
                    other.method, spec.search.method
                )));
            }
            let uses = match needs {
                FieldGenerator::Text => method.template.uses(needs),
                _ => method.template.uses_vector(),
            };
            if !uses {
                return Err(DynamicError::Spec(format!(
                    "the {name} template does not use {{{{{}}}}}",
                    if needs == FieldGenerator::Text {
                        "text"
                    } else {
                        "vector"
                    }
                )));
            }
            Ok(Some(method))
        };
        let text_search = same_method(&spec.text_search, "text_search", FieldGenerator::Text)?;
        let exact_search = same_method(&spec.exact_search, "exact_search", FieldGenerator::Vector)?;
        let write = spec.write.as_ref().map(compile).transpose()?;
        if let Some(write) = &write
            && !write.template.uses(FieldGenerator::Id)
            && !write.template.uses(FieldGenerator::Ids)
            && !write.template.uses(FieldGenerator::Uuid)
        {
            return Err(DynamicError::Spec(format!(
                "the write template ({}) does not use {{{{id}}}} (or {{{{ids}}}}): the loadgen could not tell which points the target holds",
                write.descriptor.full_name()
            )));
        }
        let target_check = spec.check.as_ref();
        let search_check = compile_check(&search, spec.search.check.as_ref(), target_check)?;
        let write_check = match (&write, &spec.write) {
            (Some(method), Some(spec)) => compile_check(method, spec.check.as_ref(), target_check)?,
            _ => None,
        };
        let calls = |specs: &[CallSpec]| {
            specs
                .iter()
                .map(|c| CheckedCall::compile(c, pool, &vars, target_check))
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(Self {
            search,
            ids,
            text_search,
            exact_search,
            write,
            dimensions: spec.dimensions,
            metric: spec.metric,
            first_id: spec.first_id,
            search_check,
            write_check,
            setup: calls(&spec.setup)?,
            teardown: calls(&spec.teardown)?,
        })
    }

    /// The built-in set, [`VECRIG_V1`], checked against vecrig's own descriptors (compiled
    /// into the binary): what every request to `vecrig-server` is rendered from. Compiled
    /// once per process.
    pub fn vecrig_v1() -> std::sync::Arc<Self> {
        static BUILTIN: std::sync::LazyLock<std::sync::Arc<Templates>> =
            std::sync::LazyLock::new(|| {
                let pool = DescriptorPool::decode(vecrig::proto::FILE_DESCRIPTOR_SET).expect(
                    "the descriptors compiled into the binary decode (build.rs wrote them)",
                );
                let mut set: toml::Table = toml::from_str(super::target_spec::VECRIG_V1)
                    .expect("the built-in template set parses");
                // The width is the server's, told by its Stats; the templates do not need it.
                set.insert("dimensions".into(), toml::Value::Integer(1));
                let spec = TargetSpec::deserialize(set).expect("the built-in set is a [target]");
                std::sync::Arc::new(
                    Templates::compile(&spec, &pool)
                        .expect("the built-in template set fits vecrig's own messages"),
                )
            });
        std::sync::Arc::clone(&BUILTIN)
    }

    /// The neighbours' ids in an encoded answer of the search method (`None`: it does not
    /// decode).
    pub fn ids_in(&self, body: &[u8]) -> Option<Vec<u64>> {
        let answer = DynamicMessage::decode(self.search.descriptor.output(), body).ok()?;
        Some(self.ids.read(&answer))
    }

    /// The answer check of a write's method (`write`) or a search's.
    pub fn check_for(&self, write: bool) -> Option<&AnswerCheck> {
        if write {
            self.write_check.as_ref()
        } else {
            self.search_check.as_ref()
        }
    }

    /// The search's answer type.
    pub fn answer(&self) -> MessageDescriptor {
        self.search.descriptor.output()
    }
}

/// Sends `request` to `method` once over `channel` (off the hot path) and returns its answer,
/// or the target's refusal as an error: a template the target does not accept is found here,
/// before the load. Overload answers (`RESOURCE_EXHAUSTED`, `UNAVAILABLE`) are not refusals.
pub async fn probe(
    channel: &Channel,
    metadata: &Metadata,
    method: &TemplatedMethod,
    request: DynamicMessage,
) -> Result<Option<DynamicMessage>, DynamicError> {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    let refused = |code: Code, message: String| DynamicError::Refused {
        method: method.descriptor.full_name().to_string(),
        code,
        message,
    };
    grpc.ready()
        .await
        .map_err(|e| refused(Code::Unavailable, e.to_string()))?;
    let path = method.path.clone();
    let codec = super::codec::DynamicCodec::new(method.descriptor.output());
    let request = request_with(request, Duration::from_secs(10), metadata);
    match grpc.unary(request, path, codec).await {
        Ok(answer) => Ok(Some(answer.into_inner())),
        Err(s) if matches!(s.code(), Code::ResourceExhausted | Code::Unavailable) => Ok(None),
        Err(s) => Err(refused(s.code(), s.message().to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dynamic::template::{Fill, Point};

    fn pool() -> DescriptorPool {
        let set = protox::compile(
            ["vecrig/v1/vector_index.proto"],
            [concat!(env!("CARGO_MANIFEST_DIR"), "/../proto")],
        )
        .expect("our proto compiles");
        DescriptorPool::from_file_descriptor_set(set).expect("pool")
    }

    fn spec(search: &str, ids: &str, write: Option<&str>) -> TargetSpec {
        TargetSpec {
            protos: Vec::new(),
            proto_path: Vec::new(),
            protoset: None,
            dimensions: 4,
            metric: Metric::Cosine,
            first_id: 0,
            search: MethodSpec {
                method: "vecrig.v1.VectorIndex/Search".into(),
                request: Json::String(search.into()),
                ids: Some(ids.into()),
                check: None,
            },
            text_search: None,
            exact_search: None,
            write: write.map(|w| MethodSpec {
                method: "vecrig.v1.VectorIndex/Upsert".into(),
                request: Json::String(w.into()),
                ids: None,
                check: None,
            }),
            check: None,
            setup: Vec::new(),
            teardown: Vec::new(),
            collection: None,
            index: None,
            vars: BTreeMap::new(),
            metric_names: BTreeMap::new(),
        }
    }

    const SEARCH: &str = r#"{"vector": {"values": "{{vector}}"}, "k": "{{k}}"}"#;
    const WRITE: &str = r#"{"points": [{"id": "{{id}}", "vector": {"values": "{{vector}}"}, "payload": {"note": "{{payload}}"}}], "wait": true}"#;

    /// The fields that are the same in every request are encoded once: later requests, with
    /// other vectors, ids and users, and one with another k, still decode to the message
    /// `render` builds, for a search (fixed fields and an appended vector only) and for a
    /// write (fixed, varying and per-point fields).
    #[test]
    fn fixed_fields_encoded_once_still_give_each_request_its_own_message() {
        use prost::Message;
        let search =
            r#"{"vector": {"values": "{{vector}}"}, "k": "{{k}}", "ef": 64, "with_payload": true}"#;
        let templates =
            Templates::compile(&spec(search, "hits[].id", Some(WRITE)), &pool()).expect("fits");
        let write = templates.write.as_ref().expect("write");
        for (user, k, first) in [(1, 10, 0.5f32), (2, 10, -3.0), (3, 4, 7.0), (4, 10, 1.0)] {
            let vector = [first, 1.0, 2.0, 3.0];
            let points = [user, user + 100].map(|id| Point {
                id,
                vector: &vector,
                text: "",
            });
            let fill = Fill {
                points: &points[..1],
                user,
                iteration: user * 7,
                k,
                stamp: "",
                pad: 0,
            };
            let search = &templates.search.template;
            let encoded = search.encode(&fill);
            let request =
                vecrig::proto::SearchRequest::decode(encoded.as_slice()).expect("decodes");
            let rendered = search.render(&fill).encode_to_vec();
            let expected =
                vecrig::proto::SearchRequest::decode(rendered.as_slice()).expect("decodes");
            assert_eq!(request, expected, "search of user {user}, k {k}");
            assert_eq!((request.k, request.ef, request.with_payload), (k, 64, true));

            let fill = Fill {
                points: &points,
                ..fill
            };
            let encoded = write.template.encode(&fill);
            let upsert = vecrig::proto::UpsertRequest::decode(encoded.as_slice()).expect("decodes");
            let rendered = write.template.render(&fill).encode_to_vec();
            let expected =
                vecrig::proto::UpsertRequest::decode(rendered.as_slice()).expect("decodes");
            assert_eq!(upsert, expected, "write of user {user}");
            assert!(upsert.wait);
            let ids: Vec<u64> = upsert.points.iter().map(|p| p.id).collect();
            assert_eq!(ids, [user, user + 100]);
        }
    }

    #[test]
    fn a_template_renders_the_message_a_native_request_encodes_to() {
        use prost::Message;
        let templates =
            Templates::compile(&spec(SEARCH, "hits[].id", Some(WRITE)), &pool()).expect("fits");
        assert_eq!(templates.search.path, "/vecrig.v1.VectorIndex/Search");
        let query = [0.5f32, -1.0, 0.25, 2.0];
        let fill = Fill {
            points: &[Point {
                id: 9,
                vector: &query,
                text: "",
            }],
            user: 3,
            iteration: 4,
            k: 7,
            stamp: "",
            pad: 0,
        };
        let rendered = templates.search.template.render(&fill).encode_to_vec();
        let native = vecrig::proto::SearchRequest {
            query: Some(vecrig::proto::search_request::Query::Vector(
                vecrig::proto::Vector {
                    values: query.to_vec(),
                },
            )),
            k: 7,
            ..Default::default()
        };
        assert_eq!(
            vecrig::proto::SearchRequest::decode(rendered.as_slice()).expect("decodes"),
            native
        );
        // The hot path's encoding (the vector appended as packed bytes, inside its oneof's
        // message) decodes to the same request.
        let encoded = templates.search.template.encode(&fill);
        assert_eq!(
            vecrig::proto::SearchRequest::decode(encoded.as_slice()).expect("decodes"),
            native
        );
        // Its gRPC frame: a flag byte (uncompressed), the length, the same message.
        let frame = templates.search.template.frame(&fill);
        assert_eq!(frame[0], 0);
        let length = u32::from_be_bytes([frame[1], frame[2], frame[3], frame[4]]) as usize;
        assert_eq!((length, &frame[5..]), (encoded.len(), encoded.as_slice()));
        let points = [
            Point {
                id: 1,
                vector: &query,
                text: "a",
            },
            Point {
                id: 2,
                vector: &query,
                text: "b",
            },
        ];
        let write = templates.write.as_ref().expect("write");
        let fill = Fill {
            points: &points,
            ..fill
        };
        let upsert = vecrig::proto::UpsertRequest::decode(
            write.template.render(&fill).encode_to_vec().as_slice(),
        )
        .expect("decodes");
        assert_eq!(upsert.points.len(), 2, "one element per point");
        assert_eq!(upsert.points[1].id, 2);
        assert!(upsert.wait);
        assert_eq!(upsert.points[0].payload["note"], r#"{"id":1,"user":3}"#);
        let encoded = write.template.encode(&fill);
        assert_eq!(
            vecrig::proto::UpsertRequest::decode(encoded.as_slice()).expect("decodes"),
            upsert,
            "vectors in a list are rendered, not appended"
        );
        // The ids path reads a native answer.
        let answer = vecrig::proto::SearchResponse {
            hits: vec![
                vecrig::proto::Hit {
                    id: 5,
                    ..Default::default()
                },
                vecrig::proto::Hit {
                    id: 6,
                    ..Default::default()
                },
            ],
        };
        assert_eq!(templates.ids_in(&answer.encode_to_vec()), Some(vec![5, 6]));
    }

    #[test]
    fn templates_that_do_not_fit_are_refused_naming_the_field() {
        let pool = pool();
        for (search, ids, write, mentions) in [
            (
                r#"{"vectr": {"values": "{{vector}}"}}"#,
                "hits[].id",
                None,
                "`vectr`: no such field in message vecrig.v1.SearchRequest",
            ),
            (
                r#"{"vector": {"values": "{{vector}}"}, "k": "ten"}"#,
                "hits[].id",
                None,
                "`k`: expected uint32",
            ),
            (
                r#"{"vector": {"values": "{{vector}}"}, "k": -1}"#,
                "hits[].id",
                None,
                "`k`: -1 is out of range",
            ),
            (
                r#"{"text": "{{vector}}"}"#,
                "hits[].id",
                None,
                "`text`: {{vector}} needs a repeated float",
            ),
            (
                r#"{"vector": {"values": "{{vectr}}"}}"#,
                "hits[].id",
                None,
                "unknown generator {{vectr}}",
            ),
            (
                SEARCH,
                "hits.id",
                None,
                "`hits` is repeated: write `hits[]`",
            ),
            (SEARCH, "hits[].idd", None, "no field `idd`"),
            (
                SEARCH,
                "hits[].id",
                Some(r#"{"points": [{"vector": {"values": "{{vector}}"}}]}"#),
                "does not use {{id}}",
            ),
            (
                SEARCH,
                "hits[].id",
                Some(r#"{"points": [{"id": "{{id}}", "payload": {"n": true}}]}"#),
                "`points[].payload[\"n\"]`: expected string, got true",
            ),
        ] {
            let e = Templates::compile(&spec(search, ids, write), &pool)
                .expect_err(search)
                .to_string();
            assert!(e.contains(mentions), "{search} / {ids}: {e}");
        }
        let mut missing = spec(SEARCH, "hits[].id", None);
        missing.search.method = "vecrig.v1.VectorIndex/Find".into();
        let e = Templates::compile(&missing, &pool).expect_err("no such method");
        assert!(e.to_string().contains("no method Find"), "{e}");
    }
}

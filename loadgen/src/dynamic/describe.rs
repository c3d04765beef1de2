//! A target's message descriptors: from its server reflection (`grpc.reflection.v1`, then
//! `v1alpha` for servers that only have the older one), from `.proto` files compiled
//! in-process by protox (as `build.rs` compiles ours: no `protoc` on the machine), or from
//! descriptor sets (a serialized `google.protobuf.FileDescriptorSet`, as `protoc
//! --descriptor_set_out --include_imports` writes and grpcurl and ghz read as `-protoset`):
//! what a service without reflection whose client ships only compiled descriptors offers.
//!
//! Reflection is asked for the file that defines each service, then for every file it imports
//! that the server did not send along (some servers send the whole closure, some one file).

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use prost::Message;
use prost_reflect::prost_types::{FileDescriptorProto, FileDescriptorSet};
use prost_reflect::{DescriptorPool, MethodDescriptor};
use tonic::Code;
use tonic::transport::Channel;
use vecrig::client::{Metadata, request_with};

/// Where the descriptors come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The target's server reflection.
    Reflection,
    /// `.proto` files, imports resolved under `includes` (and each file's own directory).
    Protos {
        /// The files.
        files: Vec<PathBuf>,
        /// Import paths.
        includes: Vec<PathBuf>,
    },
    /// Descriptor sets (`FileDescriptorSet`), merged.
    DescriptorSets(Vec<PathBuf>),
}

/// Why the descriptors or a method could not be had.
#[derive(Debug, thiserror::Error)]
pub enum DescribeError {
    /// The target has no reflection service, or it failed.
    #[error("server reflection: {0}")]
    Reflection(String),
    /// The `.proto` files did not compile.
    #[error("proto files: {0}")]
    Protos(String),
    /// A descriptor set could not be read, or the sets do not hold every file they need.
    #[error("descriptor set {}: {reason}", file.display())]
    DescriptorSet {
        /// The set (the sets, when they do not fit together).
        file: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The descriptors do not hold the method.
    #[error("method {method}: {reason}")]
    Method {
        /// The method as given.
        method: String,
        /// What is wrong.
        reason: String,
    },
}

/// Splits `package.Service/Method` (or `package.Service.Method`) into service and method.
pub fn split_method(method: &str) -> Result<(&str, &str), DescribeError> {
    let at = method
        .rfind('/')
        .or_else(|| method.rfind('.'))
        .filter(|&at| at > 0 && at + 1 < method.len())
        .ok_or_else(|| DescribeError::Method {
            method: method.to_string(),
            reason: "expected package.Service/Method".into(),
        })?;
    Ok((method[..at].trim_start_matches('/'), &method[at + 1..]))
}

/// The unary method `method` in `pool`.
pub fn find_method(pool: &DescriptorPool, method: &str) -> Result<MethodDescriptor, DescribeError> {
    let (service, name) = split_method(method)?;
    let fail = |reason: String| DescribeError::Method {
        method: method.to_string(),
        reason,
    };
    let Some(found) = pool.get_service_by_name(service) else {
        let services: Vec<String> = pool.services().map(|s| s.full_name().to_string()).collect();
        return Err(fail(format!(
            "no service {service} (the descriptors have: {})",
            services.join(", ")
        )));
    };
    let Some(descriptor) = found.methods().find(|m| m.name() == name) else {
        let methods: Vec<String> = found.methods().map(|m| m.name().to_string()).collect();
        return Err(fail(format!(
            "service {service} has no method {name} (it has: {})",
            methods.join(", ")
        )));
    };
    if descriptor.is_client_streaming() || descriptor.is_server_streaming() {
        return Err(fail(
            "a streaming method: only unary methods are load-tested".into(),
        ));
    }
    Ok(descriptor)
}

/// The descriptors of `services` from `source`; `channel` reaches the target (reflection).
pub async fn describe(
    source: &Source,
    channel: &Channel,
    metadata: &Metadata,
    services: &[&str],
) -> Result<DescriptorPool, DescribeError> {
    let files = match source {
        Source::Protos { files, includes } => return compile(files, includes),
        Source::DescriptorSets(sets) => return read_sets(sets),
        Source::Reflection => match reflect_v1(channel.clone(), metadata, services).await {
            Err(status) if status.code() == Code::Unimplemented => {
                reflect_v1alpha(channel.clone(), metadata, services).await
            }
            other => other,
        }
        .map_err(|s| {
            DescribeError::Reflection(format!(
                "{:?}: {} (without reflection, give the service's .proto files: [target] protos, or --proto; or a descriptor set: [target] protoset)",
                s.code(),
                s.message()
            ))
        })?,
    };
    let mut pool = DescriptorPool::new();
    pool.add_file_descriptor_protos(files)
        .map_err(|e| DescribeError::Reflection(format!("the descriptors it sent: {e}")))?;
    Ok(pool)
}

/// The descriptors of every set, merged: each file once (sets often repeat their common
/// imports), in one pool so that a set may import what another holds.
pub(crate) fn read_sets(sets: &[PathBuf]) -> Result<DescriptorPool, DescribeError> {
    let mut files = Vec::new();
    let mut known = HashSet::new();
    for path in sets {
        let fail = |reason: String| DescribeError::DescriptorSet {
            file: path.clone(),
            reason,
        };
        let bytes = std::fs::read(path).map_err(|e| fail(format!("cannot read it: {e}")))?;
        let set = FileDescriptorSet::decode(bytes.as_slice()).map_err(|e| {
            fail(format!(
                "not a serialized google.protobuf.FileDescriptorSet ({e}); protoc --include_imports --descriptor_set_out=FILE writes one"
            ))
        })?;
        if set.file.is_empty() {
            return Err(fail(
                "holds no files (not a serialized google.protobuf.FileDescriptorSet?)".into(),
            ));
        }
        for file in set.file {
            if known.insert(file.name().to_string()) {
                files.push(file);
            }
        }
    }
    let mut pool = DescriptorPool::new();
    pool.add_file_descriptor_protos(files).map_err(|e| {
        let names: Vec<String> = sets.iter().map(|p| p.display().to_string()).collect();
        DescribeError::DescriptorSet {
            file: names.join(", ").into(),
            reason: format!(
                "its files do not fit together: {e} (a set needs the files it imports: protoc --include_imports)"
            ),
        }
    })?;
    Ok(pool)
}

fn compile(files: &[PathBuf], includes: &[PathBuf]) -> Result<DescriptorPool, DescribeError> {
    let mut paths: Vec<PathBuf> = includes.to_vec();
    for file in files {
        if let Some(dir) = file.parent() {
            let dir = if dir.as_os_str().is_empty() {
                PathBuf::from(".")
            } else {
                dir.to_path_buf()
            };
            if !paths.contains(&dir) {
                paths.push(dir);
            }
        }
    }
    let set = protox::compile(files, &paths).map_err(|e| DescribeError::Protos(e.to_string()))?;
    DescriptorPool::from_file_descriptor_set(set).map_err(|e| DescribeError::Protos(e.to_string()))
}

/// How long each reflection answer may take.
const REFLECTION_DEADLINE: Duration = Duration::from_secs(10);

/// One fetcher per reflection version: the generated types differ, the conversation is the
/// same.
macro_rules! reflect {
    ($name:ident, $pb:path) => {
        async fn $name(
            channel: Channel,
            metadata: &Metadata,
            services: &[&str],
        ) -> Result<Vec<FileDescriptorProto>, tonic::Status> {
            use pb::server_reflection_client::ServerReflectionClient;
            use pb::server_reflection_request::MessageRequest;
            use pb::server_reflection_response::MessageResponse;
            use $pb as pb;
            let mut client = ServerReflectionClient::new(channel);
            let mut files = Vec::new();
            let mut known = HashSet::new();
            let mut asked = HashSet::new();
            let mut pending: Vec<MessageRequest> = services
                .iter()
                .map(|s| MessageRequest::FileContainingSymbol(s.to_string()))
                .collect();
            while let Some(ask) = pending.pop() {
                let request = pb::ServerReflectionRequest {
                    host: String::new(),
                    message_request: Some(ask),
                };
                let stream = tokio_stream::iter([request]);
                let mut answers = client
                    .server_reflection_info(request_with(stream, REFLECTION_DEADLINE, metadata))
                    .await?
                    .into_inner();
                let answer = answers.message().await?.ok_or_else(|| {
                    tonic::Status::unavailable("the reflection stream ended without an answer")
                })?;
                let found = match answer.message_response {
                    Some(MessageResponse::FileDescriptorResponse(found)) => found,
                    Some(MessageResponse::ErrorResponse(e)) => {
                        return Err(tonic::Status::new(
                            Code::from(e.error_code),
                            e.error_message,
                        ));
                    }
                    _ => {
                        return Err(tonic::Status::internal(
                            "reflection answered something other than files",
                        ));
                    }
                };
                for bytes in found.file_descriptor_proto {
                    let file = FileDescriptorProto::decode(bytes.as_slice()).map_err(|e| {
                        tonic::Status::internal(format!(
                            "a file descriptor that does not decode: {e}"
                        ))
                    })?;
                    if !known.insert(file.name().to_string()) {
                        continue;
                    }
                    for import in &file.dependency {
                        if !known.contains(import) && asked.insert(import.clone()) {
                            pending.push(MessageRequest::FileByFilename(import.clone()));
                        }
                    }
                    files.push(file);
                }
            }
            Ok(files)
        }
    };
}

reflect!(reflect_v1, tonic_reflection::pb::v1);
reflect!(reflect_v1alpha, tonic_reflection::pb::v1alpha);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_are_split_and_looked_up_with_named_errors() {
        assert_eq!(
            split_method("a.b.Svc/Do").expect("split"),
            ("a.b.Svc", "Do")
        );
        assert_eq!(split_method("a.Svc.Do").expect("split"), ("a.Svc", "Do"));
        assert!(split_method("Do").is_err());
        let set = protox::compile(
            ["vecrig/v1/vector_index.proto"],
            [concat!(env!("CARGO_MANIFEST_DIR"), "/../proto")],
        )
        .expect("our proto compiles");
        let pool = DescriptorPool::from_file_descriptor_set(set).expect("pool");
        let search = find_method(&pool, "vecrig.v1.VectorIndex/Search").expect("search");
        assert_eq!(search.input().full_name(), "vecrig.v1.SearchRequest");
        let e = find_method(&pool, "vecrig.v1.VectorIndex/Serch").expect_err("typo");
        assert!(e.to_string().contains("no method Serch"), "{e}");
        let e = find_method(&pool, "vecrig.v2.VectorIndex/Search").expect_err("no service");
        assert!(e.to_string().contains("vecrig.v1.VectorIndex"), "{e}");
    }

    /// A descriptor set as `protoc --include_imports --descriptor_set_out` writes it gives the
    /// services it holds; two sets that repeat a file are merged; a file that is not a set,
    /// or a set without its imports, is refused naming the file.
    #[test]
    fn descriptor_sets_are_read_merged_and_refused_naming_the_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let protos = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/protos/milvus");
        let set = protox::compile(["milvus.proto"], [protos]).expect("the shapes compile");
        let whole = dir.path().join("milvus.protoset");
        std::fs::write(&whole, set.encode_to_vec()).expect("written");
        let pool = read_sets(std::slice::from_ref(&whole)).expect("a set");
        let search = find_method(&pool, "milvus.proto.milvus.MilvusService/Search").expect("found");
        assert_eq!(
            search.input().full_name(),
            "milvus.proto.milvus.SearchRequest"
        );
        assert!(
            pool.get_message_by_name("milvus.proto.common.PlaceholderGroup")
                .is_some()
        );

        // Its imports in a set of their own, and the set repeated: merged.
        let (imports, own): (Vec<_>, Vec<_>) = set
            .file
            .iter()
            .cloned()
            .partition(|f| f.name() != "milvus.proto");
        let write = |name: &str, file: Vec<FileDescriptorProto>| {
            let path = dir.path().join(name);
            std::fs::write(&path, FileDescriptorSet { file }.encode_to_vec()).expect("written");
            path
        };
        let own = write("own.protoset", own);
        let imports = write("imports.protoset", imports);
        let pool = read_sets(&[own.clone(), imports, whole]).expect("merged");
        assert!(find_method(&pool, "milvus.proto.milvus.MilvusService/Insert").is_ok());

        let e = read_sets(std::slice::from_ref(&own)).expect_err("imports missing");
        let DescribeError::DescriptorSet { file, reason } = &e else {
            panic!("{e}");
        };
        assert!(file == &own && reason.contains("--include_imports"), "{e}");
        let text = dir.path().join("milvus.proto");
        std::fs::copy(format!("{protos}/milvus.proto"), &text).expect("copied");
        let empty = write("empty.protoset", Vec::new());
        for bad in [text, empty, dir.path().join("missing.protoset")] {
            let e = read_sets(std::slice::from_ref(&bad))
                .expect_err("not a set")
                .to_string();
            assert!(
                e.starts_with(&format!("descriptor set {}: ", bad.display())),
                "{e}"
            );
        }
    }
}

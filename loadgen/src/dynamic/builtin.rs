//! Built-in template sets for vector databases, named by `[target] builtin = "..."`: the
//! methods, requests, answer checks and setup calls a user would otherwise write as a page of
//! templates. What the user's `[target]` gives itself takes precedence, key by key (and
//! `vars` entry by entry), so a set is a starting point, not a cage.
//!
//! Each set names its parameters as `{{name}}` vars (see [`super::TargetSpec::vars`]):
//! `collection`, `index`, `dimensions` and `metric` from `[target]`, the rest from the set's
//! own `vars` defaults.

/// Milvus (2.3 and later, Milvus Lite included), over its own gRPC API,
/// `milvus.proto.milvus.MilvusService`. Milvus has no server reflection: give its descriptors
/// as a descriptor set (`protoset`) or its `.proto` files (`protos`).
///
/// Setup drops the collection (a clean one each run; dropping a missing one is not an error),
/// creates it with an `id` (int64 primary key) and a `vector` field of the run's dimensions,
/// builds the index and loads the collection. Every answer's `status` is checked: Milvus
/// answers most failures with gRPC OK and the error in the body. Searches and writes ask for
/// strong consistency, so a search sees every write acknowledged before it.
pub const MILVUS: &str = r#"
check = { status = "status.code", reason = "status.reason" }

[vars]
collection = "vecrig"
index = "HNSW"
index_params = '{"M": 16, "efConstruction": 200}'
search_params = '{"ef": 64}'

[[setup]]
method = "milvus.proto.milvus.MilvusService/DropCollection"
request = { collection_name = "{{collection}}" }
check = { status = "code", reason = "reason" }
tolerate = ["not exist", "not found"]

[[setup]]
method = "milvus.proto.milvus.MilvusService/CreateCollection"
check = { status = "code", reason = "reason" }
[setup.request]
collection_name = "{{collection}}"
shards_num = 1
consistency_level = "Strong"
[setup.request.schema]
"@encode" = "milvus.proto.schema.CollectionSchema"
name = "{{collection}}"
fields = [
  { fieldID = 100, name = "id", is_primary_key = true, data_type = "Int64" },
  { fieldID = 101, name = "vector", data_type = "FloatVector", type_params = [{ key = "dim", value = "{{dimensions}}" }] },
]

[[setup]]
method = "milvus.proto.milvus.MilvusService/CreateIndex"
check = { status = "code", reason = "reason" }
[setup.request]
collection_name = "{{collection}}"
field_name = "vector"
index_name = "vector"
extra_params = [
  { key = "index_type", value = "{{index}}" },
  { key = "metric_type", value = "{{metric}}" },
  { key = "params", value = "{{index_params}}" },
]

[[setup]]
method = "milvus.proto.milvus.MilvusService/LoadCollection"
request = { collection_name = "{{collection}}" }
check = { status = "code", reason = "reason" }

[search]
method = "milvus.proto.milvus.MilvusService/Search"
ids = "results.ids.int_id.data[]"
[search.request]
collection_name = "{{collection}}"
dsl_type = "BoolExprV1"
nq = 1
consistency_level = "Strong"
search_params = [
  { key = "anns_field", value = "vector" },
  { key = "topk", value = "{{k}}" },
  { key = "metric_type", value = "{{metric}}" },
  { key = "params", value = "{{search_params}}" },
]
[search.request.placeholder_group]
"@encode" = "milvus.proto.common.PlaceholderGroup"
placeholders = [{ tag = "$0", type = "FloatVector", values = ["{{vector}}"] }]

[write]
method = "milvus.proto.milvus.MilvusService/Insert"
[write.request]
collection_name = "{{collection}}"
num_rows = "{{batch_size}}"
fields_data = [
  { field_name = "id", type = "Int64", scalars = { long_data = { data = "{{ids}}" } } },
  { field_name = "vector", type = "FloatVector", vectors = { dim = "{{dimensions}}", float_vector = { data = "{{vectors}}" } } },
]
"#;

/// Qdrant, over its gRPC API (`qdrant.Points`, `qdrant.Collections`; port 6334 by default).
/// Qdrant has server reflection on recent versions; otherwise give a descriptor set made from
/// the `qdrant-client` package or Qdrant's `.proto` files.
///
/// Setup deletes the collection (a clean one each run; deleting a missing one answers
/// `result: false`, not an error) and creates it with one unnamed dense vector of the run's
/// dimensions and distance. Writes wait until applied (`wait = true`) and their `result.status`
/// must say so (Acknowledged or Completed); Qdrant refuses other failures with gRPC codes.
pub const QDRANT: &str = r#"
metric_names = { cosine = "Cosine", l2 = "Euclid", ip = "Dot" }

[vars]
collection = "vecrig"

[[setup]]
method = "qdrant.Collections/Delete"
request = { collection_name = "{{collection}}" }
tolerate = ["NOT_FOUND", "not found", "doesn't exist"]

[[setup]]
method = "qdrant.Collections/Create"
request = { collection_name = "{{collection}}", vectors_config = { params = { size = "{{dimensions}}", distance = "{{metric}}" } } }
check = { status = "result", ok = [1] }

[search]
method = "qdrant.Points/Search"
ids = "result[].id.num"
request = { collection_name = "{{collection}}", vector = "{{vector}}", limit = "{{k}}" }

[write]
method = "qdrant.Points/Upsert"
check = { status = "result.status", ok = [1, 2] }
request = { collection_name = "{{collection}}", wait = true, points = [{ id = { num = "{{id}}" }, vectors = { vector = { data = "{{vector}}" } } }] }
"#;

/// Weaviate, over its gRPC API (`weaviate.v1.Weaviate`, port 50051). Searches send the query
/// as `near_vector.vector_bytes` (little-endian f32) and read each result's UUID
/// (`metadata.id_as_bytes`); writes are `BatchObjects`, one object per point, its id as a
/// UUID (`{{uuid}}`), its vector as bytes, and a batch answer's `errors` must be empty.
///
/// Weaviate creates collections over its REST API only, which this rig does not speak: create
/// the collection (`vectorizer: none`, the run's distance) before the run. There is no setup.
pub const WEAVIATE: &str = r#"
[vars]
collection = "Vecrig"

[search]
method = "weaviate.v1.Weaviate/Search"
ids = "results[].metadata.id_as_bytes"
request = { collection = "{{collection}}", limit = "{{k}}", uses_123_api = true, uses_125_api = true, uses_127_api = true, metadata = { uuid = true }, near_vector = { vector_bytes = "{{vector}}" } }

[write]
method = "weaviate.v1.Weaviate/BatchObjects"
check = { empty = "errors", reason = "errors[].error" }
request = { objects = [{ uuid = "{{uuid}}", collection = "{{collection}}", vector_bytes = "{{vector}}" }] }
"#;

/// The built-in set called `name`, as TOML, if there is one.
pub fn named(name: &str) -> Option<&'static str> {
    match name {
        "vecrig.v1" => Some(super::VECRIG_V1),
        "milvus" => Some(MILVUS),
        "qdrant" => Some(QDRANT),
        "weaviate" => Some(WEAVIATE),
        _ => None,
    }
}

/// The names [`named`] knows.
pub const NAMES: &str = "\"vecrig.v1\", \"milvus\", \"qdrant\", \"weaviate\"";

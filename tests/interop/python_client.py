"""A client written from the proto alone, in another language: every RPC, health, reflection.

Usage: python_client.py PROTO_ROOT HOST:PORT
Needs: pip install grpcio grpcio-tools grpcio-health-checking grpcio-reflection
Generates Python stubs from proto/vecrig/v1/vector_index.proto into a temporary directory,
then exercises the server. Exits non-zero (with the reason) on the first surprise.
"""
import importlib
import sys
import tempfile

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_tools import protoc


def main() -> None:
    proto_root, target = sys.argv[1], sys.argv[2]
    out = tempfile.mkdtemp()
    rc = protoc.main(["protoc", f"-I{proto_root}", f"--python_out={out}",
                      f"--grpc_python_out={out}", "vecrig/v1/vector_index.proto"])
    assert rc == 0, f"protoc failed: {rc}"
    sys.path.insert(0, out)
    pb = importlib.import_module("vecrig.v1.vector_index_pb2")
    rpc = importlib.import_module("vecrig.v1.vector_index_pb2_grpc")

    channel = grpc.insecure_channel(target)
    health = health_pb2_grpc.HealthStub(channel)
    status = health.Check(health_pb2.HealthCheckRequest(service="vecrig.v1.VectorIndex"))
    assert status.status == health_pb2.HealthCheckResponse.SERVING, status

    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    answers = reflection.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    names = [s.name for a in answers for s in a.list_services_response.service]
    assert "vecrig.v1.VectorIndex" in names, names

    index = rpc.VectorIndexStub(channel)
    stats = index.Stats(pb.StatsRequest())
    dims = stats.dimensions
    one_hot = lambda i: [1.0 if j == i else 0.0 for j in range(dims)]
    upserted = index.Upsert(pb.UpsertRequest(points=[
        pb.Point(id=1, vector=pb.Vector(values=one_hot(0)), payload={"lang": "python"}),
        pb.Point(id=2, vector=pb.Vector(values=one_hot(1))),
        pb.Point(id=3, text="interoperable clients speak protobuf", payload={"kind": "text"}),
    ], wait=True))
    assert upserted.upserted == 3 and upserted.sequence > 0, upserted

    hits = index.Search(pb.SearchRequest(vector=pb.Vector(values=one_hot(0)), k=2,
                                         with_payload=True)).hits
    assert hits[0].id == 1 and hits[0].payload["lang"] == "python", hits
    hits = index.Search(pb.SearchRequest(text="clients speak protobuf", k=1, exact=True)).hits
    assert hits[0].id == 3, hits

    point = index.Get(pb.GetRequest(id=1)).point
    assert list(point.vector.values) == one_hot(0), point

    deleted = index.Delete(pb.DeleteRequest(ids=[2, 999]))
    assert deleted.deleted == 1 and deleted.sequence > upserted.sequence, deleted
    try:
        index.Get(pb.GetRequest(id=2))
        raise AssertionError("deleted point still found")
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.NOT_FOUND, e
    try:
        index.Search(pb.SearchRequest(vector=pb.Vector(values=[1.0]), k=1))
        raise AssertionError("bad dimensions accepted")
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e
        assert "vector" in e.details(), e.details()

    stats = index.Stats(pb.StatsRequest())
    assert stats.points == 2 and stats.metric == "cosine", stats
    print("interop: every RPC, health and reflection answered as the contract says")


if __name__ == "__main__":
    main()

"""An exact vector store over gRPC for tests/dynamic_target.rs: numpy brute force (L2),
server reflection and grpc.health.v1 on, listening on 127.0.0.1 (a free port).

Usage: store_server.py PROTO_DIR DIMENSIONS. Prints `listening on 127.0.0.1:PORT` once
serving, then serves until stdin closes (the test holds it open, so the server never
outlives it).
"""

import sys
import tempfile
import threading
from concurrent import futures

import grpc
import numpy as np
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from grpc_tools import protoc


def load_stubs(proto_dir):
    out = tempfile.mkdtemp(prefix="vecrig-store-")
    code = protoc.main(
        ["protoc", f"-I{proto_dir}", f"--python_out={out}", f"--grpc_python_out={out}", "store.proto"]
    )
    if code != 0:
        raise SystemExit(f"protoc failed: {code}")
    sys.path.insert(0, out)
    import store_pb2
    import store_pb2_grpc

    return store_pb2, store_pb2_grpc


class Store:
    def __init__(self, pb, dimensions):
        self.pb = pb
        self.dimensions = dimensions
        self.lock = threading.Lock()
        self.rows = {}  # key -> row
        self.keys = []
        self.matrix = np.zeros((0, dimensions), dtype=np.float32)

    def PutItems(self, request, context):
        vectors = []
        for item in request.items:
            if len(item.embedding) != self.dimensions:
                context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"item {item.key}: embedding has {len(item.embedding)} values, expected {self.dimensions}",
                )
            vectors.append(np.asarray(item.embedding, dtype=np.float32))
        with self.lock:
            new = []
            for item, vector in zip(request.items, vectors):
                row = self.rows.get(item.key)
                if row is None:
                    self.rows[item.key] = len(self.keys) + len(new)
                    new.append((item.key, vector))
                else:
                    self.matrix[row] = vector
            if new:
                self.keys.extend(k for k, _ in new)
                self.matrix = np.vstack([self.matrix, np.stack([v for _, v in new])])
        return self.pb.PutItemsReply(stored=len(request.items))

    def Nearest(self, request, context):
        query = np.asarray(request.query.embedding, dtype=np.float32)
        if query.shape[0] != self.dimensions:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"query has {query.shape[0]} values, expected {self.dimensions}",
            )
        if request.limit <= 0:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "limit must be positive")
        with self.lock:
            matrix, keys = self.matrix, list(self.keys)
        if not keys:
            return self.pb.NearestReply()
        diff = matrix - query
        distances = np.einsum("ij,ij->i", diff, diff)
        limit = min(request.limit, len(keys))
        nearest = np.argsort(distances, kind="stable")[:limit]
        return self.pb.NearestReply(
            result=[self.pb.Match(key=keys[i], distance=float(distances[i])) for i in nearest]
        )


def main():
    proto_dir, dimensions = sys.argv[1], int(sys.argv[2])
    pb, pb_grpc = load_stubs(proto_dir)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    store = Store(pb, dimensions)
    pb_grpc.add_EmbeddingStoreServicer_to_server(store, server)
    health_servicer = health.HealthServicer()
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = (
        pb.DESCRIPTOR.services_by_name["EmbeddingStore"].full_name,
        health.SERVICE_NAME,
        reflection.SERVICE_NAME,
    )
    reflection.enable_server_reflection(names, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"listening on 127.0.0.1:{port}", flush=True)
    # Serve until the test closes our stdin (or dies).
    sys.stdin.read()
    server.stop(grace=1)


if __name__ == "__main__":
    main()

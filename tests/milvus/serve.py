"""Milvus Lite for tests/milvus.rs: a real Milvus gRPC server (milvus.proto.milvus.MilvusService)
on 127.0.0.1 with a port of its own choosing, and the descriptors of its API as a descriptor
set, taken from the installed pymilvus (Milvus has no server reflection, pymilvus ships no
.proto files).

Usage: serve.py DATA_DIR PROTOSET_OUT
Prints `listening on 127.0.0.1:PORT` once serving; serves until stdin closes.
"""

import sys

from google.protobuf import descriptor_pb2
from milvus_lite.adapter.grpc.server import start_server_in_thread
from pymilvus.grpc_gen import milvus_pb2


def descriptor_set() -> bytes:
    """milvus.proto and every file it imports, dependencies first."""
    files = descriptor_pb2.FileDescriptorSet()
    seen = set()

    def add(file):
        if file.name in seen:
            return
        seen.add(file.name)
        for dependency in file.dependencies:
            add(dependency)
        proto = descriptor_pb2.FileDescriptorProto()
        file.CopyToProto(proto)
        files.file.append(proto)

    add(milvus_pb2.DESCRIPTOR)
    return files.SerializeToString()


def main() -> None:
    data_dir, protoset = sys.argv[1], sys.argv[2]
    with open(protoset, "wb") as out:
        out.write(descriptor_set())
    server, db, port = start_server_in_thread(data_dir, host="127.0.0.1", port=0)
    print(f"listening on 127.0.0.1:{port}", flush=True)
    try:
        sys.stdin.read()
    finally:
        server.stop(grace=2)
        db.close()


if __name__ == "__main__":
    main()

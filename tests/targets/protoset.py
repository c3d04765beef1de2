"""Writes the descriptors an official Python client ships as a descriptor set
(google.protobuf.FileDescriptorSet, what `protoc --descriptor_set_out --include_imports`
writes): the way to give the loadgen the API of a service that has no server reflection and
whose client ships no .proto files.

Usage: protoset.py OUT MODULE [MODULE...]
  MODULE: a generated *_pb2 module, e.g. pymilvus.grpc_gen.milvus_pb2,
  qdrant_client.grpc.points_service_pb2
"""

import importlib
import sys

from google.protobuf import descriptor_pb2


def main() -> None:
    out, modules = sys.argv[1], sys.argv[2:]
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

    for module in modules:
        add(importlib.import_module(module).DESCRIPTOR)
    with open(out, "wb") as sink:
        sink.write(files.SerializeToString())


if __name__ == "__main__":
    main()

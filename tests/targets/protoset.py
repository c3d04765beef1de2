"""Writes the descriptors an official Python client ships as a descriptor set
(google.protobuf.FileDescriptorSet, what `protoc --descriptor_set_out --include_imports`
writes): the way to give the loadgen the API of a service that has no server reflection and
whose client ships no .proto files.

Usage: protoset.py OUT MODULE [MODULE...]
  MODULE: a generated *_pb2 module, e.g. pymilvus.grpc_gen.milvus_pb2,
  qdrant_client.grpc.points_service_pb2; a `*` stands for the newest of the versions a client
  ships side by side (weaviate.proto.v1.*.v1.weaviate_pb2)
"""

import importlib
import pkgutil
import re
import sys

from google.protobuf import descriptor_pb2


def newest(module: str) -> str:
    """`module` with its `*` replaced by the newest version its package holds."""
    if "*" not in module:
        return module
    parent, rest = module.split(".*.", 1)
    package = importlib.import_module(parent)
    versions = [m.name for m in pkgutil.iter_modules(package.__path__) if m.ispkg]
    number = lambda name: [int(n) for n in re.findall(r"\d+", name)]
    return f"{parent}.{max(versions, key=number)}.{rest}"


def descriptor_set(roots) -> bytes:
    """The files of `roots` (file descriptors) and every file they import, dependencies first,
    as a serialized FileDescriptorSet."""
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

    for root in roots:
        add(root)
    return files.SerializeToString()


def main() -> None:
    out, modules = sys.argv[1], sys.argv[2:]
    roots = [importlib.import_module(newest(module)).DESCRIPTOR for module in modules]
    with open(out, "wb") as sink:
        sink.write(descriptor_set(roots))


if __name__ == "__main__":
    main()

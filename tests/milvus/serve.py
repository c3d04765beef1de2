"""Milvus Lite for tests/milvus.rs: a real Milvus gRPC server (milvus.proto.milvus.MilvusService)
on 127.0.0.1 with a port of its own choosing, and the descriptors of its API as a descriptor
set, taken from the installed pymilvus (Milvus has no server reflection, pymilvus ships no
.proto files).

Usage: serve.py DATA_DIR PROTOSET_OUT
Prints `listening on 127.0.0.1:PORT` once serving; serves until stdin closes.
"""

import os
import sys

from milvus_lite.adapter.grpc.server import start_server_in_thread
from pymilvus.grpc_gen import milvus_pb2

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "targets"))
from protoset import descriptor_set  # noqa: E402  (tests/targets/protoset.py)


def main() -> None:
    data_dir, protoset = sys.argv[1], sys.argv[2]
    with open(protoset, "wb") as out:
        out.write(descriptor_set([milvus_pb2.DESCRIPTOR]))
    server, db, port = start_server_in_thread(data_dir, host="127.0.0.1", port=0)
    print(f"listening on 127.0.0.1:{port}", flush=True)
    try:
        sys.stdin.read()
    finally:
        server.stop(grace=2)
        db.close()


if __name__ == "__main__":
    main()

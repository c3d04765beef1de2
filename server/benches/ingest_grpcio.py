"""Acknowledged ingestion measured from outside, with a client we did not write (grpcio).

16 writer threads each send batches of 512 Gaussian (unclustered) 128-d points with fresh ids
to a running vecrig-server; every request is built before the clock starts, so the figure is
the server's, not Python's protobuf building. Prints acknowledged points per second over the
whole run. Long runs fill the server's tail (32,768 points) and then measure its indexers.

    pip install grpcio grpcio-tools numpy
    vecrig-server --data-dir /tmp/ingest &      # fresh and empty, default 128-d cosine
    python3 server/benches/ingest_grpcio.py 127.0.0.1:50051 12   # 12 batches per writer

Stubs are generated from proto/ into a temporary directory at start.
"""

import pathlib
import subprocess
import sys
import tempfile
import threading
import time

import grpc
import numpy as np

WRITERS, BATCH, DIMENSIONS = 16, 512, 128


def stubs():
    proto = pathlib.Path(__file__).resolve().parents[2] / "proto"
    out = tempfile.mkdtemp(prefix="vecrig-stubs-")
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{proto}", f"--python_out={out}",
         f"--grpc_python_out={out}", "vecrig/v1/vector_index.proto"],
        check=True,
    )
    sys.path.insert(0, out)
    from vecrig.v1 import vector_index_pb2, vector_index_pb2_grpc
    return vector_index_pb2, vector_index_pb2_grpc


def main() -> None:
    target, batches_per_writer = sys.argv[1], int(sys.argv[2])
    pb, rpc = stubs()
    rng = np.random.default_rng(1)
    requests = [[] for _ in range(WRITERS)]
    next_id = 0
    for writer in range(WRITERS):
        for _ in range(batches_per_writer):
            vectors = rng.standard_normal((BATCH, DIMENSIONS)).astype(np.float32)
            points = [pb.Point(id=next_id + i, vector=pb.Vector(values=v.tolist()))
                      for i, v in enumerate(vectors)]
            next_id += BATCH
            requests[writer].append(pb.UpsertRequest(points=points))
    channel = grpc.insecure_channel(target, options=[("grpc.max_send_message_length", 64 << 20)])
    stub = rpc.VectorIndexStub(channel)
    acked = [0] * WRITERS

    def write(writer: int) -> None:
        for request in requests[writer]:
            acked[writer] += stub.Upsert(request, timeout=120).upserted

    threads = [threading.Thread(target=write, args=(w,)) for w in range(WRITERS)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    total = sum(acked)
    print(f"{total} points acknowledged in {elapsed:.2f} s: {total / elapsed:.0f} points/s")


if __name__ == "__main__":
    main()

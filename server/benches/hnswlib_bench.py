"""hnswlib on the data set exported by the ann bench, for a side-by-side ratio.

Run by `cargo bench -p vecrig-server --bench ann` when python3 can import hnswlib and numpy
(`pip install hnswlib numpy`); prints one JSON object per line on stdout.
Usage: hnswlib_bench.py DIR SECONDS
"""
import json
import sys
import time

import hnswlib
import numpy as np

EFS = [16, 24, 32, 48, 64, 96, 128, 192, 256]  # as EFS in ann.rs
K = 10


def main() -> None:
    directory, seconds = sys.argv[1], float(sys.argv[2])
    dims = int(open(f"{directory}/dims").read())
    base = np.fromfile(f"{directory}/base.f32", dtype="<f4").reshape(-1, dims)
    queries = np.fromfile(f"{directory}/queries.f32", dtype="<f4").reshape(-1, dims)
    truth = np.fromfile(f"{directory}/truth.u64", dtype="<u8").reshape(len(queries), K)

    index = hnswlib.Index(space="cosine", dim=dims)
    index.init_index(max_elements=len(base), M=16, ef_construction=200, random_seed=100)
    index.set_num_threads(1)  # one writer, as in our bench
    started = time.perf_counter()
    index.add_items(base, np.arange(len(base)))
    print(json.dumps({"build_s": time.perf_counter() - started}), flush=True)

    # The same build with two writers, against ours with two (its own index, then dropped).
    two = hnswlib.Index(space="cosine", dim=dims)
    two.init_index(max_elements=len(base), M=16, ef_construction=200, random_seed=100)
    two.set_num_threads(2)
    started = time.perf_counter()
    two.add_items(base, np.arange(len(base)))
    build2_s = time.perf_counter() - started
    two.set_ef(EFS[0])
    labels, _ = two.knn_query(queries, k=K, num_threads=2)
    found = sum(len(set(row) & set(t)) for row, t in zip(labels.tolist(), truth.tolist()))
    print(json.dumps({"build2_s": build2_s, "build2_recall": found / (len(queries) * K)}), flush=True)
    del two

    for ef in EFS:
        index.set_ef(ef)
        labels, _ = index.knn_query(queries, k=K, num_threads=1)
        found = sum(len(set(row) & set(t)) for row, t in zip(labels.tolist(), truth.tolist()))
        recall = found / (len(queries) * K)
        result = {"ef": ef, "recall": recall}
        for threads in (1, 2):
            # CPU time as the Rust side counts it: with one thread hnswlib searches in the
            # calling thread; with two, in its workers while this thread waits (not counted).
            done, started, cpu_started = 0, time.perf_counter(), time.process_time()
            while time.perf_counter() - started < seconds:
                index.knn_query(queries, k=K, num_threads=threads)
                done += len(queries)
            result[f"qps{threads}"] = done / (time.perf_counter() - started)
            result[f"cpu{threads}"] = done / (time.process_time() - cpu_started)
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()

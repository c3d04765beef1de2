"""What a Milvus server holds, asked with the official client (pymilvus), not the loadgen:
the rows of a collection and how many distinct primary keys they have.

Usage: count.py HOST:PORT COLLECTION
Prints one JSON line: {"rows": N, "distinct_ids": M, "min_id": A, "max_id": B}.
"""

import json
import sys

from pymilvus import MilvusClient


def main() -> None:
    address, collection = sys.argv[1], sys.argv[2]
    client = MilvusClient(uri=f"http://{address}")
    ids = []
    iterator = client.query_iterator(collection, batch_size=1000, filter="", output_fields=["id"])
    while True:
        batch = iterator.next()
        if not batch:
            iterator.close()
            break
        ids.extend(row["id"] for row in batch)
    print(
        json.dumps(
            {
                "rows": len(ids),
                "distinct_ids": len(set(ids)),
                "min_id": min(ids, default=None),
                "max_id": max(ids, default=None),
            }
        )
    )


if __name__ == "__main__":
    main()

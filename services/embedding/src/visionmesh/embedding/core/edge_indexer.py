"""Builds the HNSW graph of a Qdrant Edge shard: `python -m visionmesh.embedding.core.edge_indexer
<shard dir>`. `EdgeStore` runs it in a child process on a copy of a live shard, because Edge's
optimizer holds the GIL for its whole run (minutes at 100k points) and the service must go on
answering meanwhile. Exit status 0 once the shard is optimized and flushed to disk."""

from __future__ import annotations

import sys
from pathlib import Path

import qdrant_edge as qe


def build_index(path: Path) -> None:
    shard = qe.EdgeShard.load(str(path))
    try:
        shard.optimize()
        shard.flush()
    finally:
        shard.close()


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not Path(argv[0]).is_dir():
        print(
            "usage: python -m visionmesh.embedding.core.edge_indexer <shard dir>", file=sys.stderr
        )
        return 2
    build_index(Path(argv[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

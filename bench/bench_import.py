"""What ``import fastapi_taskflow`` costs, from ``python -X importtime`` in fresh processes.

Each run is a new interpreter; the figure is the cumulative time of the ``fastapi_taskflow``
line (the package and everything it pulls in), median of ``--runs``. ``--compare SRC`` also
times another source tree (e.g. ``git archive`` of an older commit, unpacked) with the runs
interleaved, so the machine's drift hits both alike. Before printing, each run is checked to
have imported the package from the tree it names. The slowest imports of the last run follow.

Run: ``.venv/bin/python bench/bench_import.py [--runs 15] [--compare /tmp/old/src]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"
PROBE = "import fastapi_taskflow, sys; print(fastapi_taskflow.__file__)"


def import_time(src: Path) -> tuple[float, list[tuple[int, str]]]:
    """Milliseconds to import the package from ``src``, and (microseconds, module) per import."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", PROBE],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    if not result.stdout.strip().startswith(str(src)):
        raise SystemExit(f"imported {result.stdout.strip()}, not the tree {src}")
    rows: list[tuple[int, str]] = []
    for line in result.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _, cumulative, name = line.split("|")
        rows.append((int(cumulative), name.strip()))
    total = next(us for us, name in rows if name == "fastapi_taskflow")
    return total / 1000, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--compare", type=Path, help="another src/ tree to time alongside")
    args = parser.parse_args()
    trees = [SRC] + ([args.compare.resolve()] if args.compare else [])
    samples: dict[Path, list[float]] = {tree: [] for tree in trees}
    rows: list[tuple[int, str]] = []
    for _ in range(args.runs):
        for tree in trees:
            ms, rows = import_time(tree)
            samples[tree].append(ms)
    for tree in trees:
        values = samples[tree]
        print(
            f"{tree}: median {statistics.median(values):.0f} ms, "
            f"min {min(values):.0f} ms over {len(values)} runs"
        )
    if args.compare:
        pairs = zip(samples[trees[1]], samples[trees[0]], strict=True)
        gaps = [old - new for old, new in pairs]
        print(f"paired difference (compare - this tree): median {statistics.median(gaps):.0f} ms")
    print("slowest imports (cumulative ms, last run of the last tree):")
    for us, name in sorted(rows, reverse=True)[1:11]:
        print(f"  {us / 1000:7.1f}  {name}")


if __name__ == "__main__":
    main()

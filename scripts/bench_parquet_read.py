"""Parquet through Ray Data: layercut's read (tasks/training/data.read_rows, Ray Data's V1
reader) beside Ray Data's default V2 reader, side by side in one local Ray.

    python scripts/bench_parquet_read.py [--data-root ../shared/data] [--rounds 3]

Each round reads the shared SST-2 train split (one file) once with each reader, alternating, and
runs it through (count, then every row), as a stage does several times. Prints seconds per read
and the Ray worker processes each read started (the session's worker log files), and the
ratios. The first read of each reader warms its imports and is not counted.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _workers(session_dir: Path) -> int:
    return len(list((session_dir / "logs").glob("python-core-worker-*.log")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    import ray
    import ray.data

    from tasks.training.data import read_rows

    path = str(Path(args.data_root) / "classification" / "SST2" / "train.parquet")
    context = ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    session = Path(context.address_info["session_dir"])
    ray.data.DataContext.get_current().enable_progress_bars = False
    readers = {"layercut (V1)": lambda: read_rows(path)[0],
               "Ray Data default (V2)": lambda: ray.data.read_parquet(path, include_paths=True)}
    seconds = {name: [] for name in readers}
    started = {name: [] for name in readers}
    for round_ in range(args.rounds + 1):
        for name, read in readers.items():
            before, begin = _workers(session), time.perf_counter()
            dataset = read()
            rows = dataset.count()
            assert len(dataset.take_all()) == rows
            if round_:  # round 0 warms each reader's imports
                seconds[name].append(time.perf_counter() - begin)
                started[name].append(_workers(session) - before)
    for name in readers:
        print(f"{name:24s} {sum(seconds[name]) / args.rounds:6.2f} s/read   "
              f"{sum(started[name]) / args.rounds:5.1f} worker processes started/read   ({rows} rows)")
    ours, default = readers
    print(f"ratio default/layercut: {sum(seconds[default]) / sum(seconds[ours]):.1f}x time, "
          f"{sum(started[default]) / max(sum(started[ours]), 1):.1f}x worker processes")
    ray.shutdown()


if __name__ == "__main__":
    main()

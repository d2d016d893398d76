"""Wall time and peak memory of the main job's local default (`layercut run`), on this machine.

Runs the real command in a fresh run directory and samples, once a second, the proportional set
size (PSS: shared pages split between the processes sharing them) summed over the job's whole
process tree: the driver, Ray's in-process services and every Ray worker (Train workers, the
evaluation actor, tasks). Prints the wall time, the peak, and the time per phase from the log.

    .venv/bin/python scripts/bench_run.py --data-root ../shared/data
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def tree_pss_mib(root: int) -> float:
    total, stack, seen = 0, [root], set()
    while stack:
        pid = stack.pop()
        if pid in seen:
            continue
        seen.add(pid)
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
                    break
        except OSError:
            continue
        stack += _children(pid)
    return total / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--config", default="smollm2-135m")
    parser.add_argument("--keep", help="copy the run's report, summary and plots into this folder")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="layercut-bench-run-") as out:
        command = [sys.executable, "-m", "pipelines.sweep", "--config", args.config, "--data-root",
                   args.data_root, "--output-dir", out, "--no-progress", *args.overrides]
        log_path = Path(out) / "job.log"
        start = time.perf_counter()
        with open(log_path, "w") as log:
            job = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                   env={**os.environ, "RAY_ADDRESS": ""})
            peak = 0.0
            while job.poll() is None:
                peak = max(peak, tree_pss_mib(job.pid))
                time.sleep(1.0)
        wall = time.perf_counter() - start
        if job.returncode != 0:
            sys.exit(f"layercut run failed ({job.returncode}); log tail:\n"
                     + "\n".join(log_path.read_text().splitlines()[-30:]))
        run_dir = next(path.parent for path in Path(out).glob("*/summary.json"))
        summary = json.loads((run_dir / "summary.json").read_text())
        trials = [{"trial": row["key"], "mteb_mean": round(row["mteb_mean"], 4),
                   "latency_ms": round(row["latency_ms"], 1)} for row in summary["trials"]]
        trials += [{"trial": row["key"], "accuracy": round(row["accuracy"], 4),
                    "macro_f1": round(row["macro_f1"], 4)}
                   for row in summary.get("classification", {}).get("trials", [])]
        report = (run_dir / "report.md").read_text()
        if args.keep:
            import shutil

            keep = Path(args.keep)
            keep.mkdir(parents=True, exist_ok=True)
            for name in ("report.md", "summary.json", "classification.csv", "report.csv"):
                if (run_dir / name).exists():
                    shutil.copy(run_dir / name, keep / name)
            shutil.copytree(run_dir / "plots", keep / "plots", dirs_exist_ok=True)
    print(json.dumps({
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
                   f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB",
        "config": args.config, "wall_seconds": round(wall, 1), "wall_minutes": round(wall / 60, 2),
        "peak_pss_mib_process_tree": round(peak), "trials": trials}, indent=2))
    print(report)


if __name__ == "__main__":
    main()

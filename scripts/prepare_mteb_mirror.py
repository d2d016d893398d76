#!/usr/bin/env python
"""Build a local MTEB mirror for air-gapped clusters: one folder per task, in the hub layout.

Run it where the Hugging Face hub is reachable, copy the folder to the cluster's shared storage,
and evaluate there with `layercut evaluate --data-root <folder>` (or LAYERCUT_DATA_ROOT).
Each task's dataset repository is downloaded at the exact revision mteb pins, so the offline
scores equal the online ones.

  python scripts/prepare_mteb_mirror.py --tasks quick --out /mnt/shared/mteb-mirror
  python scripts/prepare_mteb_mirror.py --tasks paper --out /mnt/shared/mteb-mirror
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tasks.errors import LayercutError
from tasks.evaluation.mteb_tasks import resolve_task_names


def mirror_task(name: str, out: Path) -> Path:
    """Download task ``name``'s dataset repository (pinned revision) into ``out/<name>``."""
    import mteb
    from huggingface_hub import snapshot_download

    dataset = mteb.get_task(name).metadata.dataset
    target = out / name
    try:
        snapshot_download(repo_id=dataset["path"], repo_type="dataset",
                          revision=dataset.get("revision"), local_dir=target)
    except Exception as exc:  # noqa: BLE001 - network and hub errors come in many kinds
        first = str(exc).strip().splitlines()
        raise LayercutError(f"cannot download {name} ({dataset['path']}): "
                            f"{first[0] if first else type(exc).__name__}") from exc
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", required=True, help="mteb task names or presets")
    parser.add_argument("--out", required=True, type=Path, help="the mirror folder to fill")
    args = parser.parse_args(argv)
    try:
        for name in resolve_task_names(args.tasks):
            print(f"{name}: {mirror_task(name, args.out)}")
    except LayercutError as error:
        print(f"prepare_mteb_mirror: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Print a runtime environment file as the JSON that `ray job submit --runtime-env-json` takes,
with this shell's HF_TOKEN added to its env_vars: how the token for gated or private hub models
reaches the job's driver and every worker, on any node (Ray accepts either --runtime-env or
--runtime-env-json, not both, so the file cannot simply be combined with the token).

  export HF_TOKEN=hf_...
  ray job submit --address http://localhost:8265 --working-dir . \\
      --runtime-env-json "$(python scripts/runtime_env_json.py cluster/runtime_env.yaml)" \\
      -- python -m pipelines.sweep --config four-families

The token is then part of the job's runtime environment, which the Ray dashboard shows to whoever
can reach it (Ray's token authentication keeps everyone else out).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import yaml


def with_token(runtime_env: dict, token: str) -> dict:
    """``runtime_env`` with ``HF_TOKEN`` set in its env_vars (the other variables kept)."""
    return {**runtime_env, "env_vars": {**runtime_env.get("env_vars", {}), "HF_TOKEN": token}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runtime_env", type=Path, help="a runtime environment YAML, e.g. cluster/runtime_env.yaml")
    args = parser.parse_args(argv)
    token = os.environ.get("HF_TOKEN", "").strip()
    if not token:
        print("runtime_env_json: error: HF_TOKEN is not set: export a read token of the account that "
              "accepted the models' licenses (public models need none: use --runtime-env FILE)", file=sys.stderr)
        return 2
    if not args.runtime_env.is_file():
        print(f"runtime_env_json: error: runtime environment file {args.runtime_env} not found", file=sys.stderr)
        return 2
    print(json.dumps(with_token(yaml.safe_load(args.runtime_env.read_text()) or {}, token)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Print a runtime environment file as the JSON that `ray job submit --runtime-env-json` takes,
with variables of this shell added to its env_vars: how the token for gated or private hub models
(HF_TOKEN, the default) or an object store's credentials (--env AWS_ACCESS_KEY_ID ...) reach the
job's driver and every worker, on any node (Ray accepts either --runtime-env or
--runtime-env-json, not both, so the file cannot simply be combined with the variables).

  export HF_TOKEN=hf_...
  ray job submit --address http://localhost:8265 --working-dir . \\
      --runtime-env-json "$(python scripts/runtime_env_json.py cluster/runtime_env.yaml)" \\
      -- python -m pipelines.sweep --config four-families

  # an s3:// --output-dir without an instance role: the keys too
  python scripts/runtime_env_json.py cluster/runtime_env.yaml --env HF_TOKEN \\
      --env AWS_ACCESS_KEY_ID --env AWS_SECRET_ACCESS_KEY --env AWS_REGION

The variables are then part of the job's runtime environment, which the Ray dashboard shows to
whoever can reach it (Ray's token authentication keeps everyone else out).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import yaml

HINTS = {"HF_TOKEN": "export a read token of the account that accepted the models' licenses "
                     "(public models need none: use --runtime-env FILE)"}


def with_variables(runtime_env: dict, variables: dict[str, str]) -> dict:
    """``runtime_env`` with ``variables`` set in its env_vars (the other variables kept)."""
    return {**runtime_env, "env_vars": {**runtime_env.get("env_vars", {}), **variables}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runtime_env", type=Path, help="a runtime environment YAML, e.g. cluster/runtime_env.yaml")
    parser.add_argument("--env", action="append", metavar="NAME",
                        help="a variable of this shell to add (repeatable; default: HF_TOKEN alone)")
    args = parser.parse_args(argv)
    variables = {}
    for name in dict.fromkeys(args.env or ["HF_TOKEN"]):
        value = os.environ.get(name, "").strip()
        if not value:
            print(f"runtime_env_json: error: {name} is not set: "
                  f"{HINTS.get(name, f'export it, or leave out --env {name}')}", file=sys.stderr)
            return 2
        variables[name] = value
    if not args.runtime_env.is_file():
        print(f"runtime_env_json: error: runtime environment file {args.runtime_env} not found", file=sys.stderr)
        return 2
    print(json.dumps(with_variables(yaml.safe_load(args.runtime_env.read_text()) or {}, variables)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

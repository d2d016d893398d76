"""Put on a simulated worker node's PYTHONPATH by the autoscaling test (tests/_fake_nodes.py):
every Python process of the node (Ray's workers and agents) records that it was audited, and
every file it opens inside another node's directory (the head's temp dir, where the job's driver
runs, or another worker node's). On a real cluster such a path does not exist on this node: the
test fails on any. Paths are strings compared by prefix; the hook only appends to this node's
own files, which it never records."""

import os
import sys

_cluster = os.environ.get("LAYERCUT_TEST_CLUSTER_DIR")
_own = os.environ.get("LAYERCUT_TEST_NODE_DIR")

if _cluster and _own:
    _cluster, _own = os.path.join(_cluster, ""), os.path.join(_own, "")

    def _note(name: str, line: str) -> None:
        with open(os.path.join(_own, name), "a") as handle:
            handle.write(line + "\n")

    def _audit(event, args):
        if event != "open" or not args or not isinstance(args[0], (str, bytes, os.PathLike)):
            return
        try:
            path = os.path.abspath(os.fsdecode(args[0]))
        except (TypeError, ValueError):
            return
        if path.startswith(_cluster) and not path.startswith(_own):
            _note("foreign-opens.log", f"{os.getpid()} {' '.join(sys.argv[:2])}: {path}")

    _note("audited.log", f"{os.getpid()} {' '.join(sys.argv[:2])}")
    sys.addaudithook(_audit)

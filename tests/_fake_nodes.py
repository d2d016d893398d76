"""Ray's fake multi-node provider (the simulated nodes of Ray's own autoscaler tests), with each
node it launches in a directory of its own: its Ray temp dir (session, logs, the job's unpacked
working directory) and the environment its node type's ``node_config`` gives it.

The autoscaler's monitor process imports this module (``provider: {type: external, module:
_fake_nodes.NodeDirsProvider}``, with this folder on the head's PYTHONPATH). A node type's
``node_config``: ``nodes_dir`` (where each node gets ``<nodes_dir>/w<N>/``) and ``env`` (extra
environment of the node's processes; ``{node_dir}`` in a value is replaced by that node's folder).
Without a temp dir of its own a simulated node would share the head's, and a path that only
exists on the head's disk would still be found from another node.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import ray._private.parameter
from ray.autoscaler._private.fake_multi_node.node_provider import FakeMultiNodeProvider


class NodeDirsProvider(FakeMultiNodeProvider):
    def _create_node_with_resources_and_labels(self, node_config, tags, count, resources, labels):
        node_dir = os.path.join(node_config["nodes_dir"], f"w{self._next_node_id + 1}")  # its id's number
        os.makedirs(node_dir, exist_ok=True)
        env = {key: value.replace("{node_dir}", node_dir) for key, value in node_config.get("env", {}).items()}
        # The parent builds the node's RayParams inline: lend it one with this node's temp dir and env.
        params = ray._private.parameter.RayParams

        def node_params(**kwargs):
            kwargs["env_vars"] = {**(kwargs.get("env_vars") or {}), **env}
            return params(**kwargs, temp_dir=os.path.join(node_dir, "tmp"))

        ray._private.parameter.RayParams = node_params
        try:
            super()._create_node_with_resources_and_labels(node_config, tags, count, resources, labels)
        except Exception:
            # Not up within Ray's 30 s (a loaded machine): end what it started, as a cloud ends
            # an instance that failed to come up; the autoscaler launches another.
            for pid in processes_under(Path(node_dir)):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            raise
        finally:
            ray._private.parameter.RayParams = params


def processes_under(folder: Path) -> list[int]:
    """Pids of the processes whose command line names ``folder`` (a node's raylet and agents
    name their session directory)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if str(folder).encode() in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids

"""The ``layercut`` command: a registry of stages, one subcommand each.

A command's flags live in pipelines/commands.py; what it runs is the stage module's ``ENTRY``
(config class, run, render), imported only when the command runs, so ``layercut --help`` loads
no model code. Stage modules never import this module: it is the top of the import graph.
"""

from __future__ import annotations

import sys
from typing import Callable

from pipelines.commands import Stage, build_parser, run_command


def _layer_loss() -> Stage:
    from pipelines import layer_loss

    return layer_loss.ENTRY


def _finetune() -> Stage:
    from pipelines import finetune

    return finetune.ENTRY


def _evaluate() -> Stage:
    from pipelines import evaluate

    return evaluate.ENTRY


def _classify() -> Stage:
    from pipelines import classify

    return classify.ENTRY


def _sweep() -> Stage:
    from pipelines import sweep

    return sweep.ENTRY


# command name -> its stage; a new stage adds its Command to pipelines/commands.py and a line here
STAGES: dict[str, Callable[[], Stage]] = {
    "layer-loss": _layer_loss,
    "finetune": _finetune,
    "evaluate": _evaluate,
    "evaluate-classifier": _classify,
    "run": _sweep,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(args, STAGES[args.command])


if __name__ == "__main__":
    sys.exit(main())

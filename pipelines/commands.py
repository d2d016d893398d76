"""The command line of each stage: its flags, how they become config keys, and how a parsed
command runs a stage (load the config, run, render; errors the user can fix as one line).

This module knows no stage. A stage declares itself as a ``Stage`` (its config class, run and
render); pipelines/cli.py registers the stages under their command names, and a stage run as a
script (``python -m pipelines.finetune``) hands its own ``Stage`` to ``run_as_script``. So the
stages import this module, the CLI imports the stages, and nothing imports the CLI.

Errors the user can fix (LayercutError) print as one line on stderr with exit status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from tasks.errors import LayercutError


@dataclass(frozen=True)
class Stage:
    """What a command runs.

    Args:
        config: the stage's config class (pipelines/schemas/).
        configs: the folder of its packaged configs, pipelines/configs/<configs>/.
        run: config -> the stage's result (a frozen dataclass of pipelines/results.py), the stage
            itself.
        render: (config, result) -> exit status; prints what the user reads at the end.
        preview: config -> text printed instead of running (``--list``, ``--plan``).
        progress_argument: the stage takes ``show_progress`` as an argument of ``run`` (stage 1)
            rather than as a config key.
    """

    config: type
    configs: str
    run: Callable[..., Any]
    render: Callable[[Any, Any], int]
    preview: Callable[[Any], str] | None = None
    progress_argument: bool = False


@dataclass(frozen=True)
class Command:
    """A subcommand's own surface: its help, its flags and the config keys they set.

    ``data_root`` is where the stage's config keeps the data root that --data-root sets;
    ``flags`` adds the command's own arguments; ``settings(args, extra, overrides)`` writes them
    into the config tree ``extra`` (or appends ``key=value`` overrides).
    """

    help: str
    data_root: tuple[str, ...]
    flags: Callable[[argparse.ArgumentParser], None] = lambda parser: None
    settings: Callable[[argparse.Namespace, dict, list], None] = lambda args, extra, overrides: None
    default_config: str = "smollm2-135m"
    progress_key: bool = True  # --no-progress sets the config's show_progress
    preview: tuple[str, str] | None = None  # (flag, help) of the stage's preview, if any


def _layers(parser: argparse.ArgumentParser, help_text: str) -> None:
    parser.add_argument("--layers", help=help_text)


def _model(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="artifact dir, hub id, built-in name or .gguf")


def _finetune_flags(parser: argparse.ArgumentParser) -> None:
    _layers(parser, "layers to keep: a count (8), prune:0.3 (the paper's p: the fraction of the last "
            "layers removed), keep:0.7, or keep-indices:0-2,5-6 (these layers)")
    parser.add_argument("--force", action="store_true",
                        help="resume a checkpoint even though the config changed")


def _finetune_settings(args: argparse.Namespace, extra: dict, overrides: list) -> None:
    if args.layers is not None:
        extra["layers"] = args.layers
    if args.force:
        extra["force"] = True


def _evaluate_flags(parser: argparse.ArgumentParser) -> None:
    _model(parser)
    parser.add_argument("--tasks", nargs="+", help="mteb task names or presets (paper, quick)")
    _layers(parser, "evaluate the model cut to this depth")


def _evaluate_settings(args: argparse.Namespace, extra: dict, overrides: list) -> None:
    if args.model:
        extra["model"] = {"name_or_path": args.model}
    if args.tasks:
        # `--tasks A B key=value` hands the overrides to --tasks; no task name contains "=".
        overrides += [item for item in args.tasks if "=" in item]
        extra["tasks"] = [item for item in args.tasks if "=" not in item]
    if args.layers is not None:
        extra["layers"] = args.layers


def _classifier_flags(parser: argparse.ArgumentParser) -> None:
    _model(parser)
    _layers(parser, "score the base model cut to this depth")


def _classifier_settings(args: argparse.Namespace, extra: dict, overrides: list) -> None:
    if args.model:
        extra["model"] = {"name_or_path": args.model}
    if args.layers is not None:
        extra["layers"] = args.layers


COMMANDS = {
    "layer-loss": Command(
        "stage 1: per-layer initial loss and the L3Prune small/large depths",
        data_root=("data", "data_root"), progress_key=False),
    "finetune": Command(
        "stage 2: fine-tune a truncation with Ray Train + DeepSpeed + LoRA",
        data_root=("data", "data_root"), flags=_finetune_flags, settings=_finetune_settings),
    "evaluate": Command(
        "stage 3: MTEB evaluation with mteb's own tasks, spread over Ray workers",
        data_root=("data_root",), flags=_evaluate_flags, settings=_evaluate_settings,
        preview=("--list", "print each task's type, splits and subsets scored, and exit (no model loaded)")),
    "evaluate-classifier": Command(
        "stage 3 of the classification objective: accuracy and macro-F1 of a prompt-based "
        "classifier (or a base model, zero-shot)",
        data_root=("classification", "data_root"), flags=_classifier_flags, settings=_classifier_settings),
    "run": Command(
        "the whole pipeline: stage 1, a Ray Tune sweep of depths (fine-tune + evaluate each), the report",
        data_root=("data_root",),
        preview=("--plan", "print the trials (model, layers kept, origin) and exit without training")),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="layercut", description="Turn decoder LLMs into pruned text encoders (L3Prune) on Ray.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name, command in COMMANDS.items():
        sub = subparsers.add_parser(name, help=command.help, description=command.help)
        default = command.default_config
        sub.add_argument("--config", default=default,
                         help=f"YAML file or packaged config name (default: {default})")
        sub.add_argument("--data-root", help="read all data from this local mirror "
                         "(default: $LAYERCUT_DATA_ROOT; unset: the hub)")
        sub.add_argument("--output-dir", help="where run directories go (default: runs)")
        sub.add_argument("--name", help="run name: the run directory inside --output-dir")
        sub.add_argument("--no-progress", action="store_true", help="no progress bar")
        sub.add_argument("overrides", nargs="*", metavar="key.sub=value",
                         help="config overrides, e.g. data.num_batches=4 model.dtype=float32")
        command.flags(sub)
        if command.preview:
            flag, help_text = command.preview
            sub.add_argument(flag, dest="preview", action="store_true", help=help_text)
    return parser


def _config_tree(command: Command, args: argparse.Namespace) -> tuple[dict, list[str]]:
    """(CLI flags as a config tree, overrides): the common flags, then the command's own."""
    extra: dict = {}
    overrides = list(args.overrides)
    if args.output_dir:
        extra["output_dir"] = args.output_dir
    if args.name:
        extra["name"] = args.name
    if args.data_root:
        node = extra
        for key in command.data_root[:-1]:
            node = node.setdefault(key, {})
        node[command.data_root[-1]] = str(Path(args.data_root).expanduser().resolve())
    command.settings(args, extra, overrides)
    if args.no_progress and command.progress_key:
        extra["show_progress"] = False
    return extra, overrides


def run_command(args: argparse.Namespace, load: Callable[[], Stage]) -> int:
    """Run the parsed command on the stage ``load`` returns; the process's exit status."""
    from pipelines.config import find_config, load_config
    from pipelines.ray_runtime import refuse_output_in_a_job_copy

    # transformers/tokenizers threads fight with Ray workers and torch; keep tokenizers quiet.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        stage = load()
        extra, overrides = _config_tree(COMMANDS[args.command], args)
        config = load_config(stage.config, find_config(args.config, stage.configs), overrides, extra)
        if getattr(args, "preview", False):
            print(stage.preview(config))
            return 0
        refuse_output_in_a_job_copy(config.output_dir, os.getcwd())  # every stage has one
        options = {"show_progress": not args.no_progress} if stage.progress_argument else {}
        return stage.render(config, stage.run(config, **options))
    except LayercutError as error:
        print(f"layercut: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("layercut: interrupted; finished batches are saved, rerun the same command to resume",
              file=sys.stderr)
        return 130


def run_as_script(command: str, stage: Stage, argv: list[str] | None = None) -> int:
    """``python -m pipelines.<stage> ...``: the same as ``layercut <command> ...``."""
    args = build_parser().parse_args([command, *(sys.argv[1:] if argv is None else argv)])
    return run_command(args, lambda: stage)

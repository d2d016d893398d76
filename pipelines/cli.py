"""The ``layercut`` command: one subcommand per stage.

Errors the user can fix (LayercutError) print as one line on stderr with exit status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from tasks.errors import LayercutError


def _stage_parser(subparsers, name: str, help_text: str, default_config: str) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(name, help=help_text, description=help_text)
    parser.add_argument("--config", default=default_config,
                        help=f"YAML file or packaged config name (default: {default_config})")
    parser.add_argument("--data-root", help="read all data from this local mirror "
                        "(default: $LAYERCUT_DATA_ROOT; unset: the hub)")
    parser.add_argument("--output-dir", help="where run directories go (default: runs)")
    parser.add_argument("--name", help="run name: the run directory inside --output-dir")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value",
                        help="config overrides, e.g. data.num_batches=4 model.dtype=float32")
    return parser


def _common_extra(args: argparse.Namespace, data_root_key: tuple[str, ...]) -> dict:
    """CLI flags as a config tree; ``data_root_key`` is where the stage keeps its data root."""
    extra: dict = {}
    if args.output_dir:
        extra["output_dir"] = args.output_dir
    if args.name:
        extra["name"] = args.name
    if args.data_root:
        node = extra
        for key in data_root_key[:-1]:
            node = node.setdefault(key, {})
        node[data_root_key[-1]] = str(Path(args.data_root).expanduser().resolve())
    return extra


def _layer_loss(args: argparse.Namespace) -> int:
    from pipelines import layer_loss
    from pipelines.config import find_config, load_config

    config = load_config(layer_loss.LayerLossConfig, find_config(args.config, layer_loss.STAGE),
                         args.overrides, _common_extra(args, ("data", "data_root")))
    summary = layer_loss.run(config, show_progress=not args.no_progress)
    layer_loss.print_summary(summary, config.run_dir())
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from pipelines import evaluate
    from pipelines.config import find_config, load_config

    extra = _common_extra(args, ("data_root",))
    overrides = list(args.overrides)
    if args.model:
        extra["model"] = {"name_or_path": args.model}
    if args.tasks:
        # `--tasks A B key=value` hands the overrides to --tasks; no task name contains "=".
        overrides += [item for item in args.tasks if "=" in item]
        extra["tasks"] = [item for item in args.tasks if "=" not in item]
    if args.layers is not None:
        extra["layers"] = args.layers
    if args.no_progress:
        extra["show_progress"] = False
    config = load_config(evaluate.EvaluateConfig, find_config(args.config, evaluate.STAGE),
                         overrides, extra)
    if args.list:
        print(evaluate.list_tasks(config))
        return 0
    run_dir = Path(evaluate.run(config)["run_dir"])
    print((run_dir / "summary.md").read_text())
    print(f"mteb result files in {run_dir / 'results'}")
    return 0


def _finetune(args: argparse.Namespace) -> int:
    from pipelines import finetune
    from pipelines.config import find_config, load_config

    extra = _common_extra(args, ("data", "data_root"))
    if args.layers is not None:
        extra["layers"] = args.layers
    if args.force:
        extra["force"] = True
    if args.no_progress:
        extra["show_progress"] = False
    config = load_config(finetune.FinetuneConfig, find_config(args.config, finetune.STAGE),
                         args.overrides, extra)
    summary = finetune.run(config)
    finetune.print_summary(summary, Path(summary["artifact"]).parent)
    return 0


def _classify(args: argparse.Namespace) -> int:
    from pipelines import classify
    from pipelines.config import find_config, load_config

    extra = _common_extra(args, ("classification", "data_root"))
    if args.model:
        extra["model"] = {"name_or_path": args.model}
    if args.layers is not None:
        extra["layers"] = args.layers
    if args.no_progress:
        extra["show_progress"] = False
    config = load_config(classify.ClassifyConfig, find_config(args.config, classify.STAGE),
                         args.overrides, extra)
    summary = classify.run(config)
    classify.print_summary(summary, config.run_dir())
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from pipelines import sweep
    from pipelines.config import find_config, load_config

    extra = _common_extra(args, ("data_root",))
    if args.no_progress:
        extra["show_progress"] = False
    config = load_config(sweep.SweepConfig, find_config(args.config, sweep.STAGE), args.overrides, extra)
    if args.plan:
        print(sweep.describe_plan(config))
        return 0
    summary = sweep.run(config)
    run_dir = Path(summary["run_dir"])
    print((run_dir / "report.md").read_text())
    print(f"report, plots and every trial's model in {run_dir}")
    if summary["failed"]:
        print(f"layercut: error: {len(summary['failed'])} trial(s) failed: "
              f"{', '.join(summary['failed'])}; rerun the same command to retry them", file=sys.stderr)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="layercut", description="Turn decoder LLMs into pruned text encoders (L3Prune) on Ray.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    stage1 = _stage_parser(subparsers, "layer-loss",
                           "stage 1: per-layer initial loss and the L3Prune small/large depths",
                           "smollm2-135m")
    stage1.set_defaults(handler=_layer_loss)
    stage2 = _stage_parser(subparsers, "finetune",
                           "stage 2: fine-tune a truncation with Ray Train + DeepSpeed + LoRA",
                           "smollm2-135m")
    stage2.add_argument("--layers", help="layers to keep: a count (8), prune:0.3 (the paper's p: the "
                        "fraction of the last layers removed), keep:0.7, or keep-indices:0-2,5-6 (these layers)")
    stage2.add_argument("--force", action="store_true",
                        help="resume a checkpoint even though the config changed")
    stage2.set_defaults(handler=_finetune)
    stage3 = _stage_parser(subparsers, "evaluate",
                           "stage 3: MTEB evaluation with mteb's own tasks, spread over Ray workers",
                           "smollm2-135m")
    stage3.add_argument("--model", help="artifact dir, hub id, built-in name or .gguf")
    stage3.add_argument("--tasks", nargs="+", help="mteb task names or presets (paper, quick)")
    stage3.add_argument("--layers", help="evaluate the model cut to this depth")
    stage3.add_argument("--list", action="store_true",
                        help="print each task's type, splits and subsets scored, and exit (no model loaded)")
    stage3.set_defaults(handler=_evaluate)
    classifier = _stage_parser(subparsers, "evaluate-classifier",
                               "stage 3 of the classification objective: accuracy and macro-F1 "
                               "of a prompt-based classifier (or a base model, zero-shot)",
                               "smollm2-135m")
    classifier.add_argument("--model", help="artifact dir, hub id, built-in name or .gguf")
    classifier.add_argument("--layers", help="score the base model cut to this depth")
    classifier.set_defaults(handler=_classify)
    main_job = _stage_parser(subparsers, "run",
                             "the whole pipeline: stage 1, a Ray Tune sweep of depths (fine-tune + "
                             "evaluate each), the report", "smollm2-135m")
    main_job.add_argument("--plan", action="store_true",
                          help="print the trials (model, layers kept, origin) and exit without training")
    main_job.set_defaults(handler=_sweep)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # transformers/tokenizers threads fight with Ray workers and torch; keep tokenizers quiet.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        return args.handler(args)
    except LayercutError as error:
        print(f"layercut: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("layercut: interrupted; finished batches are saved, rerun the same command to resume",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""A third party reproduces layercut's scores: ``mteb.evaluate(SentenceTransformer(path), task)``
on an exported artifact gives the main score ``layercut evaluate`` gives (within 1e-4), on an STS
task and on the mirror's reranking task. The artifact's prompts carry the task instructions
keyed as mteb 2 picks them; nothing is passed to mteb but the model and the task.

Cheap: SmolLM2 cut to 2 layers, STSBenchmark subsampled to 60 pairs, the reranking mirror cut
to its first 8 queries and their candidates.
"""

from __future__ import annotations

from pathlib import Path

import mteb
import pyarrow.parquet as pq
import pytest

from conftest import SHARED_DATA
from pipelines.config import load_config
from pipelines.evaluate import EvaluateConfig, packaged_instructions, run
from tasks.evaluation.mteb_tasks import load_task, subsample_task
from tests.test_artifact_st import export

RERANKING = "AskUbuntuDupQuestions"  # the mirror's TRECQA-reranking folder stands in for it
SAMPLES = 60


@pytest.fixture(scope="module")
def mirror(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mirror")
    (root / "STSBenchmark").symlink_to(SHARED_DATA / "STSBenchmark")
    source, target = SHARED_DATA / "TRECQA-reranking", root / RERANKING
    top = pq.read_table(source / "top_ranked" / "test.parquet").slice(0, 8)
    queries = set(top.column("query-id").to_pylist())
    documents = {d for ids in top.column("corpus-ids").to_pylist() for d in ids}
    parts = {"top_ranked": top}
    for part, column, keep in (("queries", "_id", queries), ("corpus", "_id", documents),
                               ("qrels", "query-id", queries)):
        table = pq.read_table(source / part / "test.parquet")
        parts[part] = table.filter([value in keep for value in table.column(column).to_pylist()])
    for part, table in parts.items():
        (target / part).mkdir(parents=True)
        pq.write_table(table, target / part / "test.parquet")
    (target / "README.md").write_text((source / "README.md").read_text())
    return root


def _layercut(tmp_path, artifact, task: str, mirror: Path) -> float:
    config = load_config(EvaluateConfig, None, [], {
        "output_dir": str(tmp_path / "runs"), "model": {"name_or_path": str(artifact)}, "tasks": [task],
        "data_root": str(mirror), "workers": {"executor": "local"},
        "max_samples_per_split": SAMPLES if task == "STSBenchmark" else None})
    return run(config).tasks[0]["main_score"]


def _mteb(artifact, task: str, mirror: Path, remote_code: bool) -> float:
    from sentence_transformers import SentenceTransformer

    loaded = load_task(task, str(mirror))
    if task == "STSBenchmark":
        loaded = subsample_task(loaded, SAMPLES)
    model = SentenceTransformer(str(artifact), device="cpu", trust_remote_code=remote_code)
    return mteb.evaluate(model, [loaded], cache=None, show_progress_bar=False).task_results[0].get_score()


@pytest.mark.slow
@pytest.mark.parametrize(("pooling", "closing", "tasks"), [
    ("last_token", False, ["STSBenchmark", RERANKING]),  # no remote code
    ("weighted_mean", True, ["STSBenchmark"]),  # the paper's setting (text-span module)
])
def test_mteb_on_the_artifact_reproduces_layercut_evaluate(tmp_path, smollm2_dir, mirror, pooling,
                                                           closing, tasks):
    import json

    table = packaged_instructions()
    artifact, _ = export(tmp_path, smollm2_dir, 2, pooling, closing, max_length=128, instructions=table)
    prompts = json.loads((artifact / "config_sentence_transformers.json").read_text())["prompts"]
    assert prompts["STSBenchmark"] == table["STSBenchmark"] and prompts[f"{RERANKING}-document"] == ""
    for task in tasks:
        ours = _layercut(tmp_path / task, artifact, task, mirror)
        theirs = _mteb(artifact, task, mirror, remote_code=pooling != "last_token")
        assert theirs == pytest.approx(ours, abs=1e-4), task

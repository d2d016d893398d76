"""Stage 2's parts without a cluster: LoRA placement, batch plan, DeepSpeed config, and the
gathered-negatives loss (duplicates masked) against a single worker on the doubled batch (2 real gloo processes)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from tasks.errors import LayercutError
from tasks.model.lora import LoraSettings, add_lora, lora_targets_of
from tasks.training.batch_plan import plan_global_batches, steps_from_rows
from tasks.training.deepspeed_config import OptimizationSettings, deepspeed_config
from tests.conftest import FAMILIES, free_port

EXPECTED = {"phi3": {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"}}
SEPARATE = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


@pytest.mark.parametrize("family", FAMILIES)
def test_lora_lands_on_every_projection(family, tiny_model_dirs):
    from transformers import AutoModel

    model = AutoModel.from_pretrained(tiny_model_dirs[family])
    peft_model = add_lora(model, LoraSettings())
    targets = lora_targets_of(peft_model)
    expected = EXPECTED.get(family, SEPARATE)
    assert {t.rsplit(".", 1)[-1] for t in targets} == expected
    assert len(targets) == len(expected) * model.config.num_hidden_layers
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    config = next(iter(peft_model.peft_config.values()))
    assert (config.r, config.lora_alpha, config.lora_dropout) == (16, 32, 0.05)


def test_lora_unknown_target_is_an_error(tiny_model_dirs):
    from transformers import AutoModel

    model = AutoModel.from_pretrained(tiny_model_dirs["llama"])
    with pytest.raises(LayercutError, match="not modules of"):
        add_lora(model, LoraSettings(target_modules=("qkv_proj",)))


def test_plan_is_homogeneous_and_independent_of_row_order():
    rng = np.random.default_rng(0)
    keys = rng.choice(2**60, size=70, replace=False).astype(np.uint64)
    sources = ["a"] * 30 + ["b"] * 25 + ["c"] * 15
    plan = plan_global_batches(keys, sources, steps=20, global_batch=8, seed=1)
    source_of = dict(zip(keys.tolist(), sources))
    assert plan.shape == (20, 8)
    for batch in plan:
        assert len({source_of[k] for k in batch.tolist()}) == 1  # one source per global batch
        assert len(set(batch.tolist())) == 8
    # Epoch 1 uses 3 + 3 + 1 = 7 batches and no row twice.
    first_epoch = plan[:7].ravel().tolist()
    assert len(set(first_epoch)) == len(first_epoch)
    order = rng.permutation(70)
    shuffled = plan_global_batches(keys[order], [sources[i] for i in order], steps=20,
                                   global_batch=8, seed=1)
    assert np.array_equal(plan, shuffled)
    assert not np.array_equal(plan, plan_global_batches(keys, sources, steps=20, global_batch=8, seed=2))
    with pytest.raises(LayercutError, match="larger than the data"):
        plan_global_batches(keys, sources, steps=2, global_batch=31, seed=1)


def test_steps_from_rows_skips_done_steps_and_duplicate_slots():
    # Worker rows for 3 steps of 2 slots, the slot 3 row duplicated (identical rows share a key).
    orders = [0, 1, 2, 3, 3, 4, 5]
    batches = [{"_order": np.array(orders[:4]), "query": np.array(list("abcd"))},
               {"_order": np.array(orders[4:]), "query": np.array(list("dEF"))}]
    steps = list(steps_from_rows(batches, per_worker=2, start_step=1))
    assert steps == [(1, {"query": ["c", "d"]}), (2, {"query": ["E", "F"]})]
    with pytest.raises(LayercutError, match="received 1 rows"):
        list(steps_from_rows([{"_order": np.array([0, 1, 2]), "query": np.array(list("abc"))}], 2))


def test_deepspeed_config_overlay_and_contradictions(tmp_path):
    settings = OptimizationSettings(per_device_batch=8, zero_stage=2, bf16=False, learning_rate=2e-4,
                                    weight_decay=0.0, max_grad_norm=1.0)
    generated = deepspeed_config(settings, world_size=4)
    assert generated["train_batch_size"] == 32 and generated["zero_optimization"]["stage"] == 2
    merged = deepspeed_config(settings, 4, {"zero_optimization": {"stage": 2, "overlap_comm": True},
                                            "train_micro_batch_size_per_gpu": 8})
    assert merged["zero_optimization"] == {"stage": 2, "overlap_comm": True}
    for user, message in (({"zero_optimization": {"stage": 3}}, "zero_optimization.stage=3"),
                          ({"train_micro_batch_size_per_gpu": 16}, "train_micro_batch_size_per_gpu=16"),
                          ({"bf16": {"enabled": True}}, "bf16.enabled=True"),
                          ({"optimizer": {"type": "AdamW", "params": {"lr": 1e-3}}}, "optimizer.params.lr"),
                          ({"scheduler": {"type": "WarmupLR"}}, "scheduler"),
                          ({"optimizer": {"type": "Lamb"}}, "Lamb")):
        with pytest.raises(LayercutError, match=message.replace(".", r"\.").replace("[", r"\[")):
            deepspeed_config(settings, 4, user)


# --- gathered negatives: 2 workers x b == 1 worker x 2b, loss and LoRA gradients --------------


def _rows(triplets, begin, end):
    part = triplets[begin:end]
    return {f: [row[f] for row in part] for f in ("query", "positive", "negative", "instruction")}


def _lora_grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _job(model_dir: str, per_device: int):
    from tasks.model.models import ModelSource, ModelSpec
    from tasks.model.prompts import PromptConfig
    from tasks.training.objectives import ContrastiveObjective
    from tasks.training.train_loop import TrainingJob

    return TrainingJob(
        spec=ModelSpec(ModelSource(model_dir, True), layers=3, dtype="float32", device="cpu"),
        objective=ContrastiveObjective(PromptConfig(max_length=64), "weighted_mean", 50.0),
        lora=LoraSettings(dropout=0.0),
        optimization=OptimizationSettings(per_device_batch=per_device, zero_stage=0, bf16=False,
                                          learning_rate=1e-3, weight_decay=0.0, max_grad_norm=1e9),
        steps=10, warmup_steps=0, gradient_checkpointing=False, checkpoint_every=10, seed=7,
        fingerprint="test")


def _worker(rank: int, world: int, port: int, model_dir: str, triplets, out: str) -> None:
    import torch.distributed as dist

    from tasks.training.train_loop import build_trainable, initialize_engine

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank), DS_ACCELERATOR="cpu")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    b = 4
    job = _job(model_dir, b)
    model, tokenizer = build_trainable(job)
    engine = initialize_engine(model, job, world)
    loss, _, log = job.objective.bind(tokenizer)(engine, _rows(triplets, rank * b, (rank + 1) * b),
                                                 torch.device("cpu"))
    engine.backward(loss * world)  # DeepSpeed averages the workers' gradients
    torch.save({"loss": float(loss.detach()), "grads": _lora_grads(engine.module), "log": log},
               f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


def test_gathered_negatives_equal_one_worker_with_double_batch(tmp_path, tiny_model_dirs, triplet_rows):
    import torch.multiprocessing as mp

    from tasks.training.train_loop import build_trainable

    model_dir = tiny_model_dirs["llama"]
    triplets = list(triplet_rows[240:248])  # straddles the SICK/TREC boundary: varied lengths
    # Duplicates across the two workers' shards (rank 0: rows 0-3, rank 1: rows 4-7): row 5 asks
    # row 0's query, row 6 has row 1's positive. The gathered text ids must mask them as one
    # process does on the whole batch. Row 7's negative is blank: it trains, pooled from its last
    # prompt token (tasks.model.prompts), as in evaluation.
    triplets[5] = {**triplets[5], "query": triplets[0]["query"], "instruction": triplets[0]["instruction"]}
    triplets[6] = {**triplets[6], "positive": triplets[1]["positive"]}
    triplets[7] = {**triplets[7], "negative": " "}
    mp.start_processes(_worker, args=(2, free_port(), model_dir, triplets, str(tmp_path)),
                       nprocs=2, join=True, start_method="spawn")
    # The reference: one process, plain PyTorch autograd on the whole batch of 8.
    job = _job(model_dir, 8)
    model, tokenizer = build_trainable(job)
    loss, _, log = job.objective.bind(tokenizer)(model, _rows(triplets, 0, 8), torch.device("cpu"))
    loss.backward()
    reference = _lora_grads(model)
    assert log == {"masked_pairs": 4}  # (0, 5), (5, 0), (1, 6), (6, 1)
    for rank in range(2):
        result = torch.load(tmp_path / f"rank{rank}.pt")
        assert result["log"] == log
        assert result["loss"] == pytest.approx(loss.item(), rel=1e-5, abs=1e-6)
        assert set(result["grads"]) == set(reference)
        for name, grad in reference.items():
            # float32 noise of a different forward shape (4 vs 8 rows): ~1e-6 of the largest entry.
            scale = float(grad.abs().max())
            assert torch.allclose(result["grads"][name], grad, rtol=1e-4, atol=1e-5 * scale), \
                (name, (result["grads"][name] - grad).abs().max(), scale)
    assert any(g.abs().sum() > 0 for g in reference.values())


# --- configs and bad input -------------------------------------------------------------------

def test_learning_rate_is_transformers_linear_schedule_with_the_papers_horizon():
    """The paper's schedule: peak 2e-4, 300 warmup steps, a linear decay planned over 3 epochs
    of the data and a stop at step 1000 (the rate is still near its peak there). Compared with
    transformers' own get_linear_schedule_with_warmup and with the values worked out by hand."""
    from dataclasses import replace

    from transformers import get_linear_schedule_with_warmup

    from pipelines.config import find_config, load_config
    from pipelines.finetune import FinetuneConfig
    from tasks.training.train_loop import learning_rate_schedule

    training = load_config(FinetuneConfig, find_config("llama3-8b", "finetune")).training
    assert (training.steps, training.warmup_steps, training.decay_epochs) == (1000, 300, 3)
    # One epoch of 1,500 one-source global batches (e.g. 768,000 rows at 512 per batch).
    horizon = training.decay_horizon(batches_per_epoch=1500)
    assert horizon == 4500
    job = replace(_job("unused", 4), steps=training.steps, warmup_steps=training.warmup_steps,
                  decay_steps=horizon)

    def rates(make_schedule):
        optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=training.learning_rate)
        schedule, seen = make_schedule(optimizer), {}
        for step in range(training.steps + 1):
            seen[step] = optimizer.param_groups[0]["lr"]
            optimizer.step()
            schedule.step()
        return seen

    ours = rates(lambda optimizer: learning_rate_schedule(optimizer, job))
    theirs = rates(lambda optimizer: get_linear_schedule_with_warmup(optimizer, 300, 4500))
    assert ours == theirs
    assert ours[0] == 0.0
    assert ours[150] == pytest.approx(1e-4, rel=1e-12)
    assert ours[300] == pytest.approx(2e-4, rel=1e-12)
    assert ours[1000] == pytest.approx(2e-4 * 3500 / 4200, rel=1e-12)  # 0.83 of the peak
    # Without a horizon the decay ends at the last step, as before.
    plain = rates(lambda optimizer: learning_rate_schedule(optimizer, replace(job, decay_steps=None)))
    assert plain[1000] == 0.0 and plain[650] == pytest.approx(1e-4, rel=1e-12)
    assert FinetuneConfig(training={"decay_steps": 3000}).training.decay_horizon(7) == 3000
    assert FinetuneConfig().training.decay_horizon(7) == 1000
    with pytest.raises(ValueError, match="decay_steps or decay_epochs, not both"):
        FinetuneConfig(training={"decay_steps": 3000, "decay_epochs": 3})


def test_an_epoch_is_the_full_one_source_batches_of_the_data():
    from tasks.training.batch_plan import batches_per_epoch

    keys = np.arange(23, dtype=np.uint64)
    sources = ["a"] * 10 + ["b"] * 9 + [None] * 4  # 10 // 4 + 9 // 4 + 4 // 4
    assert batches_per_epoch(keys, sources, global_batch=4) == 5
    assert batches_per_epoch(np.concatenate([keys, keys]), sources * 2, global_batch=4) == 5  # duplicates count once


def test_packaged_finetune_configs_validate():
    from pipelines import finetune
    from pipelines.config import CONFIG_DIR, load_config

    paths = sorted((CONFIG_DIR / "finetune").glob("*.yaml"))
    assert {p.stem for p in paths} >= {"smollm2-135m", "gemma3-270m", "llama3-8b", "mistral-7b",
                                       "qwen2-7b", "phi3-mini"}
    for path in paths:
        config = load_config(finetune.FinetuneConfig, path)
        assert (config.lora.r, config.lora.alpha, config.lora.dropout) == (16, 32, 0.05)
        assert config.training.learning_rate == 2e-4 and config.loss.scale == 50
    paper = load_config(finetune.FinetuneConfig, CONFIG_DIR / "finetune" / "llama3-8b.yaml")
    assert (paper.training.steps, paper.training.warmup_steps, paper.training.batch_size,
            paper.encoder.max_length, paper.training.seed) == (1000, 300, 64, 512, 42)
    # The paper's recipe scores duplicate positives as negatives; the local configs mask them.
    from pipelines.layer_loss import LayerLossConfig

    for stage, model in ((finetune.FinetuneConfig, "finetune"), (LayerLossConfig, "layer_loss")):
        for path in sorted((CONFIG_DIR / model).glob("*.yaml")):
            paper_recipe = path.stem in ("llama3-8b", "mistral-7b", "qwen2-7b", "phi3-mini")
            assert load_config(stage, path).loss.mask_duplicate_positives is not paper_recipe, path


def test_finetune_cli_bad_input(tmp_path, capsys, tiny_model_dirs, ray_cluster, monkeypatch):
    from pipelines.cli import main
    from tests.conftest import TRIPLETS

    monkeypatch.delenv("LAYERCUT_DATA_ROOT", raising=False)
    flags = ["finetune", "--output-dir", str(tmp_path), "--no-progress"]
    overrides = [f"model.name_or_path={tiny_model_dirs['llama']}", f"data.source={TRIPLETS}",
                 "workers.num_workers=2"]
    contradicting = tmp_path / "ds.json"
    contradicting.write_text(json.dumps({"zero_optimization": {"stage": 3}}))
    no_negatives = tmp_path / "pairs.jsonl"
    no_negatives.write_text("\n".join(json.dumps({"query": f"q{i}", "positive": f"p{i}", "negative": None})
                                      for i in range(10)))
    (tmp_path / "changed" / "ray" / "train" / "step-0000004").mkdir(parents=True)
    (tmp_path / "changed" / "fingerprint.json").write_text('{"fingerprint": "another"}')
    cases = {
        "no depth": ([*flags, *overrides], "--layers"),
        "layers out of range": ([*flags, "--layers", "7", *overrides], "out of range"),
        "fraction out of range": ([*flags, "--layers", "prune:1.5", *overrides], "a prune fraction lies in [0, 1)"),
        "bare fraction": ([*flags, "--layers", "0.3", *overrides], "depth 0.3 is ambiguous: write prune:0.3"),
        "unknown zero stage": ([*flags, "--layers", "2", *overrides, "deepspeed.zero_stage=4"], "deepspeed.zero_stage"),
        "contradicting deepspeed json": ([*flags, "--layers", "2", *overrides, f"deepspeed.config_file={contradicting}"],
                                         "contradicts the run config"),
        "batch larger than data": ([*flags, "--layers", "2", *overrides, "training.batch_size=200"],
                                   "larger than the data"),
        "no usable rows": ([*flags, "--layers", "2", *overrides, f"data.source={no_negatives}"], "no usable rows"),
        "changed config": ([*flags, "--layers", "2", "--name", "changed", *overrides], "different configuration"),
        "unknown key": ([*flags, "--layers", "2", *overrides, "training.stepz=3"], "training.stepz: unknown key"),
    }
    for name, (argv, message) in cases.items():
        code = main(argv)
        lines = capsys.readouterr().err.strip().splitlines()
        assert code == 2, (name, lines[-3:])
        assert lines[-1].startswith("layercut: error:") and message in lines[-1], (name, lines[-1])


def test_user_errors_surface_from_ray_tasks_and_train_failures(ray_cluster):
    import ray

    from pipelines.ray_runtime import user_errors_from_ray

    @ray.remote
    def fails():
        raise LayercutError("bad input inside a task")

    with pytest.raises(LayercutError, match="^bad input inside a task$"):
        with user_errors_from_ray():
            ray.get(fails.remote())

    class TrainFailure(RuntimeError):  # the shape of Ray Train's TrainingFailedError
        def __init__(self, failures):
            super().__init__("training failed")
            self.worker_failures = failures

    with pytest.raises(LayercutError, match="^from worker 1$"):
        with user_errors_from_ray():
            raise TrainFailure({0: RuntimeError("peer died"), 1: LayercutError("from worker 1")})
    with pytest.raises(ValueError, match="not ours"):
        with user_errors_from_ray():
            raise ValueError("not ours")


def test_train_worker_placement_is_read_back_from_every_ranks_checkpoint_part(tmp_path):
    """Where each Train worker rank ran (tasks.training.train_loop.worker_placement, a file in each rank's
    part of a checkpoint) comes back to the driver rank by rank, as the files say; a checkpoint
    written before placements were recorded gives none rather than an error."""
    from ray.train import Checkpoint

    from pipelines.finetune import _placement
    from tasks.training.train_loop import PLACEMENT_FILE

    written = [{"rank": rank, "node_id": node, "node_ip": "10.0.0.7"} for rank, node in enumerate(("n1", "n2"))]
    for entry in written:
        (tmp_path / PLACEMENT_FILE.format(rank=entry["rank"])).write_text(json.dumps(entry))
    assert _placement(Checkpoint.from_directory(str(tmp_path)), 2) == written
    older = tmp_path / "older"
    older.mkdir()
    assert _placement(Checkpoint.from_directory(str(older)), 2) == []

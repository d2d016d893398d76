"""A run directory on an object store (pipelines/run_store/object_store.py), against a real S3
server on localhost (moto's, started here): what the store holds is read back with boto3, an
S3 client independent of the pyarrow filesystem the run store writes through."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import SHARED_DATA, TRIPLETS
from pipelines.cli import main
from pipelines.run_store.object_store import MANIFEST
from pipelines.run_store.run import RunStore
from tasks.errors import LayercutError

BUCKET = "layercut-test"


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server on a free localhost port, a bucket on it, and the AWS_* variables that
    point every client of this process (pyarrow, boto3) at it; a boto3 client is returned."""
    try:
        import boto3
        from moto.server import ThreadedMotoServer
    except ImportError:
        pytest.fail("moto[server] is not installed: pip install -c constraints.txt -e '.[dev]'")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    settings = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://{host}:{port}"}
    before = {key: os.environ.get(key) for key in settings}
    os.environ.update(settings)
    client = boto3.client("s3")
    client.create_bucket(Bucket=BUCKET)
    yield client
    for key, value in before.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    server.stop()


def _keys(client, prefix: str) -> list[str]:
    """Every object under ``prefix``, as the server lists them, but for the empty 'folder/'
    markers pyarrow leaves behind when it deletes the last object of a folder."""
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return sorted(item["Key"] for page in pages for item in page.get("Contents", [])
                  if not item["Key"].endswith("/"))


def _body(client, key: str) -> bytes:
    return client.get_object(Bucket=BUCKET, Key=key)["Body"].read()


def test_files_round_trip_list_and_guard_on_the_store(s3):
    store = RunStore(f"s3://{BUCKET}/unit/run").create()
    assert str(store) == f"s3://{BUCKET}/unit/run"
    store.files.write_json("summary.json", {"mean": 0.5, "fingerprint": "abc"})
    store.files.write_csv("table.csv", ["layers", "loss"], [[1, 2.5], [2, 1.5]])
    batches = store.items("batches", "batch-{key:05d}.json")
    for key in (3, 1):
        batches.save(key, {"batch": key})
    store.guard("batches/fingerprint.json").record({"seed": 1})

    assert _keys(s3, "unit/run/") == ["unit/run/batches/batch-00001.json", "unit/run/batches/batch-00003.json",
                                      "unit/run/batches/fingerprint.json", "unit/run/summary.json",
                                      "unit/run/table.csv"]
    assert json.loads(_body(s3, "unit/run/summary.json")) == {"mean": 0.5, "fingerprint": "abc"}
    assert _body(s3, "unit/run/table.csv") == b"layers,loss\n1,2.5\n2,1.5\n"
    assert store.files.names("batches", "batch-*.json") == ["batches/batch-00001.json", "batches/batch-00003.json"]
    assert store.files.names("") == ["batches", "summary.json", "table.csv"]
    assert store.files.names("nothing") == []
    assert batches.done(range(5)) == [1, 3] and batches.load(3) == {"batch": 3}
    assert store.finished("summary.json", "abc", announce=False) == {"mean": 0.5, "fingerprint": "abc"}
    assert store.finished("summary.json", "other", announce=False) is None
    with pytest.raises(LayercutError, match=r"holds results of a different configuration \(fingerprint"):
        store.guard("batches/fingerprint.json").check({"seed": 2}, has_results=True, refusal=_refusal())
    with pytest.raises(FileNotFoundError):
        store.files.read_text("missing.json")
    assert store.files.tree("") == ["batches/batch-00001.json", "batches/batch-00003.json",
                                    "batches/fingerprint.json", "summary.json", "table.csv"]
    assert store.files.tree("batches") == store.files.tree("")[:3] and store.files.tree("nothing") == []


def _refusal():
    from pipelines.run_store.guard import Refusal

    return Refusal("results", "of a different configuration", "choose another --name")


def test_a_replace_is_whole_and_a_failed_write_leaves_the_old_object(s3):
    files = RunStore(f"s3://{BUCKET}/replace").files
    files.write_text("plot.png", b"old")
    with pytest.raises(RuntimeError):
        with files.staged_file("plot.png") as staging:
            staging.write_bytes(b"half of the new")
            raise RuntimeError("the writer failed")
    assert _body(s3, "replace/plot.png") == b"old"
    with files.staged_file("plot.png") as staging:
        assert staging.suffix == ".png"  # writers that infer the format from the name get it
        staging.write_bytes(b"new")
    assert _body(s3, "replace/plot.png") == b"new"
    assert _keys(s3, "replace/") == ["replace/plot.png"]  # no staging object ever went up


# A process killed in the middle of an upload: 12 MiB go up in pieces (pyarrow sends the first
# 10 MiB as a part of a multipart upload), then the process dies without closing the stream.
_CRASH = """
import os, pyarrow.fs as fs
s3, path = fs.FileSystem.from_uri({uri!r})
stream = s3.open_output_stream(path)
for _ in range(12):
    stream.write(b"x" * (1 << 20))
os._exit(1)
"""


def test_a_crash_mid_upload_leaves_no_object_and_a_rerun_redoes_the_unit(s3):
    store = RunStore(f"s3://{BUCKET}/crash")
    batches = store.items("batches", "batch-{key:05d}.json")
    batches.save(0, {"batch": 0})
    store.files.write_text("batches/batch-00002.json", b"old")
    for name in ("batch-00001.json", "batch-00002.json"):
        crashed = subprocess.run([sys.executable, "-c", _CRASH.format(uri=f"s3://{BUCKET}/crash/batches/{name}")],
                                 env=os.environ, capture_output=True, text=True, timeout=120)
        assert crashed.returncode == 1, crashed.stderr
    uploads = s3.list_multipart_uploads(Bucket=BUCKET, Prefix="crash/").get("Uploads", [])
    assert uploads, "the crashed writer should have started a multipart upload"
    assert _keys(s3, "crash/") == ["crash/batches/batch-00000.json", "crash/batches/batch-00002.json"]
    assert _body(s3, "crash/batches/batch-00002.json") == b"old"
    assert batches.done(range(3)) == [0, 2]  # unit 1 is pending: a rerun computes it


def test_a_directory_counts_only_with_its_manifest_and_is_replaced_whole(s3):
    files = RunStore(f"s3://{BUCKET}/dirs").files
    with files.staged_directory("model") as staging:
        (staging / "config.json").write_text("{}")
        (staging / "sub").mkdir()
        (staging / "sub" / "weights.bin").write_bytes(b"w1")
    assert _keys(s3, "dirs/") == ["dirs/model/.layercut-complete.json", "dirs/model/config.json",
                                  "dirs/model/sub/weights.bin"]
    assert json.loads(_body(s3, f"dirs/model/{MANIFEST}")) == {"files": ["config.json", "sub/weights.bin"]}
    assert files.exists("model")
    with files.staged_directory("model") as staging:
        (staging / "config.json").write_text('{"v": 2}')
    assert _keys(s3, "dirs/") == ["dirs/model/.layercut-complete.json", "dirs/model/config.json"]
    # A directory whose upload stopped before its manifest is not there for a rerun.
    s3.delete_object(Bucket=BUCKET, Key=f"dirs/model/{MANIFEST}")
    assert not files.exists("model") and files.exists("model/config.json")


# A process that has none of the driver's AWS_* variables (as Ray's workers, started before
# them or on another node) gets the store's files pickled and writes through them.
_CHILD = """
import pickle, sys
files = pickle.loads(sys.stdin.buffer.read())
files.write_text("from-child.txt", "written by a process without AWS_* variables")
import pyarrow.fs
pyarrow.fs.finalize_s3()  # pyarrow's S3 client shut down before the interpreter's exit
"""


def test_the_stores_files_work_in_a_process_without_the_aws_variables(s3):
    import pickle

    from conftest import REPO

    files = RunStore(f"s3://{BUCKET}/portable").files.for_task()
    env = {key: value for key, value in os.environ.items() if not key.startswith("AWS_")}
    env["PYTHONPATH"] = str(REPO)
    child = subprocess.run([sys.executable, "-c", _CHILD], input=pickle.dumps(files), env=env,
                           capture_output=True, timeout=120)
    assert child.returncode == 0, child.stderr.decode()[-2000:]
    assert _body(s3, "portable/from-child.txt") == b"written by a process without AWS_* variables"
    assert files.storage("ray") == (files.fs, f"{BUCKET}/portable/ray")
    assert files.where("model") == f"s3://{BUCKET}/portable/model"


def test_a_missing_bucket_is_one_line_before_any_work(s3):
    with pytest.raises(LayercutError, match=r"^output directory s3://no-such-bucket/x: bucket "
                                            r"no-such-bucket does not exist; create it first$"):
        RunStore("s3://no-such-bucket/x").create()


def test_an_endpoint_that_does_not_answer_is_one_line(s3, monkeypatch):
    from conftest import free_port

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    with pytest.raises(LayercutError) as refused:
        RunStore(f"s3://{BUCKET}/x").create()
    message = str(refused.value)
    assert message.startswith(f"output directory s3://{BUCKET}/x: ") and "\n" not in message
    assert "Could not connect" in message and message.endswith("(credentials and endpoint come from "
                                                               "AWS_* variables, see README)")


def _local_and_stored(s3, local, prefix: str) -> dict[str, tuple[bytes, bytes]]:
    """{name: (the local run's bytes, the stored run's bytes)} of every file of the local run
    directory ``local``; the stored run under ``prefix`` must hold the same names, no more."""
    names = sorted(path.relative_to(local).as_posix() for path in local.rglob("*") if path.is_file())
    assert [key[len(prefix):] for key in _keys(s3, prefix)] == names
    return {name: ((local / name).read_bytes(), _body(s3, prefix + name)) for name in names}


def _upload(client, folder, prefix: str) -> None:
    """Every file of the local ``folder`` as an object under ``prefix`` (boto3, no manifest: a
    model uploaded by other means than layercut)."""
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            client.put_object(Bucket=BUCKET, Key=prefix + path.relative_to(folder).as_posix(),
                              Body=path.read_bytes())


def test_an_e5_folder_on_the_store_reads_as_the_local_one(s3, ray_cluster, tmp_path):
    """Training data on the store: an E5 folder of <source>.jsonl files (not Parquet) is read by
    Ray Data's tasks, whose processes have none of this process's AWS_* variables, with each
    row's source and instruction as from the same folder on disk."""
    import pyarrow as pa

    from tasks.training.data import annotated_triplets

    folder = tmp_path / "echo-data"
    folder.mkdir()
    for source, count in (("allnli", 4), ("nq", 3)):
        (folder / f"{source}.jsonl").write_text("".join(json.dumps(
            {"query": f"{source} query {i}", "positive": f"{source} positive {i}",
             "negative": f"{source} negative {i}"}) + "\n" for i in range(count)))
    _upload(s3, folder, "data/echo-data/")

    def rows(path: str):
        annotated, report = annotated_triplets(path, seed=0, layout="e5")
        table = pa.concat_tables(list(annotated.iter_batches(batch_format="pyarrow")))
        return sorted(zip(*(table[name].to_pylist() for name in ("query", "instruction", "source")))), report

    local, local_report = rows(str(folder))
    stored, stored_report = rows(f"s3://{BUCKET}/data/echo-data")
    assert len(local) == 7 and stored == local
    assert stored_report["rows"] == 7 and stored_report["skipped_rows"] == 0


def test_a_model_directory_is_fetched_once_and_again_when_the_store_changes(s3, tiny_model_dirs, tmp_path):
    from tasks.object_store import SOURCE_RECORD, fetch_directory

    model = Path(tiny_model_dirs["llama"])
    _upload(s3, model, "models/tiny/")
    uri, cache = f"s3://{BUCKET}/models/tiny", tmp_path / "cache"
    copy = fetch_directory(uri, cache)
    assert copy.parent == cache and copy.name.startswith("tiny-")
    names = sorted(path.relative_to(model).as_posix() for path in model.rglob("*") if path.is_file())
    assert sorted(path.relative_to(copy).as_posix() for path in copy.rglob("*")
                  if path.is_file() and path.name != SOURCE_RECORD) == names
    assert all((copy / name).read_bytes() == (model / name).read_bytes() for name in names)
    # Unchanged on the store: the same copy, not downloaded again.
    stamp = (copy / "model.safetensors").stat().st_mtime_ns
    assert fetch_directory(uri + "/", cache) == copy and (copy / "model.safetensors").stat().st_mtime_ns == stamp
    # Changed on the store (a sweep writes the scores into the card): the changed object is
    # fetched again; the unchanged weights come from the old copy (the same file, linked).
    weights = (copy / "model.safetensors").stat().st_ino
    s3.put_object(Bucket=BUCKET, Key="models/tiny/README.md", Body=b"a new card")
    assert fetch_directory(uri, cache) == copy and (copy / "README.md").read_bytes() == b"a new card"
    assert (copy / "model.safetensors").stat().st_ino == weights
    assert (copy / "model.safetensors").read_bytes() == (model / "model.safetensors").read_bytes()
    # Another export to the same URI: every changed object fetched, no stale file kept.
    s3.put_object(Bucket=BUCKET, Key="models/tiny/model.safetensors", Body=b"other weights")
    s3.delete_object(Bucket=BUCKET, Key="models/tiny/README.md")
    fetch_directory(uri, cache)
    assert (copy / "model.safetensors").read_bytes() == b"other weights" and not (copy / "README.md").exists()

    # A layercut export is fetched by its manifest: what the manifest lists, no more.
    files = RunStore(f"s3://{BUCKET}/models/export").files
    with files.staged_directory("model") as staging:
        for name in ("config.json", "layercut.json"):
            (staging / name).write_text("{}")
    s3.put_object(Bucket=BUCKET, Key="models/export/model/stray.txt", Body=b"not the export's")
    exported = fetch_directory(f"s3://{BUCKET}/models/export/model", cache)
    assert sorted(path.name for path in exported.iterdir()) == sorted(["config.json", "layercut.json", SOURCE_RECORD])

    # What cannot be loaded is one line naming the URI.
    s3.delete_object(Bucket=BUCKET, Key=f"models/export/model/{MANIFEST}")
    cases = {"models/export/model": "its upload did not finish (no .layercut-complete.json); rerun",
             "models/nothing": "no objects there"}
    s3.put_object(Bucket=BUCKET, Key="models/noconfig/weights.bin", Body=b"0")
    cases["models/noconfig"] = "has no config.json"
    for prefix, message in cases.items():
        with pytest.raises(LayercutError) as refused:
            fetch_directory(f"s3://{BUCKET}/{prefix}", cache)
        assert str(refused.value).startswith(f"model s3://{BUCKET}/{prefix}") and message in str(refused.value)
        assert "\n" not in str(refused.value)


def test_evaluate_writes_its_run_to_s3_equal_to_a_local_run(s3, tiny_model_dirs, capsys, monkeypatch, tmp_path):
    """Stage 3 on the store, of a model on the store: the tiny random Llama on 16 STSBenchmark
    pairs (subsampled, so its items are saved too), in this process. Every file the local run
    (the local model directory) writes is on the store, with the same model identity (its
    content) and scores; mteb's own loader reads the stored result; a rerun reuses it."""
    import mteb

    from conftest import SHARED_DATA

    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)  # a run that wrote anything locally would leave it here
    monkeypatch.setenv("LAYERCUT_CACHE", str(tmp_path / "cache"))
    model = Path(tiny_model_dirs["llama"])  # the same last component: the same mteb model name
    _upload(s3, model, f"models/{model.name}/")
    args = ["evaluate", "--tasks", "STSBenchmark", "--data-root", str(SHARED_DATA), "--name", "tiny",
            "--no-progress", "max_samples_per_split=16", "workers.executor=local"]
    assert main([*args, "--model", tiny_model_dirs["llama"], "--output-dir", str(tmp_path / "local")]) == 0
    capsys.readouterr()
    args = [*args, "--model", f"s3://{BUCKET}/models/{model.name}"]
    argv = [*args, "--output-dir", f"s3://{BUCKET}/evaluate"]
    assert main(argv) == 0, capsys.readouterr().err
    assert [path.name.rsplit("-", 1)[0] for path in (tmp_path / "cache" / "object-store").iterdir()
            if path.is_dir()] == [model.name]  # the fetched copy
    prefix = "evaluate/tiny/"
    assert f"mteb result files in s3://{BUCKET}/{prefix}results" in capsys.readouterr().out
    files = _local_and_stored(s3, tmp_path / "local" / "tiny", prefix)
    assert files["summary.csv"][0] == files["summary.csv"][1]
    assert files["items/STSBenchmark.json"][0] == files["items/STSBenchmark.json"][1]
    assert json.loads(files["fingerprint.json"][0]) == json.loads(files["fingerprint.json"][1])  # same content
    (result,) = [name for name in files if name.endswith("/STSBenchmark.json") and name.startswith("results/")]
    stored = tmp_path / "stored.json"
    stored.write_bytes(files[result][1])
    local_score = mteb.TaskResult.from_disk(tmp_path / "local" / "tiny" / result).get_score()
    assert mteb.TaskResult.from_disk(stored).get_score() == local_score
    assert list(work.iterdir()) == []

    # Finished: reused from the store. Another subsample under the same name: refused by the
    # guard on the store, naming what differs.
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert f"STSBenchmark: main score {local_score:.4f}, reused from s3://{BUCKET}/evaluate/tiny" in err
    assert "STSBenchmark: started" not in err
    assert main([*args[:-2], "max_samples_per_split=20", *args[-2:], "--output-dir", f"s3://{BUCKET}/evaluate"]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "another model or settings" in last and "subsample" in last


def test_the_classifier_writes_its_run_to_s3_equal_to_a_local_run(s3, tiny_causal_lm, ray_cluster, capsys,
                                                                  monkeypatch, tmp_path):
    """evaluate-classifier on the store (the tiny random Llama with its LM head cut to 2 layers,
    zero-shot, 24 test rows in chunks of 8, in this process): the same predictions and summary
    as the local run; the rerun has nothing to do."""
    from conftest import SHARED_DATA

    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    args = ["evaluate-classifier", "--model", tiny_causal_lm, "--layers", "2", "--data-root", str(SHARED_DATA),
            "--name", "tiny", "--no-progress", "max_test_rows=24", "chunk_size=8", "workers.executor=local"]
    assert main([*args, "--output-dir", str(tmp_path / "local")]) == 0
    capsys.readouterr()
    argv = [*args, "--output-dir", f"s3://{BUCKET}/classify"]
    assert main(argv) == 0, capsys.readouterr().err
    assert f"predictions in s3://{BUCKET}/classify/tiny/predictions.csv" in capsys.readouterr().out
    files = _local_and_stored(s3, tmp_path / "local" / "tiny", "classify/tiny/")
    assert len([name for name in files if name.startswith("chunks/")]) == 3
    assert files["predictions.csv"][0] == files["predictions.csv"][1]
    local, stored = (json.loads(data) for data in files["summary.json"])
    assert {**stored, "texts_per_second": None} == {**local, "texts_per_second": None}
    assert list(work.iterdir()) == []
    assert main(argv) == 0
    assert "is finished; nothing to do" in capsys.readouterr().err


@pytest.mark.slow
def test_stage1_writes_to_s3_and_a_rerun_resumes_from_it(s3, tiny_model_dirs, ray_cluster, capsys,
                                                           monkeypatch, tmp_path):
    monkeypatch.delenv("LAYERCUT_DATA_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)  # a run that wrote anything locally would leave it here
    argv = ["layer-loss", "--output-dir", f"s3://{BUCKET}/runs", "--name", "tiny", "--no-progress",
            f"model.name_or_path={tiny_model_dirs['llama']}", f"data.source={TRIPLETS}",
            "data.num_batches=4", "data.batch_size=4", "workers.num_workers=1", "workers.cpus_per_worker=1"]
    assert main(argv) == 0, capsys.readouterr().err
    prefix = "runs/tiny/"
    batches = [f"{prefix}batches/batch-0000{i}.json" for i in range(4)]
    assert _keys(s3, prefix) == sorted([*batches, f"{prefix}batches/fingerprint.json", f"{prefix}config.yaml",
                                        f"{prefix}layer_loss.png", f"{prefix}layer_losses.csv",
                                        f"{prefix}layer_losses.json", f"{prefix}selection.json"])
    assert list(tmp_path.iterdir()) == []
    assert _body(s3, f"{prefix}layer_loss.png")[:8] == b"\x89PNG\r\n\x1a\n"

    def losses():
        return np.array([row["loss"] for row in json.loads(_body(s3, f"{prefix}layer_losses.json"))["layers"]])

    full = losses()
    per_batch = [json.loads(_body(s3, key))["losses"] for key in batches]
    np.testing.assert_allclose(full, np.mean(per_batch, axis=0), rtol=1e-9)  # the mean of the stored batches
    selection = json.loads(_body(s3, f"{prefix}selection.json"))
    assert selection["small"]["layers"] == 1 + int(np.argmin(full[:len(full) // 2]))

    # The rerun reads the bucket: batch 0 replaced by a marker must be reused, not recomputed;
    # batch 2, deleted, must be computed again.
    marker = json.loads(_body(s3, batches[0]))
    s3.put_object(Bucket=BUCKET, Key=batches[0], Body=json.dumps({**marker, "losses": [7.0] * len(full)}))
    s3.delete_object(Bucket=BUCKET, Key=batches[2])
    assert main(argv) == 0, capsys.readouterr().err
    assert batches[2] in _keys(s3, prefix)
    np.testing.assert_allclose(losses(), full + (7.0 - np.array(marker["losses"])) / 4, rtol=1e-9)
    # Another configuration in the same run directory is refused, naming the differing key.
    assert main([*argv, "loss.scale=20"]) == 2
    assert "holds results of a different configuration" in capsys.readouterr().err


# Stage 2 on the store: a tiny random Llama cut to 2 layers, 4 steps of 2 triplets on 1 CPU worker,
# a checkpoint every 2 steps; the decay horizon is fixed, so a 2-step run is the 4-step run's start.
FINETUNE = ["--layers", "2", "--no-progress", "training.steps=4", "training.batch_size=2",
            "training.warmup_steps=1", "training.decay_steps=4", "training.learning_rate=1e-3",
            "training.checkpoint_every=2", "encoder.max_length=32", "workers.num_workers=1",
            "workers.cpus_per_worker=1"]
MODEL_FILES = {"config.json", "model.safetensors", "layercut.json", "README.md", "tokenizer.json",
               "modules.json", "sentence_bert_config.json", MANIFEST}


def _finetune_args(tiny_model_dirs, output: str, name: str, *extra: str) -> list[str]:
    return ["finetune", "--output-dir", output, "--name", name, *FINETUNE,
            f"model.name_or_path={tiny_model_dirs['llama']}", f"data.source={TRIPLETS}", *extra]


def _log(text: str) -> list[dict[str, str]]:
    import csv
    import io

    return list(csv.DictReader(io.StringIO(text)))


def _download(client, prefix: str, target) -> None:
    """Every object under ``prefix`` into the local folder ``target`` (boto3, not pyarrow)."""
    for key in _keys(client, prefix):
        path = target / key[len(prefix):]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(_body(client, key))


def _scratch() -> set:
    """The temporary folders an object-store run makes on local disk: the run store's uploads
    (layercut-upload-*) and Ray's downloads of a remote checkpoint (checkpoint_tmp_*)."""
    import tempfile
    from pathlib import Path

    root = Path(tempfile.gettempdir())
    return {*root.glob("layercut-upload-*"), *root.glob("checkpoint_tmp_*")}


def _weights(model_dir) -> dict:
    from safetensors.torch import load_file

    return load_file(str(model_dir / "model.safetensors"))


@pytest.fixture(scope="module")
def local_finetune(tiny_model_dirs, ray_cluster, tmp_path_factory, s3):
    """The reference: the same command on a local directory. (``s3`` first: this process's
    AWS_* variables are set, Ray's processes, started before, never saw them.)"""
    output = tmp_path_factory.mktemp("local-finetune")
    assert main(_finetune_args(tiny_model_dirs, str(output), "tiny")) == 0
    return output / "tiny"


def test_finetune_writes_its_run_to_s3_equal_to_a_local_run(s3, local_finetune, tiny_model_dirs, capsys,
                                                            monkeypatch, tmp_path):
    import torch
    from transformers import AutoModel

    monkeypatch.delenv("LAYERCUT_DATA_ROOT", raising=False)
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)  # a run that wrote anything locally would leave it here
    argv = _finetune_args(tiny_model_dirs, f"s3://{BUCKET}/finetune", "tiny")
    scratch = _scratch()
    assert main(argv) == 0, capsys.readouterr().err
    assert _scratch() <= scratch  # the export's and the checkpoints' local copies are gone
    prefix = "finetune/tiny/"
    keys = _keys(s3, prefix)
    ours = {key[len(prefix):] for key in keys if not key.startswith(f"{prefix}ray/") and "/" not in key[len(prefix):]}
    assert ours == {"config.yaml", "fingerprint.json", "loss_curve.png", "summary.json", "training_log.csv"}
    assert MODEL_FILES <= {key.rsplit("/", 1)[1] for key in keys if key.startswith(f"{prefix}model/")}
    for step in ("step-0000002", "step-0000004"):  # Ray Train's checkpoints, written by its own processes
        assert f"{prefix}ray/train/{step}/trainer_state.json" in keys
    assert list(work.iterdir()) == []
    assert _body(s3, f"{prefix}loss_curve.png")[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads(_body(s3, f"{prefix}summary.json"))
    assert summary["artifact"] == f"s3://{BUCKET}/{prefix}model" and summary["steps"] == 4

    # The same losses step by step, and the same exported weights, as the local run.
    stored = _log(_body(s3, f"{prefix}training_log.csv").decode())
    local = _log((local_finetune / "training_log.csv").read_text())
    assert [row["step"] for row in stored] == ["1", "2", "3", "4"]
    np.testing.assert_allclose([float(row["loss"]) for row in stored],
                               [float(row["loss"]) for row in local], rtol=0, atol=1e-6)
    downloaded = tmp_path / "model"
    _download(s3, f"{prefix}model/", downloaded)
    assert json.loads((downloaded / MANIFEST).read_text())["files"][-1] != MANIFEST
    theirs, mine = _weights(downloaded), _weights(local_finetune / "model")
    assert theirs.keys() == mine.keys()
    for name in mine:
        torch.testing.assert_close(theirs[name], mine[name], rtol=0, atol=0)
    backbone = AutoModel.from_pretrained(downloaded)
    assert backbone.config.num_hidden_layers == 2

    # Finished: nothing to do. Another configuration: refused by the guard on the store.
    capsys.readouterr()
    assert main(argv) == 0
    assert "nothing to do" in capsys.readouterr().err
    assert main([*argv, "training.learning_rate=5e-4"]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"layercut: error: run directory s3://{BUCKET}/finetune/tiny holds a run with a different")

    # A crash in the middle of the export's upload: the manifest (written last) and the summary
    # (after it) are missing, so the run is unfinished. The rerun restores the final checkpoint
    # from the store, trains nothing (the checkpoints and the log are unchanged) and uploads the
    # model whole again. (Mid-training resume is Ray Train's own restore from the same storage
    # path; on a filesystem it is tests/test_finetune.py's killed and rerun job.)
    weights = _body(s3, f"{prefix}model/model.safetensors")
    for name in ("summary.json", f"model/{MANIFEST}", "model/model.safetensors"):
        s3.delete_object(Bucket=BUCKET, Key=f"{prefix}{name}")
    checkpoints = {key: s3.head_object(Bucket=BUCKET, Key=key)["ETag"]
                   for key in _keys(s3, f"{prefix}ray/train/") if "/step-" in key}
    log = _body(s3, f"{prefix}training_log.csv")
    assert main(argv) == 0, capsys.readouterr().err
    assert "nothing to do" not in capsys.readouterr().err
    assert {key: s3.head_object(Bucket=BUCKET, Key=key)["ETag"]
            for key in _keys(s3, f"{prefix}ray/train/") if "/step-" in key} == checkpoints
    assert _body(s3, f"{prefix}training_log.csv") == log
    assert _body(s3, f"{prefix}model/model.safetensors") == weights
    assert f"{prefix}model/{MANIFEST}" in _keys(s3, prefix) and f"{prefix}summary.json" in _keys(s3, prefix)
    assert list(work.iterdir()) == [] and _scratch() <= scratch


def _sweep_config(path, model_dir: str):
    """The cheapest whole sweep (tests/test_main_job.py's toy, cut down): one model, the
    contrastive route at one depth (2 of the tiny Llama's 6 layers), no L3Prune depth, no
    untrained baseline, stage 1 on one batch, 2 fine-tuning steps on one CPU worker,
    STSBenchmark cut to 16 pairs."""
    import yaml

    model = {"model": {"name_or_path": model_dir}}
    cpu = {"use_gpu": False, "num_workers": 1, "cpus_per_worker": 1}
    path.write_text(yaml.safe_dump({
        "name": "s3", "grid": [2], "l3prune": False, "untrained_baseline": False,
        "data_root": str(SHARED_DATA),
        "models": [{"config": "smollm2-135m", "label": "tiny", "objectives": ["contrastive"]}],
        "overrides": {
            "layer_loss": {**model, "data": {"num_batches": 1, "batch_size": 4}, "workers": cpu},
            "finetune": {**model, "encoder": {"max_length": 32}, "workers": cpu,
                         "training": {"steps": 2, "warmup_steps": 0, "batch_size": 2,
                                      "checkpoint_every": 2}},
            "evaluate": {"tasks": ["STSBenchmark"], "max_samples_per_split": 16, "workers": cpu}},
        "latency": {"texts": 2, "batch_size": 1}}))
    return path


@pytest.mark.slow
def test_the_sweep_writes_its_run_to_s3_and_a_rerun_trains_nothing(s3, tiny_causal_lm, ray_cluster, capsys,
                                                                    monkeypatch, tmp_path):
    monkeypatch.delenv("LAYERCUT_DATA_ROOT", raising=False)
    config = _sweep_config(tmp_path / "sweep.yaml", tiny_causal_lm)
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)  # a run that wrote anything locally would leave it here
    argv = ["run", "--config", str(config), "--output-dir", f"s3://{BUCKET}/sweep", "--no-progress"]
    scratch = _scratch()
    assert main(argv) == 0, capsys.readouterr().err
    first = capsys.readouterr().out
    assert _scratch() <= scratch  # the uploads' local copies are gone
    prefix, trial = "sweep/s3/", "sweep/s3/trials/tiny-l2/"
    keys = _keys(s3, prefix)
    for name in ("report.md", "summary.json", "report.csv", "sweep.json", "config.yaml",
                 "plots/layer_loss-tiny.png", "plots/score_vs_parameters.png", "plots/training_loss.png",
                 "layer-loss/tiny/selection.json", "layer-loss/tiny/layer_losses.json"):
        assert prefix + name in keys, name
    assert _body(s3, f"{prefix}plots/training_loss.png")[:8] == b"\x89PNG\r\n\x1a\n"
    assert MODEL_FILES <= {key.rsplit("/", 1)[1] for key in keys if key.startswith(f"{trial}finetune/model/")}
    assert f"{trial}finetune/summary.json" in keys and f"{trial}finetune/training_log.csv" in keys
    assert f"{trial}finetune/ray/train/step-0000002/trainer_state.json" in keys
    assert f"{trial}evaluate/summary.md" in keys
    assert any(key.startswith(f"{prefix}tune-") for key in keys)  # Tune's experiment, resumable from there
    assert list(work.iterdir()) == []
    assert main([*argv, "--plan"]) == 0  # the preview reads sweep.json and stage 1's picks there
    assert "tiny-l2: 2/6 layers" in capsys.readouterr().out

    result = json.loads(_body(s3, f"{trial}result.json"))
    assert result["artifact"] == f"s3://{BUCKET}/{trial}finetune/model" and result["layers"] == 2
    assert result["training_log"] == f"s3://{BUCKET}/{trial}finetune/training_log.csv"
    assert "tiny-l2 (layercut)" in _body(s3, f"{trial}finetune/model/README.md").decode()  # the card's scores
    summary = json.loads(_body(s3, f"{prefix}summary.json"))
    assert summary["run_dir"] == f"s3://{BUCKET}/sweep/s3" and summary["failed"] == []
    assert [row["layers"] for row in summary["trials"]] == [2]
    report = _body(s3, f"{prefix}report.md")
    assert _rendered(first).startswith(report.decode()) and "| tiny | 2/6 |" in report.decode()

    # The same command again: the trial is finished (its result.json is not written again),
    # nothing is trained, and the report is the same.
    etag = s3.head_object(Bucket=BUCKET, Key=f"{trial}result.json")["ETag"]
    checkpoints = [key for key in keys if "/ray/train/" in key]
    assert main(argv) == 0, capsys.readouterr().err
    output = capsys.readouterr()
    assert f"resuming the Tune experiment in s3://{BUCKET}/sweep/s3/tune-" in output.err, output.err
    assert "Trial status: 1 TERMINATED" in output.out  # Tune's word: finished, not run again
    assert s3.head_object(Bucket=BUCKET, Key=f"{trial}result.json")["ETag"] == etag
    assert [key for key in _keys(s3, prefix) if "/ray/train/" in key] == checkpoints
    assert _body(s3, f"{prefix}report.md") == report and _rendered(output.out) == _rendered(first)
    assert list(work.iterdir()) == []


def _rendered(out: str) -> str:
    """What `layercut run` printed after Tune's tables: the report and where it is."""
    return out[out.index("# layercut sweep: "):]

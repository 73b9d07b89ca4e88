"""Training beyond one process and resuming: configuration checks, DDP sharding, the TrainJob/PyTorchJob launcher
against the Kubernetes API stand-in (and the CRD schemas), the pipeline's train task, resume after SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import torch
import yaml
from kubernetes import client
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pipeline_helpers import pipeline_run_config
from standins.kubernetes_api import JobScript, KubeApiStandIn

from lulc.cli import app
from lulc_core.config import RunConfig, load_run_config
from lulc_core.dataset import ChipDataset, ShardedSampler
from lulc_core.errors import ConfigError
from lulc_core.split import split_tiles
from pipelines.trainjob import JobRunner, JobSpec, TrainJobError, build_job, train_on_cluster

REPO = Path(__file__).resolve().parents[1]
SCHEMAS = REPO.parent / "shared" / "schemas" / "jsonschema"
PYTHON = sys.executable
pytestmark = pytest.mark.usefixtures("torch_single_thread")


def _config(tiles: Any, tmp: Path, **training: Any) -> Path:
    """A run YAML over the synthetic tiles (CPU, deterministic)."""
    doc = {
        "name": "distributed",
        "work_dir": str(tmp / "work"),
        "area": {"bbox": [9.0, 54.0, 9.1, 54.1], "time_frames": [{"start": "2023-06-01", "end": "2023-06-30"}]},
        "imagery": {"store": "local", "local_dir": str(tiles.imagery_dir), "bands": tiles.bands},
        "labels": {"label_set": str(tiles.label_set_path), "osm_file": str(tiles.root / "osm.geojson")},
        "data": {"chip_size": 32},
        "training": {"epochs": 2, "batch_size": 4, "accelerator": "cpu", "early_stopping_patience": 50, **training},
    }
    path = tmp / "run.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.fixture(scope="module")
def prepared(synthetic_training_tiles: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Stats and split files of the synthetic tiles, as `lulc model train` reads them."""
    root = tmp_path_factory.mktemp("distributed")
    s = synthetic_training_tiles
    split = split_tiles(s.tiles, 0.25, 0.25, seed=3)
    split.save(root / "split.json")
    s.stats.save(root / "stats.json")
    return {"root": root, "stats": root / "stats.json", "split": root / "split.json"}


def _train_args(cfg: Path, tiles: Any, prepared: dict[str, Path], out: Path) -> list[str]:
    return [
        *("model", "train", "-c", str(cfg), "-i", str(tiles.imagery_dir), "-l", str(tiles.labels_dir)),
        *("-s", str(prepared["stats"]), "--split", str(prepared["split"]), "-o", str(out), "--no-progress"),
    ]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


# ------------------------------------------------------------------------------------------ configuration


@pytest.mark.parametrize(
    ("training", "pipeline", "field", "fix"),
    [
        ({"strategy": "fsdp", "accelerator": "cpu"}, {}, "training.strategy", "use training.strategy 'ddp' on CPU"),
        ({"num_nodes": 2}, {}, "training.num_nodes", "set training.launcher to 'trainjob' or 'pytorchjob'"),
        ({"num_nodes": 2, "launcher": "trainjob"}, {}, "pipeline.cache_pvc", "set pipeline.cache_pvc"),
    ],
)
def test_ddp_settings_refused_at_configuration_time(
    training: dict[str, Any], pipeline: dict[str, Any], field: str, fix: str
) -> None:
    raw = pipeline_run_config(gpu=False).model_dump(mode="json")
    raw["training"] |= training
    raw["pipeline"] = raw["pipeline"] | {"cache_pvc": None} | pipeline
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"lulc-ddp-{os.getpid()}.yaml"
    path.write_text(yaml.safe_dump(raw))
    try:
        with pytest.raises(ConfigError) as info:
            load_run_config(path)
    finally:
        path.unlink()
    assert info.value.field == field and fix in str(info.value) and "\n" not in str(info.value)


def test_ddp_more_devices_than_exist_refused_before_anything_starts(
    synthetic_training_tiles: Any, prepared: dict[str, Path], tmp_path: Path
) -> None:
    cfg = _config(synthetic_training_tiles, tmp_path)
    out = tmp_path / "out"
    cores = len(os.sched_getaffinity(0))
    result = CliRunner().invoke(
        app, [*_train_args(cfg, synthetic_training_tiles, prepared, out), "--devices", str(cores + 1)]
    )
    assert isinstance(result.exception, ConfigError) and result.exception.field == "training.devices"
    assert f"use <= {cores}" in str(result.exception)
    assert not (out / "checkpoints").exists() and not (out / "logs").exists()
    # several nodes outside a launcher are refused too (the config allows it with a launcher and a PVC)
    cfg2 = _config(synthetic_training_tiles, tmp_path, num_nodes=2, launcher="trainjob")
    raw = yaml.safe_load(cfg2.read_text()) | {"pipeline": {"cache_pvc": "shared"}}
    cfg2.write_text(yaml.safe_dump(raw))
    result = CliRunner().invoke(app, _train_args(cfg2, synthetic_training_tiles, prepared, out))
    assert isinstance(result.exception, ConfigError) and result.exception.field == "training.num_nodes"
    assert "torchrun" in str(result.exception)


# ------------------------------------------------------------------------------------------------- DDP data


def test_ddp_shards_hold_the_single_process_batches(synthetic_training_tiles: Any) -> None:
    s = synthetic_training_tiles
    ds = ChipDataset(s.imagery_dir, s.labels_dir, s.ids, s.stats, chip_size=32, augment=True)
    n, batch = len(ds), 4
    single = ShardedSampler(ds, num_replicas=1, rank=0, shuffle=True, seed=5)
    ranks = [ShardedSampler(ds, num_replicas=2, rank=r, shuffle=True, seed=5) for r in (0, 1)]
    for epoch in (0, 1):
        for sampler in (single, *ranks):
            sampler.set_epoch(epoch)
        whole = list(single)
        shards = [list(r) for r in ranks]
        assert sorted(i for i, _ in whole) == list(range(n))
        assert {i for i, _ in shards[0]}.isdisjoint(i for i, _ in shards[1][: n // 2])
        for k in range(0, n // 2, batch // 2):  # rank batches of batch/2 together = the single batch of `batch`
            together = sorted(shards[0][k : k + batch // 2] + shards[1][k : k + batch // 2])
            assert together == sorted(whole[2 * k : 2 * k + batch])
    # the same (index, seed) gives the same augmented chip; another epoch's seed another transform (mostly)
    first = ds[whole[0]]
    torch.testing.assert_close(ds[whole[0]]["image"], first["image"])
    single.set_epoch(0)
    assert list(single) != whole


def test_ddp_dropout_masks_follow_the_chip_not_the_batch() -> None:
    """SegFormer's dropout and drop-path draw each chip's mask from the chip's seed: a batch of 4 gives the outputs
    of its two halves forwarded apart (as 2 DDP ranks would); other seeds give other masks."""
    from lulc_core.training import SegmentationTask

    torch.manual_seed(0)
    task = SegmentationTask(num_channels=3, num_classes=4)
    task.train()
    task.model.decode_head.batch_norm.eval()  # batch statistics are the other half of the story (GlooSyncBatchNorm)
    image, seeds = torch.randn(4, 3, 32, 32), torch.tensor([11, 12, 13, 14])

    def forward(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), task.noise.batch(s):
            return task(x)

    whole = forward(image, seeds)
    halves = torch.cat([forward(image[:2], seeds[:2]), forward(image[2:], seeds[2:])])
    torch.testing.assert_close(whole, halves, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(whole, forward(image, seeds + 100), atol=1e-4)  # the masks are really drawn


# -------------------------------------------------------------------------------------------------- launcher


def _spec(launcher: str, **kw: Any) -> JobSpec:
    base = {
        "name": "lulc-train-abc123",
        "launcher": launcher,
        "image": "ghcr.io/lulc/lulc:0.1.0",
        "num_nodes": 4,
        "devices": 8,
        "gpu_resource": "nvidia.com/gpu",
        "pvc": "lulc-cache",
        "mount_path": "/var/cache/lulc",
        "train_args": ["-c", "/var/cache/lulc/run.json", "--resume"],
        "node_selector": {"nvidia.com/gpu.product": "NVIDIA-A100"},
        "timeout_s": 3600,
    }
    return JobSpec.model_validate(base | kw)


def _validator(shared: Path, *parts: str) -> jsonschema.Draft202012Validator:
    schema = shared.parent / "schemas" / "jsonschema"
    return jsonschema.Draft202012Validator(json.loads(schema.joinpath(*parts).read_text()))


NODE_SECRETS = {"lulc-neptune": {"NEPTUNE_API_TOKEN": "NEPTUNE_API_TOKEN"}, "lulc-mlflow": {"PW": "MLFLOW_PASSWORD"}}
SECRET_ENV = [
    {"name": "MLFLOW_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "lulc-mlflow", "key": "PW", "optional": True}}},
    {
        "name": "NEPTUNE_API_TOKEN",
        "valueFrom": {"secretKeyRef": {"name": "lulc-neptune", "key": "NEPTUNE_API_TOKEN", "optional": True}},
    },
]


def test_trainjob_object_matches_the_trainer_crd(shared_data: Path) -> None:
    job = build_job(_spec("trainjob", env={"LULC_TRACKING_RUN": "r1"}, secrets=NODE_SECRETS))
    errors = list(_validator(shared_data, "trainer.kubeflow.org", "trainjob_v1alpha1.json").iter_errors(job))
    assert not errors, [e.message for e in errors]
    trainer = job["spec"]["trainer"]
    assert trainer["env"] == [{"name": "LULC_TRACKING_RUN", "value": "r1"}, *SECRET_ENV]  # the tracker's credentials
    assert trainer["numNodes"] == 4 and trainer["numProcPerNode"] == 8  # in spec.trainer, not mlPolicy.torch
    assert trainer["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == "8"
    assert trainer["command"] == ["torchrun"] and trainer["args"][-4:] == [
        "train",
        "-c",
        "/var/cache/lulc/run.json",
        "--resume",
    ]
    assert trainer["args"][2:5] == ["-m", "lulc.cli", "model"]
    # a broken object is caught by the schema (numProcPerNode under mlPolicy.torch is what the README warns about)
    bad = json.loads(json.dumps(job))
    bad["spec"]["mlPolicy"] = {"torch": {"numProcPerNode": 8}}
    assert list(_validator(shared_data, "trainer.kubeflow.org", "trainjob_v1alpha1.json").iter_errors(bad))


def test_pytorchjob_object_matches_the_training_operator_crd(shared_data: Path) -> None:
    job = build_job(_spec("pytorchjob", secrets=NODE_SECRETS))
    errors = list(_validator(shared_data, "kubeflow.org", "pytorchjob_v1.json").iter_errors(job))
    assert not errors, [e.message for e in errors]
    replicas = job["spec"]["pytorchReplicaSpecs"]
    assert replicas["Worker"]["template"]["spec"]["containers"][0]["env"] == SECRET_ENV
    assert replicas["Master"]["replicas"] == 1 and replicas["Worker"]["replicas"] == 3
    args = replicas["Master"]["template"]["spec"]["containers"][0]["args"]
    assert "--node-rank=$(RANK)" in args and "--nproc-per-node=8" in args and job["spec"]["nprocPerNode"] == "8"
    single = build_job(_spec("pytorchjob", num_nodes=1))
    assert "Worker" not in single["spec"]["pytorchReplicaSpecs"]


@pytest.fixture
def kube() -> Iterator[KubeApiStandIn]:
    with KubeApiStandIn() as api:
        yield api


def _api(kube: KubeApiStandIn) -> client.ApiClient:
    return client.ApiClient(client.Configuration(host=kube.url))


def test_trainjob_failure_surfaces_the_pod_reason_and_cleans_up(
    kube: KubeApiStandIn, caplog: pytest.LogCaptureFixture
) -> None:
    kube.job_script = JobScript(outcome="failed", exit_code=137, reason="OOMKilled", message="out of memory")
    runner = JobRunner(_spec("trainjob", num_nodes=2), api_client=_api(kube), poll_interval_s=0.01)
    caplog.set_level("INFO", logger="pipelines.trainjob")
    with pytest.raises(TrainJobError) as info:
        runner.run()
    message = str(info.value)
    assert "failed" in message and "OOMKilled (exit code 137)" in message and "lulc-train-abc123-node-0-0" in message
    assert ("lulc", "trainjobs", "lulc-train-abc123") in kube.deleted and not kube.objects and not kube.pods
    assert "[lulc-train-abc123-node-0-0] epoch 1/2" in caplog.text  # the pods' logs were streamed


def test_pytorchjob_timeout_is_reported_and_cleaned_up(kube: KubeApiStandIn) -> None:
    kube.job_script = JobScript(outcome="hang")
    runner = JobRunner(_spec("pytorchjob", timeout_s=0.3), api_client=_api(kube), poll_interval_s=0.02)
    started = time.monotonic()
    with pytest.raises(TrainJobError, match=r"did not finish in 0.3 s .*launcher_timeout_minutes"):
        runner.run()
    assert time.monotonic() - started < 10
    assert ("lulc", "pytorchjobs", "lulc-train-abc123") in kube.deleted
    created = [r for r in kube.requests if r["method"] == "POST"]
    assert created[0]["path"] == "/apis/kubeflow.org/v1/namespaces/lulc/pytorchjobs"


def test_trainjob_missing_crd_and_forbidden_are_explained(kube: KubeApiStandIn) -> None:
    kube.fail_next = [404]
    with pytest.raises(TrainJobError, match=r"CRD is not installed .* training.launcher"):
        JobRunner(_spec("trainjob"), api_client=_api(kube), poll_interval_s=0.01).submit()
    kube.forbidden_verbs = {"create"}
    with pytest.raises(TrainJobError, match=r"forbidden .* service account"):
        JobRunner(_spec("trainjob"), api_client=_api(kube), poll_interval_s=0.01).submit()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_trainjob_runs_lulc_model_train_on_the_shared_volume(
    kube: KubeApiStandIn, synthetic_training_tiles: Any, prepared: dict[str, Path], tmp_path: Path
) -> None:
    """The stand-in controller runs the node command of the submitted TrainJob for real (torchrun, 1 node x 1
    process, with the PET_* environment the torch runtime injects); the step gets the bundle from the PVC."""
    s = synthetic_training_tiles
    cfg_path = _config(s, tmp_path, epochs=1, launcher="trainjob")
    raw = yaml.safe_load(cfg_path.read_text()) | {"pipeline": {"cache_pvc": "lulc-shared-rwx"}}
    cfg = RunConfig.model_validate(raw)
    shared = tmp_path / "pvc"
    ran: list[list[str]] = []

    def node(job: dict[str, Any]) -> None:
        trainer = job["spec"]["trainer"]
        command = [PYTHON, "-m", "torch.distributed.run", *trainer["args"]]
        env = _env() | {"PET_MASTER_ADDR": "127.0.0.1", "PET_MASTER_PORT": str(_free_port()), "PET_NODE_RANK": "0"}
        ran.append(command)
        subprocess.run(command, env=env, check=True, timeout=240, capture_output=True)

    kube.job_script = JobScript(on_running=node, finish_after_polls=2)
    bundle = train_on_cluster(
        cfg, s.imagery_dir, s.labels_dir, prepared["stats"], prepared["split"], shared, "key1",
        image="ghcr.io/lulc/lulc:0.1.0", api_client=_api(kube), poll_interval_s=0.2,
    )  # fmt: skip
    assert (bundle / "lulc.json").is_file() and bundle.is_relative_to(shared)
    assert ran and "--resume" in ran[0] and f"--nproc-per-node={cfg.training.devices}" in ran[0]
    assert (shared / "trainjobs" / "key1" / "checkpoints" / "last.ckpt").is_file()
    assert ("lulc", "trainjobs", "lulc-train-key1") in kube.deleted


def test_trainjob_step_logs_the_curves_into_its_tracker_run(
    kube: KubeApiStandIn,
    synthetic_training_tiles: Any,
    prepared: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The pipeline's train step with `training.launcher: trainjob` (credentials from KUBECONFIG, the stand-in plays
    the job and runs its node command for real with the container env of the TrainJob): the step opens the MLflow
    run, the job's rank 0 logs loss and mIoU per epoch into it, and the bundle names that run for registration."""
    from kfp.dsl import Dataset, Metrics, Model
    from mlflow import MlflowClient

    from components.train import train

    s = synthetic_training_tiles
    raw = yaml.safe_load(_config(s, tmp_path, epochs=2, launcher="trainjob").read_text())
    raw["pipeline"] = {"cache_pvc": "lulc-shared-rwx", "image": "ghcr.io/lulc/lulc:0.1.0"}
    cfg = RunConfig.model_validate(raw)
    store = f"sqlite:///{(tmp_path / 'work' / 'mlflow.db').resolve()}"  # the embedded default of work_dir
    node_env: list[dict[str, str]] = []

    def node(job: dict[str, Any]) -> None:  # a pod: the image's environment plus the TrainJob's container env
        trainer = job["spec"]["trainer"]
        node_env.extend(trainer.get("env", []))
        env = {k: v for k, v in _env().items() if not k.startswith(("MLFLOW_", "LULC_"))}
        env |= {e["name"]: e["value"] for e in trainer.get("env", []) if "value" in e}  # the Secrets: none here
        env |= {"PET_MASTER_ADDR": "127.0.0.1", "PET_MASTER_PORT": str(_free_port()), "PET_NODE_RANK": "0"}
        subprocess.run([PYTHON, "-m", "torch.distributed.run", *trainer["args"]], env=env, check=True, timeout=240)

    kube.job_script = JobScript(on_running=node, finish_after_polls=1)
    kube.write_kubeconfig(tmp_path / "kubeconfig")
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "kubeconfig"))
    monkeypatch.setattr("kubernetes.config.kube_config.KUBE_CONFIG_DEFAULT_LOCATION", str(tmp_path / "kubeconfig"))
    monkeypatch.setenv("LULC_CACHE_DIR", str(tmp_path / "pvc"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    bundle = Model(uri=str(tmp_path / "outputs" / "bundle"))
    train.python_func(
        config=cfg.model_dump_json(), imagery=Dataset(uri=str(s.imagery_dir)), labels=Dataset(uri=str(s.labels_dir)),
        stats=Dataset(uri=str(prepared["stats"])), split=Dataset(uri=str(prepared["split"])), bundle=bundle,
        metrics=Metrics(uri=str(tmp_path / "outputs" / "metrics")),
    )  # fmt: skip
    client = MlflowClient(tracking_uri=store)
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert node_env[0] == {"name": "LULC_TRACKING_RUN", "value": run.info.run_id}
    from pipelines.secrets import SECRETS, TRACKER_SECRETS  # the nodes get the step's tracker credentials too

    wanted = {(n, k, v) for n in TRACKER_SECRETS for k, v in SECRETS[n].items()}
    refs = {
        (e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"], e["name"]) for e in node_env[1:]
    }
    assert refs == wanted and {"NEPTUNE_API_TOKEN", "MLFLOW_TRACKING_PASSWORD"} <= {e["name"] for e in node_env}
    for metric in ("train_loss", "val_loss", "val_miou"):
        assert len(client.get_metric_history(run.info.run_id, metric)) == 2, metric  # one point per epoch, once
    assert run.data.tags["lulc.kind"] == "training" and run.info.status == "FINISHED"
    meta = json.loads((Path(bundle.path) / "lulc.json").read_text())
    assert meta["provenance"]["tracking_run"] == run.info.run_id  # registration makes the version from this run
    (staged,) = (tmp_path / "pvc").glob("trainjobs/*/inputs/run.json")
    assert json.loads(staged.read_text())["registry"]["tracking_uri"] == store  # the nodes log into this store


def test_trainjob_node_command_joins_the_steps_neptune_run(
    synthetic_training_tiles: Any, prepared: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a TrainJob node runs, `lulc model train` with LULC_TRACKING_RUN, against the Neptune stand-in: the
    curves go into the run the step opened (no second run), and the bundle names it."""
    from standins.neptune_api import NeptuneStandIn

    from lulc_core.registry import tracked

    s = synthetic_training_tiles
    cfg_path = _config(s, tmp_path, epochs=2)
    raw = yaml.safe_load(cfg_path.read_text()) | {"registry": {"backend": "neptune"}}
    cfg_path.write_text(yaml.safe_dump(raw))
    with NeptuneStandIn() as server:
        for key, value in server.client_env().items():
            monkeypatch.setenv(key, value)
        monkeypatch.delenv("NEPTUNE_MODE", raising=False)
        monkeypatch.chdir(tmp_path)  # neptune keeps its queue in ./.neptune
        with tracked(RunConfig.model_validate(raw)) as step_run:  # what the pipeline's train step opens
            assert step_run is not None and step_run.run_id
            monkeypatch.setenv("LULC_TRACKING_RUN", step_run.run_id)
            result = CliRunner().invoke(app, _train_args(cfg_path, s, prepared, tmp_path / "out"))
            assert result.exit_code == 0, result.output
        (run,) = [c for c in server.containers.values() if c.type == "run"]
    assert run.attrs["sys/id"].value == step_run.run_id
    for metric in ("train_loss", "val_loss", "val_miou"):
        assert len(run.series[f"training/{metric}"]) == 2, metric
    meta = json.loads((tmp_path / "out" / "bundle" / "lulc.json").read_text())
    assert meta["provenance"]["tracking_run"] == step_run.run_id


# --------------------------------------------------------------------------------------------------- pipeline


def test_ddp_pipeline_train_task_requests_the_devices_and_mounts_the_cache(tmp_path: Path) -> None:
    from pipelines.compile import compile_pipeline

    cfg = pipeline_run_config(gpu=True)
    cfg.training.devices = 4
    docs = list(yaml.safe_load_all(compile_pipeline(cfg, tmp_path / "p.yaml").read_text()))
    executors = docs[0]["deploymentSpec"]["executors"]
    assert executors["exec-train"]["container"]["resources"]["accelerator"]["resourceCount"] == "4"
    platform = docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-train"]
    assert platform["pvcMount"][0]["mountPath"] == "/var/cache/lulc"  # checkpoints survive a preempted pod

    raw = cfg.model_dump(mode="json")
    raw["training"] |= {"launcher": "trainjob", "num_nodes": 4}
    multi = RunConfig.model_validate(raw)
    docs = list(yaml.safe_load_all(compile_pipeline(multi, tmp_path / "m.yaml").read_text()))
    resources = docs[0]["deploymentSpec"]["executors"]["exec-train"]["container"]["resources"]
    assert "accelerator" not in resources  # the TrainJob's nodes get the GPUs, the submitting step none


# ------------------------------------------------------------------------------------------------------ resume


def _wait_for_epochs(ckpt: Path, epochs: int, proc: subprocess.Popen[bytes], timeout_s: float = 300) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        if ckpt.is_file():
            try:
                done = int(torch.load(ckpt, map_location="cpu", weights_only=False)["epoch"]) + 1
            except Exception:  # being written
                done = 0
            if done >= epochs:
                return done
        time.sleep(0.05)
    raise AssertionError(f"no checkpoint of epoch {epochs} in {timeout_s} s (exit {proc.poll()})")


def _weights(bundle: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(next(bundle.rglob("*.safetensors")))


def test_resume_after_sigkill_ends_with_the_uninterrupted_weights(
    synthetic_training_tiles: Any, prepared: dict[str, Path], tmp_path: Path
) -> None:
    s = synthetic_training_tiles
    cfg = _config(s, tmp_path, epochs=4, scheduler="cosine")
    cli = [PYTHON, "-m", "lulc.cli"]
    straight = subprocess.Popen([*cli, *_train_args(cfg, s, prepared, tmp_path / "straight")], env=_env())
    killed_out = tmp_path / "killed"
    killed = subprocess.Popen([*cli, *_train_args(cfg, s, prepared, killed_out)], env=_env())
    try:
        done = _wait_for_epochs(killed_out / "checkpoints" / "last.ckpt", 2, killed)
        killed.kill()  # SIGKILL: no handler runs, only the per-epoch checkpoint survives
        killed.wait(timeout=30)
    finally:
        killed.kill()
    assert killed.returncode == -9 and done < 4 and not (killed_out / "bundle").exists()
    resumed = subprocess.run(
        [*cli, *_train_args(cfg, s, prepared, killed_out), "--resume"], env=_env(), capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in resumed.stdout
    assert straight.wait(timeout=240) == 0
    a, b = _weights(tmp_path / "straight" / "bundle"), _weights(killed_out / "bundle")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    history = json.loads((killed_out / "train_result.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]  # the history came back with the checkpoint
    last = torch.load(killed_out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["optimizer_states"] and last["lr_schedulers"]  # optimizer and scheduler state are in it


# ------------------------------------------------------------------------------------------- DDP equivalence


def test_ddp_gradient_equals_the_single_process_gradient(
    synthetic_training_tiles: Any, prepared: dict[str, Path], tmp_path: Path
) -> None:
    """One step of lulc's task and data module under Lightning, model in evaluation mode (deterministic): the
    all-reduced gradient of 2 gloo processes with batch 4 each is the gradient of one process with batch 8."""
    s = synthetic_training_tiles
    cfg = _config(s, tmp_path)
    common = [str(cfg), str(s.imagery_dir), str(s.labels_dir), str(prepared["stats"]), str(prepared["split"])]
    probe = str(REPO / "tests" / "ddp_probe.py")
    runs = {
        n: subprocess.Popen([PYTHON, probe, *common, str(n), str(8 // n), str(tmp_path / f"grad{n}.pt")], env=_env())
        for n in (1, 2)
    }
    assert all(p.wait(timeout=240) == 0 for p in runs.values())
    one, two = (torch.load(tmp_path / f"grad{n}.pt") for n in (1, 2))
    assert one.keys() == two.keys()
    scale = max(float(g.abs().max()) for g in one.values())
    for name, grad in one.items():
        torch.testing.assert_close(two[name], grad, rtol=1e-4, atol=1e-6 * scale, msg=name)


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The bundled sample as a user prepares it (conf/run.yaml's settings, `lulc data ...`, `lulc model split`):
    27 tiles of 64 px, 14 training, 6 validation and 7 test chips."""
    root = tmp_path_factory.mktemp("sample")
    doc = yaml.safe_load((REPO / "conf" / "run.yaml").read_text())
    doc["work_dir"] = str(root / "work")
    doc["area"]["aoi"] = str(REPO / "data" / "sample" / "aoi.geojson")
    doc["imagery"]["local_dir"] = str(REPO / "data" / "sample" / "imagery")
    doc["labels"] |= {"label_set": str(REPO / "conf" / "labels" / "v3.yaml")}
    doc["labels"]["osm_file"] = str(REPO / "data" / "sample" / "osm" / "sample_osm.geojson")
    doc["registry"] |= {"track_training": False}
    cfg = root / "run.yaml"
    cfg.write_text(yaml.safe_dump(doc))
    paths = {name: root / name for name in ("img", "lab", "stats.json", "split.json", "tiles.parquet")}
    steps = [
        ["data", "grid", "-c", str(cfg), "-o", str(paths["tiles.parquet"])],
        ["data", "imagery", "-c", str(cfg), "-t", str(paths["tiles.parquet"]), "-o", str(paths["img"])],
        ["data", "labels", "-c", str(cfg), "-t", str(paths["tiles.parquet"]), "-o", str(paths["lab"])],
        [
            "data",
            "stats",
            "--imagery",
            str(paths["img"]),
            "--labels",
            str(paths["lab"]),
            "-o",
            str(paths["stats.json"]),
        ],
        ["model", "split", "-c", str(cfg), "-t", str(paths["tiles.parquet"]), "-o", str(paths["split.json"])],
    ]
    steps[3] += ["--label-set", doc["labels"]["label_set"]]
    for args in steps:
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
    return {"config": cfg, **paths}


def _sample_train(sample: dict[str, Path], out: Path, *extra: str) -> subprocess.Popen[bytes]:
    """`lulc model train` on the prepared sample, in its own process (as a user runs it)."""
    args = ["model", "train", "-c", str(sample["config"]), "-i", str(sample["img"]), "-l", str(sample["lab"])]
    args += ["-s", str(sample["stats.json"]), "--split", str(sample["split.json"]), "-o", str(out), "--no-progress"]
    return subprocess.Popen([PYTHON, "-m", "lulc.cli", "-q", *args, *extra], env=_env(), stderr=subprocess.DEVNULL)


def test_ddp_one_step_on_the_sample_gives_the_single_process_weights(sample: dict[str, Path], tmp_path: Path) -> None:
    """One optimisation step over all 14 training chips (`--epochs 1`): one process with batch 14 against
    `--devices 2 --strategy ddp` with batch 7 each, dropout, drop-path and BatchNorm active. The weights agree to
    1e-5 except where the gradient is zero up to rounding: the biases in front of the decode head's BatchNorm
    (which removes any shift) get rounding noise for a gradient, and Adam's first step, lr * g / (|g| + eps), moves
    such a parameter by up to the learning rate either way. Before per-chip dropout masks and gloo-synced
    BatchNorm every parameter differed by up to 2 * lr."""
    ddp = ["--devices", "2", "--strategy", "ddp"]
    runs = {
        n: _sample_train(sample, tmp_path / f"w{n}", "--epochs", "1", "--batch-size", str(14 // n), *ddp[: 4 * (n - 1)])
        for n in (1, 2)
    }
    assert all(p.wait(timeout=240) == 0 for p in runs.values())
    one, two = (_weights(tmp_path / f"w{n}" / "bundle") for n in (1, 2))
    lr = yaml.safe_load(sample["config"].read_text())["training"]["learning_rate"]
    assert one.keys() == two.keys()
    off = total = 0
    for key in one:
        diff = (one[key].float() - two[key].float()).abs()
        total += diff.numel()
        assert float(diff.max()) <= 2 * lr + 1e-6, key  # no parameter moved the other way by more than Adam can
        if "running_mean" in key or "linear_c" in key or key.endswith("encoder.layer_norm.3.bias"):
            continue  # the shift-invariant biases above (and BatchNorm's running mean, which carries the shift)
        off += int((diff > 1e-5).sum())
    assert off <= 1e-5 * total, f"{off} of {total} weights differ by more than 1e-5"


def test_ddp_two_gloo_processes_reach_the_single_process_test_miou_on_the_sample(
    sample: dict[str, Path], tmp_path: Path
) -> None:
    """`lulc model train --devices 2 --strategy ddp` (2 gloo processes, batch 4 each) against one process (batch 8),
    same seed, on the bundled sample: `lulc model evaluate` on the test split gives mIoUs within 0.02 (measured:
    within 0.0003 for seeds 42, 43, 44 at 8 and 12 epochs; docs/distributed-training.md)."""
    ddp = ["--devices", "2", "--strategy", "ddp"]
    runs = {
        n: _sample_train(sample, tmp_path / f"p{n}", "--epochs", "8", "--batch-size", str(8 // n), *ddp[: 4 * (n - 1)])
        for n in (1, 2)
    }
    assert all(p.wait(timeout=400) == 0 for p in runs.values())
    scores = {}
    for n in (1, 2):
        out = tmp_path / f"eval{n}"
        args = ["model", "evaluate", str(tmp_path / f"p{n}" / "bundle"), "-i", str(sample["img"]), "-l"]
        args += [str(sample["lab"]), "--split", str(sample["split.json"]), "-o", str(out)]
        assert CliRunner().invoke(app, args).exit_code == 0
        scores[n] = json.loads((out / "metrics.json").read_text())
        result = json.loads((tmp_path / f"p{n}" / "train_result.json").read_text())
        assert result["world_size"] == n and result["epochs_run"] == 8
        losses = [h["val_loss"] for h in result["history"]]
        assert losses[-1] < losses[0] - 0.3, losses  # trained models, not two equally untrained ones
    miou = {n: scores[n]["miou"] for n in (1, 2)}
    assert abs(miou[1] - miou[2]) <= 0.02, miou
    assert abs(scores[1]["overall_accuracy"] - scores[2]["overall_accuracy"]) <= 0.01


_STEP = """
import logging
import sys
from pathlib import Path
from kfp.dsl import Dataset, Metrics, Model
from components.train import train
config, imagery, labels, stats, split, out = sys.argv[1:7]
logging.basicConfig(level=logging.INFO)
train.python_func(
    config=Path(config).read_text(), imagery=Dataset(uri=imagery), labels=Dataset(uri=labels),
    stats=Dataset(uri=stats), split=Dataset(uri=split), bundle=Model(uri=out + "/bundle"),
    metrics=Metrics(uri=out + "/metrics"),
)
"""


def test_resume_pipeline_train_step_after_sigkill_from_the_cache_pvc(
    synthetic_training_tiles: Any, prepared: dict[str, Path], tmp_path: Path
) -> None:
    """The pipeline's train step keeps its checkpoints on the cache PVC (LULC_CACHE_DIR); killed and started
    again (a preempted pod, a retry) it resumes from the last epoch instead of starting over."""
    s = synthetic_training_tiles
    cfg = RunConfig.model_validate(yaml.safe_load(_config(s, tmp_path, epochs=4).read_text()))
    (tmp_path / "run.json").write_text(cfg.model_dump_json())
    pvc = tmp_path / "pvc"
    args = [str(tmp_path / "run.json"), str(s.imagery_dir), str(s.labels_dir), str(prepared["stats"])]
    args += [str(prepared["split"]), str(tmp_path / "outputs")]
    env = _env() | {"LULC_CACHE_DIR": str(pvc)}
    first = subprocess.Popen([PYTHON, "-c", _STEP, *args], env=env, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while not list(pvc.glob("checkpoints/*/last.ckpt")) and time.monotonic() < deadline and first.poll() is None:
            time.sleep(0.05)
        (ckpt,) = pvc.glob("checkpoints/*/last.ckpt")
        done = _wait_for_epochs(ckpt, 2, first)
        first.kill()
        first.wait(timeout=30)
    finally:
        first.kill()
    assert done < 4 and not (tmp_path / "outputs" / "bundle").exists()
    again = subprocess.run([PYTHON, "-c", _STEP, *args], env=env, capture_output=True, text=True, timeout=400)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"resuming from {ckpt}" in again.stderr
    assert (tmp_path / "outputs" / "bundle" / "lulc.json").is_file()
    assert int(torch.load(ckpt, map_location="cpu", weights_only=False)["epoch"]) + 1 == 4


def test_resume_after_sigterm_saves_the_state_and_exits_143(
    synthetic_training_tiles: Any, prepared: dict[str, Path], tmp_path: Path
) -> None:
    """SIGTERM (a preempted pod) lets the batch finish, writes last.ckpt and exits 143; --resume completes the run."""
    s = synthetic_training_tiles
    cfg = _config(s, tmp_path, epochs=40)
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [PYTHON, "-m", "lulc.cli", *_train_args(cfg, s, prepared, out)], env=_env(), stderr=subprocess.PIPE, text=True
    )
    try:
        _wait_for_epochs(out / "checkpoints" / "last.ckpt", 1, proc)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 143, stderr[-2000:]
    assert "SIGTERM: training state saved" in stderr
    state = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert state["optimizer_states"] and int(state["epoch"]) < 39
    cfg.write_text(cfg.read_text().replace("epochs: 40", f"epochs: {int(state['epoch']) + 2}"))
    again = CliRunner().invoke(app, [*_train_args(cfg, s, prepared, out), "--resume"])
    assert again.exit_code == 0, again.output
    assert "resumed from" in again.output and (out / "bundle" / "lulc.json").is_file()

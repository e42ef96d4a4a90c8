"""Data-parallel training on the CPU: two processes (gloo, started by torchrun, trained through Accelerate) make the same
memory as one, a run checkpointed by two processes resumes in one, and only one version is published; the same
with the base's layers sharded across the two processes (FSDP, `--shard`), where each holds half of each layer.

Tolerance: the only difference between one and two processes is the order in which floating-point sums are
taken, and Adam (which divides by the root of the squared gradients) turns those last-bit differences into
weight differences of the order of the learning rate x 1e-1 over a run. In float64 the two runs agree to 1e-9
(2.5e-13 measured, LoRA weights of order 0.2); in float32, with the default learning rate of `learn`, to 5e-4."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

HERE = Path(__file__).resolve().parent
FLOAT64 = 1e-9
FLOAT32 = 5e-4



def launch(n: int, *argv: str, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node n ARGV` (plain `python ARGV` for one process). On GPUs the same
    runs under `accelerate launch --num_processes n`; Accelerate's launcher starts CPU processes only through MPI."""
    env = dict(os.environ if env is None else env, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    env.pop("WORLD_SIZE", None)
    if n == 1:
        command = [sys.executable, *argv]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n), *argv]
    out = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    if check and out.returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return out


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(path)


def max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def test_two_processes_train_the_same_memory_as_one(tiny_model_dir, tmp_path):
    worker = str(HERE / "distributed_worker.py")
    launch(1, worker, str(tiny_model_dir), str(tmp_path / "run1"), str(tmp_path / "one.safetensors"), "--float64")
    launch(2, worker, str(tiny_model_dir), str(tmp_path / "run2"), str(tmp_path / "two.safetensors"), "--float64")
    one, two = weights(tmp_path / "one.safetensors"), weights(tmp_path / "two.safetensors")
    assert json.loads((tmp_path / "two.json").read_text())["world"] == 2
    assert max(float(v.abs().max()) for v in one.values()) > 1e-2  # it trained
    assert max_difference(one, two) < FLOAT64


def test_a_run_checkpointed_by_two_processes_resumes_in_one(tiny_model_dir, tmp_path):
    worker = str(HERE / "distributed_worker.py")
    launch(1, worker, str(tiny_model_dir), str(tmp_path / "whole"), str(tmp_path / "whole.safetensors"), "--float64")
    crashed = launch(2, worker, str(tiny_model_dir), str(tmp_path / "run"), str(tmp_path / "x.safetensors"),
                     "--float64", "--crash-after-checkpoint", check=False)
    assert crashed.returncode != 0 and (tmp_path / "run" / "checkpoint" / "progress.json").is_file()
    launch(1, worker, str(tiny_model_dir), str(tmp_path / "run"), str(tmp_path / "resumed.safetensors"), "--float64")
    assert json.loads((tmp_path / "resumed.json").read_text())["resumed_from_step"] == 3
    assert max_difference(weights(tmp_path / "whole.safetensors"), weights(tmp_path / "resumed.safetensors")) < FLOAT64


def test_learn_under_the_launcher_publishes_one_version(tiny_model_dir, tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("The Oslo office of Fjordlight opened in March 2019 and employs forty people.\n"
                               "Ingrid Vassbotn founded Fjordlight Instruments in 2011 in Bergen.\n")
    env = dict(os.environ, INWEIGHTS_HOME=str(tmp_path / "home"))
    common = ["learn", str(docs), "--base", str(tiny_model_dir), "--no-progress", "--epochs", "2",
              "--replay-sequences", "4", "--chunk-tokens", "128"]
    launch(2, "-m", "inweights", *common, "--memory", "two", env=env)
    launch(1, "-m", "inweights", *common, "--memory", "one", env=env)
    memories = tmp_path / "home" / "memories"
    assert sorted(p.name for p in (memories / "two").iterdir() if p.name.startswith("v")) == ["v1"]
    one = weights(next((memories / "one").glob("v1/adapter_model.safetensors")))
    two = weights(next((memories / "two").glob("v1/adapter_model.safetensors")))
    assert max_difference(one, two) < FLOAT32
    manifest = json.loads((memories / "two" / "v1" / "manifest.json").read_text())
    assert manifest["training"]["steps"] == json.loads((memories / "one" / "v1" / "manifest.json").read_text())[
        "training"]["steps"]


@pytest.mark.parametrize("method, bound", [("lora", FLOAT64), ("memory_layer", FLOAT32)])
def test_two_sharded_processes_train_the_same_memory_as_one_holding_half_the_layers(tiny_model_dir, tmp_path,
                                                                                    method, bound):
    """The memory layer keeps float32 buffers, so it runs in float32 (1e-6 measured)."""
    worker = str(HERE / "distributed_worker.py")
    precision = ["--float64"] if bound == FLOAT64 else []
    launch(1, worker, str(tiny_model_dir), str(tmp_path / "run1"), str(tmp_path / "one.safetensors"), "--method",
           method, *precision)
    launch(2, worker, str(tiny_model_dir), str(tmp_path / "run2"), str(tmp_path / "two.safetensors"), "--method",
           method, "--shard", *precision)
    one, two = weights(tmp_path / "one.safetensors"), weights(tmp_path / "two.safetensors")
    report = json.loads((tmp_path / "two.json").read_text())
    assert report["world"] == 2 and report["layer_weight_held"] * 2 == report["layer_weight_whole"]
    assert max(float(v.abs().max()) for v in one.values()) > 1e-2  # it trained
    assert max_difference(one, two) < bound


@pytest.mark.parametrize("first, then", [(2, 1), (1, 2)])
def test_a_sharded_run_resumes_with_another_number_of_processes(tiny_model_dir, tmp_path, first, then):
    worker = str(HERE / "distributed_worker.py")
    launch(1, worker, str(tiny_model_dir), str(tmp_path / "whole"), str(tmp_path / "whole.safetensors"), "--float64")
    crashed = launch(first, worker, str(tiny_model_dir), str(tmp_path / "run"), str(tmp_path / "x.safetensors"),
                     "--float64", "--shard", "--crash-after-checkpoint", check=False)
    assert crashed.returncode != 0 and (tmp_path / "run" / "checkpoint" / "progress.json").is_file()
    launch(then, worker, str(tiny_model_dir), str(tmp_path / "run"), str(tmp_path / "resumed.safetensors"),
           "--float64", "--shard")
    assert json.loads((tmp_path / "resumed.json").read_text())["resumed_from_step"] == 3
    assert max_difference(weights(tmp_path / "whole.safetensors"), weights(tmp_path / "resumed.safetensors")) < FLOAT64


def test_learn_sharded_publishes_one_version_like_one_process(tiny_model_dir, tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("The Oslo office of Fjordlight opened in March 2019 and employs forty people.\n"
                               "Ingrid Vassbotn founded Fjordlight Instruments in 2011 in Bergen.\n")
    env = dict(os.environ, INWEIGHTS_HOME=str(tmp_path / "home"))
    common = ["learn", str(docs), "--base", str(tiny_model_dir), "--no-progress", "--epochs", "2",
              "--replay-sequences", "4", "--chunk-tokens", "128"]
    launch(2, "-m", "inweights", *common, "--memory", "two", "--shard", env=env)
    launch(1, "-m", "inweights", *common, "--memory", "one", "--shard", env=env)
    memories = tmp_path / "home" / "memories"
    assert sorted(p.name for p in (memories / "two").iterdir() if p.name.startswith("v")) == ["v1"]
    one = weights(next((memories / "one").glob("v1/adapter_model.safetensors")))
    two = weights(next((memories / "two").glob("v1/adapter_model.safetensors")))
    assert max_difference(one, two) < FLOAT32
    assert json.loads((memories / "two" / "v1" / "manifest.json").read_text())["config"]["shard"] is True


def test_shard_refuses_a_memory_outside_the_layers_with_a_clear_error(tiny_model_dir, tmp_path):
    out = launch(2, str(HERE / "distributed_worker.py"), str(tiny_model_dir), str(tmp_path / "run"),
                 str(tmp_path / "x.safetensors"), "--method", "tinylora", "--shard", check=False)
    assert out.returncode != 0
    assert "--shard splits the decoder layers" in out.stderr and "shared between them" in out.stderr


def test_learn_shard_refuses_a_method_outside_the_layers_before_any_work(tiny_model_dir, tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("The Oslo office of Fjordlight opened in March 2019.\n")
    env = dict(os.environ, INWEIGHTS_HOME=str(tmp_path / "home"))
    out = launch(2, "-m", "inweights", "learn", str(docs), "--memory", "m", "--base", str(tiny_model_dir),
                 "--no-progress", "--shard", "--method", "cartridge", env=env, check=False)
    assert out.returncode != 0 and "a cartridge memory does not live inside them" in out.stderr
    assert not (tmp_path / "home" / "cache").exists()  # nothing was synthesized

"""Two CPU processes (gloo), started by torchrun or by ``accelerate launch`` with scripts/configs/accelerate/cpu2.yaml:
both ranks train the same run and stay in sync; rank 0 writes it. And accelerate's FSDP2 path with the settings of
scripts/configs/accelerate/fsdp.yaml, run on a CPU device mesh: a LoRA run shards, trains and saves an ordinary
adapter."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("trl")

CONFIGS = Path(__file__).resolve().parents[1] / "scripts" / "configs" / "accelerate"
CPU2 = CONFIGS / "cpu2.yaml"

SCRIPT = textwrap.dedent('''
    import hashlib, json, os, sys
    import torch
    from transformers import TrainerCallback
    from c2t.train import train

    class Report(TrainerCallback):
        def on_train_end(self, args, state, control, model=None, **kw):
            h = hashlib.sha256()
            for name, p in sorted(model.named_parameters()):
                if p.requires_grad:
                    h.update(p.detach().cpu().numpy().tobytes())
            rank = int(os.environ["RANK"])
            with open(os.path.join(sys.argv[2], f"rank{rank}.json"), "w") as f:
                json.dump({"rank": rank, "world_size": args.world_size, "global_step": state.global_step,
                           "params": h.hexdigest()}, f)

    train(json.loads(sys.argv[1]), callbacks=[Report()])
''')


def _two_rank_run(tmp_path, pbmc_dataset, tiny_models, launcher: list[str]) -> None:
    """Run SCRIPT under ``launcher`` (which must start two processes) and check that both ranks trained in sync."""
    script = tmp_path / "ddp_train.py"
    script.write_text(SCRIPT)
    cfg = {"dataset": str(pbmc_dataset), "base_model": str(tiny_models["gpt2"]), "output_dir": str(tmp_path / "run"),
           "eval_split": None, "max_train_examples": 64, "max_steps": 4, "per_device_train_batch_size": 4,
           "logging_steps": 1, "save_steps": 100, "max_length": 128, "learning_rate": 1e-2}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [*launcher, str(script), json.dumps(cfg), str(tmp_path)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in reports] == [2, 2]
    assert [r["global_step"] for r in reports] == [4, 4]
    assert reports[0]["params"] == reports[1]["params"]  # DDP kept both replicas identical
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["training"]["global_step"] == 4
    assert (tmp_path / "run" / "adapter_model.safetensors").is_file()


@pytest.mark.slow
def test_torchrun_two_processes_both_train(tmp_path, pbmc_dataset, tiny_models):
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517"]
    _two_rank_run(tmp_path, pbmc_dataset, tiny_models, launcher)


@pytest.mark.slow
def test_accelerate_cpu2_config_two_processes_both_train(tmp_path, pbmc_dataset, tiny_models):
    """``accelerate launch`` with cpu2.yaml starts two torchrun processes on a machine without an accelerator
    (``--cpu`` or ``distributed_type: MULTI_CPU`` would start one)."""
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CPU2),
                "--main_process_port", "29518"]
    _two_rank_run(tmp_path, pbmc_dataset, tiny_models, launcher)


# accelerate turns FSDP on only for accelerator process groups (AcceleratorState: MULTI_GPU and the like, never
# MULTI_CPU). FSDP2 itself runs on a CPU device mesh over gloo, so the script below reports the gloo group to
# accelerate as MULTI_GPU on the CPU device; everything after that is accelerate's own FSDP2 preparation
# (fsdp2_prepare_model), the Trainer's FULL_STATE_DICT save and c2t.train, configured by the environment that
# `accelerate launch --config_file fsdp.yaml` gives each process.
FSDP_SCRIPT = textwrap.dedent('''
    import json, os, sys
    import torch
    import torch.distributed as dist
    import accelerate.state as acc_state
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils import DistributedType
    from accelerate.utils.launch import prepare_multi_gpu_env
    from transformers import TrainerCallback

    args = launch_command_parser().parse_args(["--config_file", sys.argv[3], "-m", "c2t.cli"])
    launch_env = prepare_multi_gpu_env(_validate_launch_command(args)[0])
    os.environ.update({k: v for k, v in launch_env.items() if k.startswith(("FSDP_", "ACCELERATE_"))})
    prepare_backend = acc_state.PartialState._prepare_backend

    def gloo_as_gpu_group(self, cpu=False, sagemaker_dp=False, backend=None):
        name, kind = prepare_backend(self, cpu, sagemaker_dp, backend)
        if kind == DistributedType.MULTI_CPU:
            if not dist.is_initialized():
                dist.init_process_group("gloo")
            kind = DistributedType.MULTI_GPU
        return name, kind

    acc_state.PartialState._prepare_backend = gloo_as_gpu_group
    acc_state.PartialState.set_device = lambda self: setattr(self, "device", torch.device("cpu"))
    from c2t.train import train

    class Report(TrainerCallback):
        def on_train_end(self, args, state, control, model=None, **kw):
            from torch.distributed.tensor import DTensor
            params = list(model.parameters())
            with open(os.path.join(sys.argv[2], f"fsdp{dist.get_rank()}.json"), "w") as f:
                json.dump({"world_size": dist.get_world_size(), "class": type(model).__name__,
                           "dtensors": sum(isinstance(p, DTensor) for p in params), "params": len(params),
                           "fsdp_version": acc_state.AcceleratorState().fsdp_plugin.fsdp_version,
                           "global_step": state.global_step}, f)

    train(json.loads(sys.argv[1]), callbacks=[Report()])
''')


@pytest.mark.slow
def test_fsdp2_config_trains_lora_on_a_cpu_mesh(tmp_path, pbmc_dataset, tiny_models):
    """Two ranks shard a LoRA run on a tied-embedding LLaMA (SmolLM2's layout) with fsdp.yaml's settings; rank 0
    writes an ordinary adapter that loads without FSDP and merges."""
    from safetensors.torch import load_file

    from c2t.train import load_model, merge

    script = tmp_path / "fsdp_train.py"
    script.write_text(FSDP_SCRIPT)
    run = tmp_path / "run"
    cfg = {"dataset": str(pbmc_dataset), "base_model": str(tiny_models["llama"]), "output_dir": str(run),
           "eval_split": None, "max_train_examples": 64, "max_steps": 4, "per_device_train_batch_size": 4,
           "logging_steps": 1, "save_steps": 2, "max_length": 128, "learning_rate": 1e-2, "dtype": "bfloat16",
           "padding_free": True}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29519",
           str(script), json.dumps(cfg), str(tmp_path), str(CONFIGS / "fsdp.yaml")]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    reports = [json.loads((tmp_path / f"fsdp{r}.json").read_text()) for r in (0, 1)]
    for report in reports:  # every parameter a DTensor shard: FSDP2, not DDP
        assert report["class"].startswith("FSDP") and report["dtensors"] == report["params"] > 0, report
        assert (report["world_size"], report["fsdp_version"], report["global_step"]) == (2, 2, 4)
    adapter = load_file(run / "adapter_model.safetensors")
    assert adapter and all("lora_" in k for k in adapter)  # the adapter only, as full tensors
    assert any(v.abs().max() > 0 for k, v in adapter.items() if "lora_B" in k)  # B starts at zero: it trained
    assert (run / "checkpoint-2" / "adapter_model.safetensors").is_file()
    model, _ = load_model(run)
    loaded = {n: p for n, p in model.named_parameters() if "lora_" in n}
    assert len(loaded) == len(adapter)
    merged = merge(run, tmp_path / "merged")
    assert (merged / "model.safetensors").is_file()

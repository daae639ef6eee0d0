"""Two CPU processes with torchrun (gloo): both ranks train the same run and stay in sync; rank 0 writes it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("trl")

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


@pytest.mark.slow
def test_torchrun_two_processes_both_train(tmp_path, pbmc_dataset, tiny_models):
    script = tmp_path / "ddp_train.py"
    script.write_text(SCRIPT)
    cfg = {"dataset": str(pbmc_dataset), "base_model": str(tiny_models["gpt2"]), "output_dir": str(tmp_path / "run"),
           "eval_split": None, "max_train_examples": 64, "max_steps": 4, "per_device_train_batch_size": 4,
           "logging_steps": 1, "save_steps": 100, "max_length": 128, "learning_rate": 1e-2}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
           str(script), json.dumps(cfg), str(tmp_path)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in reports] == [2, 2]
    assert [r["global_step"] for r in reports] == [4, 4]
    assert reports[0]["params"] == reports[1]["params"]  # DDP kept both replicas identical
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["training"]["global_step"] == 4

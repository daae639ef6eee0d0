"""scripts/gpu_check.sh --cpu: every step of the GPU check runs (tiny models, a few hundred cells) and leaves its
figures in one JSON file, so that whoever next has a GPU runs the script unchanged."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("trl")
ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_cpu_smoke(tmp_path, pbmc3k):
    env = {**os.environ, "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--cpu", "--out", str(tmp_path / "out"),
                           "--work", str(tmp_path / "work")], env=env, capture_output=True, text=True, timeout=1500,
                          check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert files == ["gpu_check.json", "gpu_check.log"]  # the device machine returns at most eight files
    steps = json.loads((tmp_path / "out" / "gpu_check.json").read_text())["steps"]
    log = (tmp_path / "out" / "gpu_check.log").read_text()
    for name in ("env", "data", "varlen", "train_speed", "sweep", "ddp", "gen_run", "generate", "pack"):
        assert steps[name].get("rc") == 0, (name, steps[name], log[-3000:])
    assert "accelerator" in steps["fsdp"]["skipped"]
    varlen = steps["varlen"]["result"]
    assert varlen["max_abs_logit_difference"] < 1e-4 and not varlen["cuda_varlen_kernel"]
    assert steps["train_speed"]["result"]["results"]["c2t_lora"]["tokens_per_s"] > 0
    sweep = steps["sweep"]["result"]
    assert 0.5 < sweep["baselines"]["pca_knn_accuracy"] <= 1
    top20 = sweep["variants"]["top20"]
    assert 0 <= top20["likelihood"]["accuracy"] <= 1 and top20["generate"]["cells_per_s"] > 0
    assert steps["ddp"]["result"]["finished"] and steps["ddp"]["result"]["global_step"] == 10
    assert steps["pack"]["result"]["packed"] is None  # the tiny sweep trains fully, no adapter to pack
    backends = steps["generate"]["result"]["backends"]
    assert any(k.startswith("transformers (cpu") and v["cells_generated_per_s"] > 0 for k, v in backends.items())

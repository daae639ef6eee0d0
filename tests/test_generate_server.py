"""The generation backends against real vLLM: its OpenAI-compatible server on 127.0.0.1 serving a c2t LoRA
adapter (``--lora-modules``), and its offline engine (``LLM`` + ``LoRARequest``) run in vLLM's own environment.
Both must give the transformers backend's greedy answers for the same run and prompts.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from c2t.generate import OpenAIBackend, Sampling, TransformersBackend, generate_cells, model_spec, predict
from c2t.instruct import load
from c2t.servers import VLLMServer, vllm_python

pytestmark = [
    pytest.mark.server,
    pytest.mark.skipif(vllm_python() is None, reason="vLLM is not installed here; set C2T_VLLM_PYTHON (scripts/test.sh does)"),
]
GREEDY = Sampling(temperature=0, max_new_tokens=24)
N_PROMPTS = 24


@pytest.fixture(scope="module")
def lora_server(gen_run, vllm_llama):
    args = ["--enable-lora", "--lora-modules", f"cells={gen_run}", "--max-lora-rank", "8"]
    with VLLMServer(vllm_llama, name="base", max_model_len=512, extra_args=args) as server:
        yield server


@pytest.fixture(scope="module")
def prompts(gen_dataset):
    return list(load(gen_dataset)["test"]["prompt"][:N_PROMPTS])


@pytest.fixture(scope="module")
def reference(gen_run, prompts):
    with TransformersBackend(gen_run) as engine:
        return engine.complete(prompts, sampling=GREEDY)


def _agreement(a, b) -> float:
    """Share of prompts whose first completion starts the same (float32 kernels differ in the last bits, so a
    near-tie late in a completion may flip)."""
    return float(np.mean([x[0][:12] == y[0][:12] for x, y in zip(a, b, strict=True)]))


def test_server_serves_the_adapter_as_transformers_does(lora_server, gen_run, prompts, reference):
    engine = OpenAIBackend(lora_server.base_url, "cells", spec=model_spec(gen_run))
    served = engine.complete(prompts, sampling=GREEDY)
    assert _agreement(served, reference) >= 0.8
    base = OpenAIBackend(lora_server.base_url, "base", spec=model_spec(gen_run)).complete(prompts, sampling=GREEDY)
    assert _agreement(base, reference) < _agreement(served, reference)  # the adapter is applied


def test_server_sampling_is_seeded_per_request(lora_server, gen_run, prompts):
    engine = OpenAIBackend(lora_server.base_url, "cells", spec=model_spec(gen_run))
    sampling = Sampling(max_new_tokens=24, seed=7, batch_size=4)
    first = engine.complete(prompts[:6], sampling=sampling, n=[1, 2, 3, 1, 1, 2])
    assert [len(g) for g in first] == [1, 2, 3, 1, 1, 2]
    assert engine.complete(prompts[:6], sampling=sampling.replace(batch_size=2), n=[1, 2, 3, 1, 1, 2]) == first
    assert engine.complete(prompts[:6], sampling=sampling.replace(seed=8), n=[1, 2, 3, 1, 1, 2]) != first


def test_generate_and_predict_through_the_server(lora_server, gen_run, pbmc3k):
    cells = generate_cells(gen_run, labels="B:3,NK:2", backend="openai", base_url=lora_server.base_url,
                           served_model="cells", sampling={"max_new_tokens": 24, "seed": 1})
    assert cells.obs["condition"].value_counts().to_dict() == {"B": 3, "NK": 2}
    assert cells.uns["c2t_generate"]["backend"] == "openai"
    adata = pbmc3k[:12].copy()
    local = adata.copy()
    report = predict(gen_run, adata, backend="openai", base_url=lora_server.base_url, served_model="cells")
    predict(gen_run, local)
    assert report["backend"] == "openai" and "accuracy" in report
    same = (adata.obs["c2t_cell_type_answer"].str[:12] == local.obs["c2t_cell_type_answer"].str[:12]).mean()
    assert same >= 0.8


def test_vllm_offline_engine_with_the_lora_adapter(gen_run, prompts, reference, tmp_path):
    sampled = {"max_new_tokens": 24, "seed": 3}
    job = {"model": str(gen_run), "engine": {"dtype": "float32", "enforce_eager": True}, "jobs": [
        {"name": "greedy", "prompts": prompts, "sampling": {"temperature": 0, "max_new_tokens": 24}},
        {"name": "sampled", "prompts": prompts[:3], "n": [2, 1, 3], "sampling": sampled},
        {"name": "again", "prompts": prompts[:3], "n": [2, 1, 3], "sampling": sampled}]}
    (tmp_path / "job.json").write_text(json.dumps(job))
    root = Path(__file__).parents[1]
    env = {**os.environ, "PYTHONPATH": str(root), "HF_HUB_OFFLINE": "1",
           "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}
    done = subprocess.run([vllm_python(), str(root / "scripts" / "vllm_complete.py"), str(tmp_path / "job.json"),
                           str(tmp_path / "out.json")], capture_output=True, text=True, env=env, timeout=900, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "out.json").read_text())["results"]
    assert _agreement(results["greedy"]["completions"], reference) >= 0.8
    assert [len(g) for g in results["sampled"]["completions"]] == [2, 1, 3]
    assert results["sampled"]["completions"] == results["again"]["completions"]

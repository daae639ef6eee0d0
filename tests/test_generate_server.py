"""The generation backends against real vLLM: its OpenAI-compatible server on 127.0.0.1 serving a c2t LoRA
adapter (``--lora-modules``), and its offline engine (``LLM`` + ``LoRARequest``) run in vLLM's own environment.
Both must give the transformers backend's greedy answers, and its label log-probabilities (likelihood scoring),
for the same run and prompts.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from c2t._errors import C2TInputError
from c2t.generate import OpenAIBackend, Sampling, TransformersBackend, generate_cells, model_spec, predict
from c2t.instruct import load
from c2t.servers import VLLMServer, vllm_python

pytestmark = [
    pytest.mark.server,
    pytest.mark.skipif(vllm_python() is None, reason="vLLM is not installed here; set C2T_VLLM_PYTHON (scripts/test.sh does)"),
]
GREEDY = Sampling(temperature=0, max_new_tokens=24)
N_PROMPTS = 24
# likelihood scoring: "NK" is a prefix of "NK cell" (each ends with its own end-of-turn token)
LABELS = ["B", "NK", "NK cell", "CD14+ Mono", "CD8 T"]
# float32 kernels: vLLM's CPU attention and LoRA against transformers with the adapter merged (measured: max
# |difference| of summed log-probabilities about 1e-5)
SCORE_ATOL = 1e-3


@pytest.fixture(scope="module")
def lora_server(gen_run, vllm_llama):
    # LoRA on the adapter's modules only: vLLM's lm_head LoRA wrapper breaks prompt log-probabilities (vLLM #51594)
    args = ["--enable-lora", "--lora-modules", f"cells={gen_run}", "--max-lora-rank", "8",
            "--lora-target-modules", *model_spec(gen_run).manifest["target_modules"]]
    with VLLMServer(vllm_llama, name="base", max_model_len=512, extra_args=args) as server:
        yield server


@pytest.fixture(scope="module")
def prompts(gen_dataset):
    return list(load(gen_dataset)["test"]["prompt"][:N_PROMPTS])


@pytest.fixture(scope="module")
def reference(gen_run, prompts):
    with TransformersBackend(gen_run) as engine:
        return engine.complete(prompts, sampling=GREEDY)


@pytest.fixture(scope="module")
def label_prompts(gen_dataset):
    return list(load(gen_dataset)["test"].filter(lambda r: r["task"] == "cell_type")["prompt"][:12])


@pytest.fixture(scope="module")
def label_reference(gen_run, label_prompts):
    """The transformers backend's ``(sums, counts)`` for ``label_prompts`` x ``LABELS``."""
    with TransformersBackend(gen_run) as engine:
        return engine.score_completions(label_prompts, LABELS)


def _agreement(a, b) -> float:
    """Share of prompts whose first completion starts the same (float32 kernels differ in the last bits, so a
    near-tie late in a completion may flip)."""
    return float(np.mean([x[0][:12] == y[0][:12] for x, y in zip(a, b, strict=True)]))


def _client(server, name: str, run=None) -> OpenAIBackend:
    """A client of ``server``'s model ``name`` (close it: an open socket left to the GC fails the run)."""
    return OpenAIBackend(server.base_url, name, spec=model_spec(run) if run is not None else None)


def test_server_serves_the_adapter_as_transformers_does(lora_server, gen_run, prompts, reference):
    with _client(lora_server, "cells", gen_run) as engine:
        served = engine.complete(prompts, sampling=GREEDY)
    assert _agreement(served, reference) >= 0.8
    with _client(lora_server, "base", gen_run) as engine:
        base = engine.complete(prompts, sampling=GREEDY)
    assert _agreement(base, reference) < _agreement(served, reference)  # the adapter is applied


def test_server_sampling_is_seeded_per_request(lora_server, gen_run, prompts):
    sampling = Sampling(max_new_tokens=24, seed=7, batch_size=4)
    with _client(lora_server, "cells", gen_run) as engine:
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


def test_server_scores_labels_as_transformers_does(lora_server, gen_run, label_prompts, label_reference):
    ref_sums, ref_counts = label_reference
    with _client(lora_server, "cells", gen_run) as engine:
        sums, counts = engine.score_completions(label_prompts, LABELS)
        too_long = r"refused the likelihood-scoring request for prompt 1 .*maximum context length"
        with pytest.raises(C2TInputError, match=too_long):
            engine.score_completions([label_prompts[0], " ".join(["RPL13 B2M TMSB4X"] * 400)], LABELS)
    assert sums.shape == (len(label_prompts), len(LABELS)) and (counts == ref_counts).all()
    np.testing.assert_allclose(sums, ref_sums, atol=SCORE_ATOL)
    assert (counts[:, 2] > counts[:, 1]).all() and not np.allclose(sums[:, 1], sums[:, 2], atol=1e-2)
    with _client(lora_server, "base", gen_run) as engine:
        base, _ = engine.score_completions(label_prompts, LABELS)
    assert np.abs(base - ref_sums).max() > 100 * SCORE_ATOL  # the adapter is applied
    with _client(lora_server, "cells") as engine, pytest.raises(C2TInputError, match="needs the run folder"):
        engine.score_completions(label_prompts, LABELS)


def test_predict_by_likelihood_through_the_server(lora_server, gen_run, pbmc3k):
    adata = pbmc3k[:16].copy()
    local = adata.copy()
    report = predict(gen_run, adata, scoring="likelihood", backend="openai", base_url=lora_server.base_url,
                     served_model="cells")
    local_report = predict(gen_run, local, scoring="likelihood")
    assert report["backend"] == "openai" and report["scoring"] == "likelihood"
    assert list(adata.obs["c2t_cell_type"]) == list(local.obs["c2t_cell_type"])
    np.testing.assert_allclose(adata.obsm["c2t_cell_type_proba"], local.obsm["c2t_cell_type_proba"], atol=1e-3)
    assert report["accuracy"] == local_report["accuracy"]


@pytest.fixture(scope="module")
def offline(gen_run, prompts, label_prompts, tmp_path_factory):
    """The offline engine's results (``scripts/vllm_complete.py``: the engine loaded once for every job)."""
    sampled = {"max_new_tokens": 24, "seed": 3}
    job = {"model": str(gen_run), "engine": {"dtype": "float32", "enforce_eager": True}, "jobs": [
        {"name": "greedy", "prompts": prompts, "sampling": {"temperature": 0, "max_new_tokens": 24}},
        {"name": "sampled", "prompts": prompts[:3], "n": [2, 1, 3], "sampling": sampled},
        {"name": "again", "prompts": prompts[:3], "n": [2, 1, 3], "sampling": sampled},
        {"name": "scores", "prompts": label_prompts, "candidates": LABELS}]}
    folder = tmp_path_factory.mktemp("vllm_offline")
    (folder / "job.json").write_text(json.dumps(job))
    root = Path(__file__).parents[1]
    env = {**os.environ, "PYTHONPATH": str(root), "HF_HUB_OFFLINE": "1",
           "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}
    done = subprocess.run([vllm_python(), str(root / "scripts" / "vllm_complete.py"), str(folder / "job.json"),
                           str(folder / "out.json")], capture_output=True, text=True, env=env, timeout=900, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((folder / "out.json").read_text())["results"]


def test_vllm_offline_engine_with_the_lora_adapter(offline, reference):
    assert _agreement(offline["greedy"]["completions"], reference) >= 0.8
    assert [len(g) for g in offline["sampled"]["completions"]] == [2, 1, 3]
    assert offline["sampled"]["completions"] == offline["again"]["completions"]


def test_vllm_offline_engine_scores_labels_as_transformers_does(offline, label_reference):
    ref_sums, ref_counts = label_reference
    sums, counts = np.array(offline["scores"]["sums"]), np.array(offline["scores"]["counts"])
    assert sums.shape == ref_sums.shape and (counts == ref_counts).all()
    np.testing.assert_allclose(sums, ref_sums, atol=SCORE_ATOL)

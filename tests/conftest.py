"""Shared fixtures: a tiny cached synthetic AnnData (cell types, batches, NB counts) and the real pbmc3k file.

The synthetic data is built once per session; tests that change it take a copy (the ``adata`` fixture).
Real data lives beside the repository in ``../shared/data`` and is never copied into it.
"""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

DATA_DIR = Path(__file__).parents[2] / "shared" / "data"
PBMC3K = DATA_DIR / "pbmc3k_raw_seurat_labels.h5ad"

N_CELLS = 240
N_GENES = 120
EMPTY_CELLS = (5, 17, 130)  # all-zero rows of the synthetic data
CELL_TYPES = ("T", "B", "Mono")


def make_synthetic(n_cells: int = N_CELLS, n_genes: int = N_GENES, seed: int = 0) -> ad.AnnData:
    """Negative-binomial counts with cell-type programs and a batch effect; small counts give many ties."""
    rng = np.random.default_rng(seed)
    cell_type = rng.choice(CELL_TYPES, n_cells)
    batch = rng.choice(["b1", "b2"], n_cells)
    base = rng.lognormal(mean=-0.5, sigma=1.2, size=n_genes)
    programs = {t: base * rng.lognormal(0.0, 1.0, size=n_genes) for t in CELL_TYPES}
    mu = np.stack([programs[t] for t in cell_type]) * np.where(batch == "b2", 1.5, 1.0)[:, None]
    size = 0.6  # NB dispersion: many zeros, many cells with equal small counts
    counts = rng.negative_binomial(size, size / (size + mu)).astype(np.float32)
    counts[list(EMPTY_CELLS)] = 0
    obs = pd.DataFrame(
        {
            "cell_type": pd.Categorical(cell_type, categories=list(CELL_TYPES)),
            "batch": pd.Categorical(batch),
            "n_counts": counts.sum(axis=1).astype(np.int64),
        },
        index=pd.Index([f"cell{i:04d}" for i in range(n_cells)]),
    )
    var = pd.DataFrame(index=pd.Index([f"G{j:03d}" for j in range(n_genes)]))
    return ad.AnnData(sp.csr_matrix(counts), obs=obs, var=var)


def log1p_cp10k(counts) -> np.ndarray:
    """Independent reference normalisation (float64, dense): CP10k then log1p; all-zero rows stay zero."""
    dense = counts.toarray() if sp.issparse(counts) else np.asarray(counts)
    dense = dense.astype(np.float64)
    totals = dense.sum(axis=1, keepdims=True)
    scale = np.divide(1e4, totals, out=np.zeros_like(totals), where=totals > 0)
    return np.log1p(dense * scale)


@pytest.fixture(scope="session")
def synth() -> ad.AnnData:
    """The cached synthetic AnnData (do not modify; use ``adata`` for a copy)."""
    return make_synthetic()


@pytest.fixture
def adata(synth) -> ad.AnnData:
    """A private copy of the synthetic AnnData."""
    return synth.copy()


@pytest.fixture(scope="session")
def synth_h5ad(synth, tmp_path_factory) -> Path:
    """The synthetic AnnData written once as ``.h5ad`` (CSR counts in X, a 'counts' layer, counts in raw)."""
    path = tmp_path_factory.mktemp("synth") / "synth.h5ad"
    out = synth.copy()
    out.layers["counts"] = out.X.copy()
    out.raw = out.copy()
    out.write_h5ad(path)
    return path


@pytest.fixture(scope="session")
def pbmc3k() -> ad.AnnData:
    """The real pbmc3k file in memory (raw counts, CSR)."""
    if not PBMC3K.is_file():
        pytest.skip(f"{PBMC3K} is absent")
    from c2t.io import read_h5ad

    return read_h5ad(PBMC3K)


@pytest.fixture(scope="session")
def reference_norm():
    """The test suite's own CP10k + log1p (see :func:`log1p_cp10k`), as a fixture for the test modules."""
    return log1p_cp10k


@pytest.fixture(scope="session")
def synthetic_factory():
    """:func:`make_synthetic`, for tests that need data of another shape or seed."""
    return make_synthetic


# ----------------------------------------------------------------------------------------------- c2t.train
# 300 real pbmc3k cells as an instruction dataset, a small tokenizer and tiny random GPT-2 / LLaMA / T5 models.
@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory, pbmc_dataset) -> Path:
    """SmolLM2's tokenizer (pre-tokenizer, special tokens, chat template) retrained to 1024 tokens on the records:
    the 49k-row output layer would make every CPU step ~10x slower."""
    import os

    from transformers import AutoTokenizer

    from c2t.instruct import load
    from c2t.models import smollm2_hf

    cache = os.environ.get("C2T_CACHE") or tmp_path_factory.mktemp("c2t_cache")
    try:
        smollm2 = AutoTokenizer.from_pretrained(smollm2_hf(cache))
    except ImportError as err:
        pytest.skip(f"no SmolLM2 tokenizer: {err}")
    dsd = load(pbmc_dataset)
    texts = [t for name in dsd for r in dsd[name] for t in (r["prompt"], r["completion"])]
    small = smollm2.train_new_from_iterator(texts, vocab_size=1024)
    out = tmp_path_factory.mktemp("tokenizer")
    small.save_pretrained(out)
    return out


def _pbmc_instructions(tmp_path_factory, name: str, tasks, *, seed: int) -> Path:
    """An instruction dataset of 300 seeded pbmc3k cells (top 10 genes), skipped when the file is absent."""
    if not PBMC3K.is_file():
        pytest.skip(f"{PBMC3K.name} is absent from ../shared/data")
    from c2t.instruct import build
    from c2t.io import read_h5ad

    adata = read_h5ad(PBMC3K)
    rows = np.sort(np.random.default_rng(seed).choice(adata.n_obs, 300, replace=False))
    out = tmp_path_factory.mktemp(name) / name
    build(adata[rows].copy(), out=out, tasks=tasks, top_k=10, label_key="seurat_celltype", drop_missing=True)
    return out


@pytest.fixture(scope="session")
def pbmc_dataset(tmp_path_factory) -> Path:
    """300 pbmc3k cells, cell type annotation, top 10 genes: ~230 train records."""
    return _pbmc_instructions(tmp_path_factory, "pbmc3k_ct", "cell_type", seed=0)


def _tiny_model(kind: str, tokenizer_dir: Path, folder: Path) -> Path:
    import torch
    from transformers import (
        AutoTokenizer,
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
        T5Config,
        T5ForConditionalGeneration,
    )

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    ids = {"pad_token_id": tok.pad_token_id, "eos_token_id": tok.eos_token_id, "bos_token_id": tok.bos_token_id}
    torch.manual_seed(0)
    if kind == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=256, n_embd=32, n_layer=2, n_head=2,
                                           initializer_range=0.2, **ids))
    elif kind == "llama":
        model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                             num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                                             max_position_embeddings=256, tie_word_embeddings=True,
                                             initializer_range=0.2, **ids))
    else:
        model = T5ForConditionalGeneration(T5Config(vocab_size=len(tok), d_model=32, d_kv=16, d_ff=64, num_layers=2,
                                                    num_heads=2, decoder_start_token_id=tok.pad_token_id,
                                                    pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id))
    out = folder / kind
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory, tokenizer_dir) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("models")
    return {kind: _tiny_model(kind, tokenizer_dir, folder) for kind in ("gpt2", "llama", "t5")}


# ----------------------------------------------------------------------------------------------- c2t.generate
# A tiny LLaMA whose heads are 32 wide (vLLM's CPU attention needs >= 32) and a c2t LoRA run on it, trained on 300
# pbmc3k cells' annotation, generation and unconditional records: the model every generation test loads.
@pytest.fixture(scope="session")
def gen_dataset(tmp_path_factory) -> Path:
    return _pbmc_instructions(tmp_path_factory, "pbmc3k_gen",
                              ["cell_type", "generation", {"task": "unconditional", "weight": 0.3}], seed=1)


@pytest.fixture(scope="session")
def vllm_llama(tmp_path_factory, tokenizer_dir) -> Path:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=512, tie_word_embeddings=True, initializer_range=0.2,
        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id))
    out = tmp_path_factory.mktemp("models") / "llama64"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def gen_run(tmp_path_factory, gen_dataset, vllm_llama) -> Path:
    """A finished LoRA run (chat format) on the tiny LLaMA: ~20 s on 2 cores."""
    from c2t.train import train

    out = tmp_path_factory.mktemp("runs") / "gen_lora"
    return train({"dataset": str(gen_dataset), "base_model": str(vllm_llama), "output_dir": str(out), "method": "lora",
                  "lora_r": 8, "max_steps": 12, "per_device_train_batch_size": 8, "learning_rate": 3e-3,
                  "eval_split": None, "max_length": 256, "logging_steps": 4, "format": "messages", "seed": 0,
                  "report_to": "none"})

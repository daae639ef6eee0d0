"""Generation and inference with tuned models: cells from prompts, labels from cells, hidden-state embeddings,
and tuning-free cluster annotation, on three backends (transformers, vLLM's offline engine, any
OpenAI-compatible server).

- :func:`generate_cells` (``c2t generate cells``): prompts -> sampled cell sentences -> decoded AnnData.
- :func:`predict` (``c2t predict``): an AnnData -> one label per cell, with accuracy and macro-F1.
- :func:`embed_hidden` (``c2t embed llm``): masked-mean hidden states of the cell sentences -> ``obsm``.
- :func:`annotate_clusters` (``c2t annotate-clusters``): Leiden clusters named by a chat model from markers.
- :func:`open_backend` and the backend classes: ``complete(prompts, sampling=, n=)``.

Submodules load lazily: the vLLM backend runs where only vLLM and transformers are installed.

>>> from c2t.generate import Sampling
>>> Sampling(temperature=0).greedy
True
"""

from __future__ import annotations

import importlib

_LAZY = {
    "Sampling": "_sampling", "request_seed": "_sampling",
    "Backend": "_backends", "BACKENDS": "_backends", "ModelSpec": "_backends", "OpenAIBackend": "_backends",
    "TransformersBackend": "_backends", "VLLMBackend": "_backends", "model_spec": "_backends",
    "open_backend": "_backends",
    "generate_cells": "_cells", "parse_labels": "_cells",
    "predict": "_predict", "predict_cells": "_predict", "match_labels": "_predict", "LABEL_TASKS": "_predict",
    "CELL_TASKS": "_predict",
    "embed_hidden": "_hidden", "masked_mean": "_hidden",
    "annotate_clusters": "_clusters", "cluster_prompt": "_clusters",
    "RunInfo": "_run", "read_run_info": "_run",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"c2t.generate.{_LAZY[name]}"), name)
    msg = f"module 'c2t.generate' has no attribute {name!r}"
    raise AttributeError(msg)

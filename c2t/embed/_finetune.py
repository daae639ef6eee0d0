"""CELLama's fine-tuning recipe: teach a sentence encoder that cells close in expression read alike.

Pairs are (cell, one of its nearest neighbours in PCA space) and (cell, a random cell); the target of each
pair is the cosine similarity of the two cells' PCA vectors (clipped at 0), and the loss is
sentence-transformers' CosineSimilarityLoss on the pair's CELLama sentences.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from c2t._atomic import staged_dir
from c2t._errors import C2TInputError
from c2t._manifest import write_manifest

__all__ = ["cellama_pairs", "finetune_cellama"]


def cellama_pairs(pca_vectors: np.ndarray, *, n_neighbors: int = 5, n_random: int = 5, seed: int = 0):
    """Index pairs and targets: each cell with ``n_neighbors`` PCA neighbours and ``n_random`` random cells.

    Returns
    -------
    tuple of numpy.ndarray
        ``(first, second, target)`` with target = max(0, cosine similarity in PCA space).
    """
    from sklearn.neighbors import NearestNeighbors

    n = len(pca_vectors)
    if n < 3:
        msg = f"CELLama fine-tuning needs at least 3 cells, got {n}"
        raise C2TInputError(msg)
    rng = np.random.default_rng(seed)
    k = min(n_neighbors + 1, n)
    _, idx = NearestNeighbors(n_neighbors=k, metric="cosine").fit(pca_vectors).kneighbors(pca_vectors)
    first = np.concatenate([np.repeat(np.arange(n), k - 1), np.repeat(np.arange(n), n_random)])
    second = np.concatenate([idx[:, 1:].ravel(), rng.integers(0, n, size=n * n_random)])
    unit = pca_vectors / np.maximum(np.linalg.norm(pca_vectors, axis=1, keepdims=True), 1e-12)
    target = np.clip((unit[first] * unit[second]).sum(axis=1), 0.0, 1.0)
    return first, second, target.astype(np.float32)


def finetune_cellama(
    adata,
    *,
    model_path: str | os.PathLike,
    out: str | os.PathLike,
    pca_key: str = "X_pca_log",
    top_k: int = 32,
    metadata_keys: Sequence[str] = (),
    n_neighbors: int = 5,
    n_random: int = 5,
    epochs: int = 1,
    batch_size: int = 16,
    learning_rate: float = 2e-5,
    max_seq_length: int | None = None,
    seed: int = 0,
    **sentence_options: Any,
) -> Path:
    """Fine-tune a local sentence-transformers model on the user's cells (CELLama's recipe); save it to ``out``.

    ``adata.obsm[pca_key]`` must hold PCA coordinates (see :func:`c2t.embed.pca`). The fine-tuned model is
    a sentence-transformers folder plus a c2t manifest; load it with
    :class:`c2t.genes.SentenceTransformerEncoder` and pass it to :func:`c2t.embed.cellama`.

    Returns
    -------
    pathlib.Path
        ``out``.
    """
    import datasets
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )

    try:
        from sentence_transformers.sentence_transformer.losses import CosineSimilarityLoss
    except ImportError:  # sentence-transformers < 6
        from sentence_transformers.losses import CosineSimilarityLoss

    from c2t.embed._cells import cellama_texts

    if pca_key not in adata.obsm:
        msg = f"{pca_key!r} not found in adata.obsm (run c2t.embed.pca first); obsm keys are: {', '.join(adata.obsm)}"
        raise C2TInputError(msg)
    model_path, out = Path(model_path), Path(out)
    if not model_path.is_dir():
        msg = f"sentence-transformers model {model_path}: no such folder"
        raise C2TInputError(msg)
    texts = np.array(cellama_texts(adata, top_k=top_k, metadata_keys=metadata_keys, **sentence_options), dtype=object)
    first, second, target = cellama_pairs(np.asarray(adata.obsm[pca_key]), n_neighbors=n_neighbors,
                                          n_random=n_random, seed=seed)
    train = datasets.Dataset.from_dict(
        {"sentence1": texts[first].tolist(), "sentence2": texts[second].tolist(), "score": target.tolist()}
    )
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    model = SentenceTransformer(str(model_path), device="cpu", local_files_only=True)
    if max_seq_length:
        model.max_seq_length = max_seq_length
    with staged_dir(out) as staging:
        args = SentenceTransformerTrainingArguments(
            output_dir=str(staging / "checkpoints"), num_train_epochs=epochs, per_device_train_batch_size=batch_size,
            learning_rate=learning_rate, seed=seed, report_to="none", save_strategy="no", logging_steps=10,
            use_cpu=True,
        )
        trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=train,
                                             loss=CosineSimilarityLoss(model))
        result = trainer.train()
        shutil.rmtree(staging / "checkpoints", ignore_errors=True)
        model.save(str(staging))
        write_manifest(staging, {
            "kind": "cellama_model", "base_model": str(model_path), "n_cells": adata.n_obs, "n_pairs": len(train),
            "top_k": top_k, "metadata_keys": list(metadata_keys), "pca_key": pca_key, "epochs": epochs,
            "learning_rate": learning_rate, "seed": seed, "train_loss": float(result.training_loss),
        })
    return out

"""Pre-train a small transformer encoder from scratch on your cells, with any of the tokenisers.

Masked gene modelling (``objective="mlm"``, BERT): 15% of each cell's gene positions (scBERT: of its
expressed genes) are picked; 80% of them become ``<mask>``, 10% another gene of the batch, 10% stay; the
model predicts the original token. Next-gene prediction (``"clm"``, GPT-2, as tGPT): predict each token
from the ones before. Cells as tokens (CellPLM recipe): 15% of the cells of a sequence are replaced by a
learned mask vector and reconstructed (mean squared error). A seeded validation split reports the
held-out accuracy against the most-frequent-token baseline.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from c2t._errors import C2TInputError
from c2t._yaml import read_yaml_mapping
from c2t.plm._encoding import Encoding
from c2t.plm._model import CellLM, ModelSpec, PLMEncoder


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass
class PretrainConfig:
    """Settings of :func:`pretrain` and of ``c2t pretrain CONFIG.yaml`` (every field can be a YAML key)."""

    data: str | None = field(default=None, metadata=_help(
        "The .h5ad file of cells (raw counts for the recipes that need them)."))
    out: str | None = field(default=None, metadata=_help(
        "Folder to save the encoder in (manifest, transformers model, tokenizer)."))
    tokenizer: str = field(default="geneformer", metadata=_help(
        "Recipe: scbert, geneformer, scgpt, tgpt, scfoundation, uce, cellplm, rank_metadata or scmulan."))
    tokenizer_options: dict = field(default_factory=dict, metadata=_help(
        "Keyword arguments of the tokenizer class (e.g. max_length: 256). For uce and cellplm, gene_embeddings "
        "and chromosomes may be CSV/TSV/Parquet paths (genes in the first column)."))
    objective: str = field(default="mlm", metadata=_help(
        "mlm (masked genes, BERT) or clm (next gene, GPT-2); cellplm always uses masked cells."))
    layer: str | None = field(default=None, metadata=_help("Use this AnnData layer instead of X."))
    use_raw: bool = field(default=False, metadata=_help("Use raw.X instead of X."))
    gene_key: str | None = field(default=None, metadata=_help("var column with the gene names (default var_names)."))
    max_cells: int | None = field(default=None, metadata=_help("Train on a seeded random subset of this many cells."))
    hidden_size: int = field(default=128, metadata=_help("Transformer width."))
    num_layers: int = field(default=2, metadata=_help("Transformer layers."))
    num_heads: int = field(default=4, metadata=_help("Attention heads."))
    intermediate_size: int = field(default=256, metadata=_help("Feed-forward width."))
    dropout: float = field(default=0.1, metadata=_help("Dropout."))
    epochs: float = field(default=1.0, metadata=_help("Passes over the training cells."))
    max_steps: int | None = field(default=None, metadata=_help("Stop after this many optimiser steps."))
    batch_size: int = field(default=32, metadata=_help("Cells per step."))
    learning_rate: float = field(default=1e-3, metadata=_help(
        "Peak AdamW learning rate (linear warm-up, then linear decay)."))
    weight_decay: float = field(default=0.01, metadata=_help("AdamW weight decay."))
    warmup_fraction: float = field(default=0.05, metadata=_help("Fraction of steps spent warming up."))
    mask_probability: float = field(default=0.15, metadata=_help(
        "Fraction of gene positions (cells, for cellplm) masked per sequence."))
    validation_fraction: float = field(default=0.1, metadata=_help("Held-out cells for the reported accuracy."))
    pooling: str | None = field(default=None, metadata=_help("cls, mean or last (default: the recipe's)."))
    seed: int = field(default=0, metadata=_help("Seeds the subset, split, initialisation, masking and batches."))
    threads: int | None = field(default=None, metadata=_help(
        "torch CPU threads during training (default: torch's; 1 is often fastest for small models)."))
    log_every: int = field(default=20, metadata=_help("Record the training loss every this many steps."))

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> PretrainConfig:
        """Read a YAML file of fields; unknown keys are refused with the list of valid ones."""
        data = read_yaml_mapping(path, missing="file", shape="expected a mapping of settings")
        return cls.from_dict(data, where=str(path))

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "config") -> PretrainConfig:
        names = [f.name for f in fields(cls)]
        unknown = [k for k in data if k not in names]
        if unknown:
            msg = f"{where}: unknown setting {unknown[0]!r}; settings are: {', '.join(names)}"
            raise C2TInputError(msg)
        return cls(**data)

    def check(self) -> None:
        from c2t.plm._registry import TOKENIZERS

        if self.tokenizer not in TOKENIZERS:
            msg = f"tokenizer must be one of {', '.join(TOKENIZERS)}, not {self.tokenizer!r}"
            raise C2TInputError(msg)
        if self.objective not in ("mlm", "clm"):
            msg = f"objective must be 'mlm' or 'clm', not {self.objective!r}"
            raise C2TInputError(msg)
        for name in ("hidden_size", "num_layers", "num_heads", "intermediate_size", "batch_size", "log_every"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                msg = f"{name} must be a positive integer, not {v!r}"
                raise C2TInputError(msg)
        if not 0 < self.mask_probability < 1:
            msg = f"mask_probability must be between 0 and 1, not {self.mask_probability!r}"
            raise C2TInputError(msg)
        if not 0 <= self.validation_fraction < 1:
            msg = f"validation_fraction must be in [0, 1), not {self.validation_fraction!r}"
            raise C2TInputError(msg)
        if not (self.epochs > 0 or (self.max_steps or 0) > 0):
            msg = "epochs or max_steps must be positive"
            raise C2TInputError(msg)


def _jsonable(value):
    """``value`` with tables and arrays replaced by a short description (for the manifest)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, pd.DataFrame | np.ndarray):
        return f"<{type(value).__name__} {'x'.join(map(str, value.shape))}>"
    if isinstance(value, os.PathLike):
        return str(value)
    return value


def _read_table(value):
    if isinstance(value, str | os.PathLike):
        path = Path(value)
        if not path.is_file():
            msg = f"{path}: no such file"
            raise C2TInputError(msg)
        if path.suffix == ".parquet":
            return pd.read_parquet(path)
        return pd.read_csv(path, sep="\t" if path.suffix in (".tsv", ".txt") else ",", index_col=0)
    return value


def make_tokenizer(name: str, options: dict[str, Any]):
    """The tokeniser ``name`` with ``options`` (table-valued options may be file paths)."""
    from c2t.plm._registry import TOKENIZERS

    options = dict(options)
    for key in ("gene_embeddings", "chromosomes"):
        if key in options:
            options[key] = _read_table(options[key])
    try:
        return TOKENIZERS[name](**options)
    except TypeError as err:
        msg = f"tokenizer {name!r}: {err}"
        raise C2TInputError(msg) from None


# ----------------------------------------------------------------------------------------------- masking
def mask_tokens(ids: torch.Tensor, maskable: torch.Tensor, *, mask_id: int, probability: float,
                generator: torch.Generator, replace: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking of the ``maskable`` positions: returns (masked ids, labels with -100 where not masked).

    Each maskable position is picked with ``probability``; picked ones become ``mask_id`` (80%), the token
    of another picked-or-maskable position of the batch (10%) or stay (10%); ``replace=False`` masks all.
    """
    picked = (torch.rand(ids.shape, generator=generator) < probability) & maskable
    labels = torch.where(picked, ids, torch.full_like(ids, -100))
    out = ids.clone()
    if replace:
        u = torch.rand(ids.shape, generator=generator)
        to_mask = picked & (u < 0.8)
        to_random = picked & (u >= 0.8) & (u < 0.9)
        pool = ids[maskable]
        if to_random.any() and len(pool):
            out[to_random] = pool[torch.randint(len(pool), (int(to_random.sum()),), generator=generator)]
        out[to_mask] = mask_id
    else:
        out[picked] = mask_id
    return out, labels


def _batch(enc: Encoding, rows: np.ndarray) -> dict[str, torch.Tensor]:
    """Rows of an encoding as tensors, trimmed to the longest real sequence among them."""
    mask = enc["attention_mask"][rows]
    width = max(int(mask.any(axis=0).nonzero()[0].max(initial=0)) + 1, 1)
    out = {k: torch.from_numpy(np.ascontiguousarray(v[rows][:, :width] if v.ndim >= 2 else v[rows]))
           for k, v in enc.items()}
    out["_maskable"] = torch.from_numpy(np.ascontiguousarray(enc.maskable[rows][:, :width]))
    return out


# ----------------------------------------------------------------------------------------------- training
def pretrain(adata=None, config: PretrainConfig | None = None, *, progress=None, **overrides) -> PLMEncoder:
    """Pre-train a small encoder from scratch on the cells of ``adata`` (or ``config.data``).

    Parameters
    ----------
    adata
        An AnnData or ``.h5ad`` path; default ``config.data``.
    config
        A :class:`PretrainConfig`; keyword arguments override its fields.
    progress
        Called with each recorded ``{"step", "loss"}`` (every ``log_every`` steps).

    Returns
    -------
    PLMEncoder
        Saved to ``config.out`` when set. ``encoder.report`` holds the loss curve, the held-out masked
        (or next) token accuracy and the most-frequent-token baseline on the same positions.
    """
    from c2t.io import read_h5ad

    config = PretrainConfig.from_dict({**(vars(config) if config else {}), **overrides})
    config.check()
    if adata is None:
        if config.data is None:
            msg = "no data: pass adata or set data: in the config"
            raise C2TInputError(msg)
        adata = config.data
    source_path = str(adata) if isinstance(adata, str | os.PathLike) else None
    if source_path:
        adata = read_h5ad(adata)
    previous = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(config.threads)
    try:
        return _pretrain(adata, config, source_path, progress)
    finally:
        torch.set_num_threads(previous)


def _pretrain(adata, config: PretrainConfig, source_path: str | None, progress) -> PLMEncoder:
    from c2t._manifest import file_hash

    rng = np.random.default_rng(config.seed)
    if config.max_cells and config.max_cells < adata.n_obs:
        adata = adata[np.sort(rng.choice(adata.n_obs, config.max_cells, replace=False))].copy()
    if adata.n_obs < 2:
        msg = f"pre-training needs at least 2 cells, found {adata.n_obs}"
        raise C2TInputError(msg)

    t0 = time.perf_counter()
    tok = make_tokenizer(config.tokenizer, config.tokenizer_options)
    options = {"layer": config.layer, "use_raw": config.use_raw, "gene_key": config.gene_key}
    tok.fit(adata, **options)
    enc = tok(adata, **options)
    tokenize_s = time.perf_counter() - t0
    cells_mode = tok.recipe == "cellplm"
    objective = "cells" if cells_mode else config.objective
    if objective == "mlm" and not tok.vocab.has("mask"):
        msg = f"the {tok.recipe} vocabulary has no <mask> token; use objective: clm"
        raise C2TInputError(msg)

    n_rows = len(enc["attention_mask"])
    order = rng.permutation(n_rows)
    n_val = round(config.validation_fraction * n_rows) if n_rows > 1 else 0
    n_val = min(n_val, n_rows - 1)
    val_rows, train_rows = np.sort(order[:n_val]), order[n_val:]

    torch.manual_seed(config.seed)
    spec = ModelSpec(
        objective=objective, vocab_size=len(tok.vocab), max_length=max(enc["attention_mask"].shape[1], 8),
        pad_id=tok.vocab.id("pad") if tok.vocab.has("pad") else 0, hidden_size=config.hidden_size,
        num_layers=config.num_layers, num_heads=config.num_heads, intermediate_size=config.intermediate_size,
        dropout=config.dropout, positional=tok.positional, values="values" in enc, batch_tokens="batch_ids" in enc,
        modality_tokens="modality_ids" in enc,
        fixed_embedding_dim=tok.embedding_matrix.shape[1] if tok.recipe == "uce" else None,
        input_dim=enc["inputs_embeds"].shape[-1] if cells_mode else None,
    )
    model = CellLM(spec, fixed_embeddings=tok.embedding_matrix if tok.recipe == "uce" else None,
                   special_ids=tok.vocab.special_ids())
    steps_per_epoch = math.ceil(len(train_rows) / config.batch_size)
    total = config.max_steps or max(1, round(config.epochs * steps_per_epoch))
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    warmup = max(1, int(config.warmup_fraction * total))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (total - s) / max(1, total - warmup))))
    gen = torch.Generator().manual_seed(config.seed)
    mask_id = tok.vocab.id("mask") if objective == "mlm" else -1
    losses: list[dict[str, float]] = []
    step = 0
    model.train()
    t1 = time.perf_counter()
    while step < total:
        for start in range(0, len(train_rows), config.batch_size):
            if step >= total:
                break
            batch = _batch(enc, np.sort(train_rows[start : start + config.batch_size]))
            loss = _loss(model, batch, objective, mask_id, config.mask_probability, gen)
            if loss is None:
                continue
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            step += 1
            if step % config.log_every == 0 or step == total:
                losses.append({"step": step, "total_steps": total, "loss": round(loss.item(), 4),
                               "seconds": round(time.perf_counter() - t1, 1)})
                if progress:
                    progress(losses[-1])
        train_rows = rng.permutation(train_rows)
    train_s = time.perf_counter() - t1
    model.eval()
    report: dict[str, Any] = {
        "recipe": tok.recipe, "objective": objective, "cells": int(adata.n_obs), "train_rows": len(train_rows),
        "validation_rows": len(val_rows), "steps": step, "losses": losses, "tokenize_s": round(tokenize_s, 2),
        "train_s": round(train_s, 2), "genes": enc.report.get("genes"), "source": source_path,
        "source_sha256": file_hash(source_path) if source_path else None,
        "config": _jsonable({k: v for k, v in vars(config).items() if k not in ("data", "out")}),
    }
    if len(val_rows):
        report["validation"] = evaluate(model, enc, val_rows, train_rows, objective=objective, mask_id=mask_id,
                                        probability=config.mask_probability, seed=config.seed + 1,
                                        batch_size=config.batch_size)
    encoder = PLMEncoder(tok, model, name=f"{tok.recipe}_{objective}", pooling=config.pooling, report=report,
                         **options)
    if config.out:
        encoder.save(config.out)
    return encoder


def _loss(model: CellLM, batch: dict[str, torch.Tensor], objective: str, mask_id: int, probability: float,
          gen: torch.Generator):
    maskable = batch.pop("_maskable")
    if objective == "cells":
        cell_mask = (torch.rand(maskable.shape, generator=gen) < probability) & maskable
        if not cell_mask.any():
            return None
        return model(**batch, cell_mask=cell_mask).loss
    if objective == "mlm":
        ids, labels = mask_tokens(batch["input_ids"].long(), maskable, mask_id=mask_id, probability=probability,
                                  generator=gen)
        if not (labels >= 0).any():
            return None
        batch["input_ids"] = ids
        if "values" in batch:
            batch["values"] = torch.where(labels >= 0, torch.zeros_like(batch["values"]), batch["values"])
        return model(**batch, labels=labels).loss
    labels = torch.where(batch["attention_mask"].bool(), batch["input_ids"].long(), torch.full_like(batch["input_ids"].long(), -100))
    return model(**batch, labels=labels).loss


@torch.no_grad()
def evaluate(model: CellLM, enc: Encoding, rows: np.ndarray, train_rows: np.ndarray, *, objective: str,
             mask_id: int, probability: float, seed: int, batch_size: int = 64) -> dict[str, Any]:
    """Held-out score of the model and of the most-frequent baseline, on the same (seeded) positions.

    mlm: masked-token accuracy (every picked position becomes ``<mask>``) vs always predicting the most
    frequent token of the training cells' maskable positions. clm: next-token accuracy vs the most frequent
    next token. cells: reconstruction R² of masked cells vs predicting the mean training cell.
    """
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    if objective == "cells":
        train_vectors = enc["inputs_embeds"][train_rows][enc["attention_mask"][train_rows].astype(bool)]
        mean = torch.as_tensor(train_vectors.mean(axis=0))
        sse = sst = 0.0
        for start in range(0, len(rows), batch_size):
            b = _batch(enc, rows[start : start + batch_size])
            maskable = b.pop("_maskable")
            cell_mask = (torch.rand(maskable.shape, generator=gen) < probability) & maskable
            if not cell_mask.any():
                continue
            out = model(**b, cell_mask=cell_mask)
            target = b["inputs_embeds"].float()[cell_mask]
            sse += float(((out.logits[cell_mask] - target) ** 2).sum())
            sst += float(((mean - target) ** 2).sum())
        return {"metric": "masked cell reconstruction R² (baseline: the mean training cell = 0)",
                "r2": round(1 - sse / sst, 4) if sst else None}
    ids_train = enc["input_ids"][train_rows]
    if objective == "mlm":
        labels_train = ids_train[enc.maskable[train_rows]]
    else:
        labels_train = ids_train[:, 1:][enc["attention_mask"][train_rows][:, 1:].astype(bool)]
    most_frequent = int(np.bincount(labels_train.astype(np.int64)).argmax())
    correct = baseline = n = 0
    for start in range(0, len(rows), batch_size):
        b = _batch(enc, rows[start : start + batch_size])
        maskable = b.pop("_maskable")
        if objective == "mlm":
            ids, labels = mask_tokens(b["input_ids"].long(), maskable, mask_id=mask_id, probability=probability,
                                      generator=gen, replace=False)
            b["input_ids"] = ids
            if "values" in b:
                b["values"] = torch.where(labels >= 0, torch.zeros_like(b["values"]), b["values"])
            where = labels >= 0
            pred, truth = model(**b, predict_at=where).logits.argmax(-1), labels[where]
        else:
            where = b["attention_mask"][:, 1:].bool()
            pred, truth = model(**b, predict_at=where).logits.argmax(-1), b["input_ids"][:, 1:].long()[where]
        correct += int((pred == truth).sum())
        baseline += int((truth == most_frequent).sum())
        n += int(where.sum())
    what = "masked-token" if objective == "mlm" else "next-token"
    return {"metric": f"held-out {what} accuracy", "positions": n,
            "accuracy": round(correct / n, 4) if n else None,
            "most_frequent_token_accuracy": round(baseline / n, 4) if n else None,
            "most_frequent_token": most_frequent}

"""scInterpreter-style tuning: gene text embeddings projected into a frozen LLM, read out by a linear head.

A cell becomes a short sequence of "soft tokens": its ``top_k`` most expressed genes (highest first), each
gene's text embedding (:class:`c2t.genes.GeneEmbeddings`, e.g. MiniLM of its NCBI summary) sent through a
small trainable MLP (the projector) into the LLM's input-embedding space, optionally scaled by the gene's
expression, followed by one learned read-out token. The frozen decoder reads them through ``inputs_embeds``;
its last hidden states are pooled (mean over the cell's tokens, or the read-out token) into a linear
classification head trained with cross-entropy on cell type labels. Only the projector, the read-out token and
the head train; the LLM's weights never change.

The torch module (:func:`soft_token_classifier`) takes tensors only; :class:`ProjectorClassifier` is the
AnnData-aware side (gene lookup, fitting, ``predict``/``embed``, save/load with a manifest).
"""

from __future__ import annotations

import csv
import functools
import io
import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from c2t._atomic import atomic_path, staged_dir, write_text_atomic
from c2t._errors import C2TInputError
from c2t._manifest import read_manifest, vocabulary_hash, write_manifest

__all__ = ["ProjectorClassifier", "base_fingerprint", "cell_gene_tokens", "fit_projector", "load_projector", "soft_token_classifier"]

KIND = "projector_classifier"
WEIGHTS_FILE = "projector.safetensors"
GENES_FILE = "genes.tsv"
VECTORS_FILE = "gene_vectors.npy"
CLASSES_FILE = "classes.txt"
LOSS_CSV = "loss.csv"
POOLINGS = ("mean", "last")


# ----------------------------------------------------------------------------------------------- cells -> tokens
def cell_gene_tokens(
    adata,
    genes: Sequence[str],
    *,
    top_k: int = 32,
    layer: str | None = None,
    use_raw: bool = False,
    gene_key: str | None = None,
    normalize: Literal["auto", "counts", "log1p"] = "auto",
    chunk_size: int = 10_000,
) -> tuple[np.ndarray, np.ndarray]:
    """Each cell's ``top_k`` most expressed genes among ``genes``, as row indices into ``genes``.

    Genes of the data that are not in ``genes`` are skipped (a cell's top genes are those that have a vector).
    Ties go to the gene that comes first in the data's gene order, so a cell's tokens depend on that cell alone.

    Returns
    -------
    tuple of numpy.ndarray
        ``ids`` (cells x top_k, int64; -1 pads cells with fewer expressed genes) and ``values`` (cells x top_k,
        float32; log1p(CP10k) expression, 0 at padding).

    Examples
    --------
    >>> import anndata as ad
    >>> adata = ad.AnnData(np.array([[5.0, 0.0, 1.0], [0.0, 2.0, 0.0]], dtype=np.float32))
    >>> adata.var_names = ["CD3D", "LYZ", "MS4A1"]
    >>> ids, values = cell_gene_tokens(adata, ["LYZ", "CD3D", "MS4A1"], top_k=2)
    >>> ids.tolist()
    [[1, 2], [0, -1]]
    """
    from c2t.io import detect_input_kind, normalize_log1p, open_source, resolve_genes

    if top_k <= 0:
        msg = f"top_k must be positive, not {top_k!r}"
        raise C2TInputError(msg)
    if normalize not in ("auto", "counts", "log1p"):
        msg = f"normalize must be 'auto', 'counts' or 'log1p', not {normalize!r}"
        raise C2TInputError(msg)
    with open_source(adata, layer=layer, use_raw=use_raw) as source:
        plan = resolve_genes(source.var, gene_key=gene_key, on_duplicate="first")
        row_of_gene = pd.Index([str(g) for g in genes]).get_indexer(pd.Index(plan.vocabulary.astype(str)))
        column_row = np.where(plan.column_to_gene >= 0, row_of_gene[np.maximum(plan.column_to_gene, 0)], -1)
        if not (column_row >= 0).any():
            msg = (f"none of the {len(plan.vocabulary)} genes of the data has a gene embedding (e.g. "
                   f"{', '.join(map(str, plan.vocabulary[:3]))} vs {', '.join(map(str, list(genes)[:3]))}); "
                   "the gene embeddings cover another vocabulary")
            raise C2TInputError(msg)
        kind = detect_input_kind(source.rows(0, min(source.n_obs, 2000))) if normalize == "auto" else normalize
        ids = np.full((source.n_obs, top_k), -1, dtype=np.int64)
        values = np.zeros((source.n_obs, top_k), dtype=np.float32)
        for start in range(0, source.n_obs, chunk_size):
            block = source.rows(start, min(source.n_obs, start + chunk_size))
            bad = ~(np.isfinite(block.data) & (block.data >= 0))
            if bad.any():
                row = int(np.repeat(np.arange(block.shape[0]), np.diff(block.indptr))[np.argmax(bad)])
                msg = (f"{source.name} ({source.matrix}): cell {source.obs_names(start + row, start + row + 1)[0]!r} "
                       "has a negative, NaN or infinite value")
                raise C2TInputError(msg)
            if kind == "counts":
                block = normalize_log1p(block)
            rows = np.repeat(np.arange(block.shape[0]), np.diff(block.indptr))
            cols = block.indices
            keep = (block.data > 0) & (column_row[cols] >= 0)
            rows, cols, vals = rows[keep], cols[keep], block.data[keep]
            order = np.lexsort((cols, -vals, rows))
            rows, cols, vals = rows[order], cols[order], vals[order]
            rank = np.arange(len(rows)) - np.searchsorted(rows, rows)
            top = rank < top_k
            ids[start + rows[top], rank[top]] = column_row[cols[top]]
            values[start + rows[top], rank[top]] = vals[top]
    return ids, values


# ----------------------------------------------------------------------------------------------- torch module
@functools.cache
def _module_class():
    """The module class, defined on first use (torch is imported lazily)."""
    import torch
    from torch import nn

    class SoftTokenClassifier(nn.Module):
        """Projector (gene vector -> LLM input embedding) + frozen LLM + read-out token + linear head."""

        def __init__(self, llm, gene_dim: int, n_classes: int, *, hidden_dim: int, pooling: str,
                     scale_by_expression: bool, dropout: float):
            super().__init__()
            width = int(llm.get_input_embeddings().embedding_dim)
            self.llm = llm
            for p in self.llm.parameters():
                p.requires_grad = False
            self.projector = nn.Sequential(nn.Linear(gene_dim, hidden_dim), nn.GELU(), nn.Dropout(dropout),
                                           nn.Linear(hidden_dim, width))
            # start at the scale of the LLM's own token embeddings
            scale = float(llm.get_input_embeddings().weight.detach().float().norm(dim=1).mean()) / width**0.5
            self.readout = nn.Parameter(torch.randn(width) * scale)
            self.head = nn.Linear(width, n_classes)
            self.pooling = pooling
            self.scale_by_expression = scale_by_expression

        def train(self, mode: bool = True):  # noqa: FBT001, FBT002 - nn.Module's signature
            super().train(mode)
            self.llm.eval()  # frozen: no dropout in the LLM either
            return self

        def embed(self, vectors, values, mask):
            """``vectors`` (B, k, gene_dim), ``values`` (B, k), ``mask`` (B, k) -> pooled hidden state (B, width)."""
            tokens = self.projector(vectors)
            if self.scale_by_expression:
                top = values.amax(dim=1, keepdim=True).clamp_min(1e-6)
                tokens = tokens * (values / top).unsqueeze(-1)
            batch = tokens.shape[0]
            tokens = torch.cat([tokens, self.readout.expand(batch, 1, -1)], dim=1)
            mask = torch.cat([mask, mask.new_ones(batch, 1)], dim=1)
            dtype = self.llm.get_input_embeddings().weight.dtype
            hidden = self.llm(inputs_embeds=tokens.to(dtype), attention_mask=mask.long()).last_hidden_state.float()
            if self.pooling == "last":
                return hidden[:, -1]
            keep = mask.unsqueeze(-1).bool()
            return torch.where(keep, hidden, 0.0).sum(dim=1) / mask.sum(dim=1, keepdim=True)

        def forward(self, vectors, values, mask):
            return self.head(self.embed(vectors, values, mask))

    return SoftTokenClassifier


def soft_token_classifier(llm, gene_dim: int, n_classes: int, *, hidden_dim: int = 256, pooling: str = "mean",
                          scale_by_expression: bool = False, dropout: float = 0.1):
    """The tensor-only torch module: ``module(vectors, values, mask) -> logits``; ``module.embed(...)`` pools.

    ``llm`` is a transformers base model (``AutoModel``: LLaMA family, GPT-2 ...) whose parameters are frozen
    here; ``vectors`` are gene embeddings (B, k, gene_dim), ``values`` their expression, ``mask`` 1 for real
    genes and 0 for padding.
    """
    if pooling not in POOLINGS:
        msg = f"pooling must be one of {', '.join(POOLINGS)}, not {pooling!r}"
        raise C2TInputError(msg)
    return _module_class()(llm, gene_dim, n_classes, hidden_dim=hidden_dim, pooling=pooling,
                           scale_by_expression=scale_by_expression, dropout=dropout)


def _load_llm(base_model: str | os.PathLike, *, llm_layers: int | None, dtype: str):
    import torch
    from transformers import AutoConfig, AutoModel

    base = Path(base_model)
    if not (base / "config.json").is_file():
        msg = f"base_model {base_model}: no such transformers model folder (no config.json)"
        raise C2TInputError(msg)
    config = AutoConfig.from_pretrained(base)
    if getattr(config, "is_encoder_decoder", False):
        msg = f"base_model {base_model}: an encoder-decoder model ({config.model_type}); use a decoder (LLaMA family, GPT-2)"
        raise C2TInputError(msg)
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype not in dtypes:
        msg = f"dtype must be one of {', '.join(dtypes)}, not {dtype!r}"
        raise C2TInputError(msg)
    n_layers = getattr(config, "num_hidden_layers", None)
    if llm_layers is not None:
        if n_layers is None:
            msg = f"llm_layers: cannot tell the layers of a {config.model_type} model; leave llm_layers unset"
            raise C2TInputError(msg)
        if not 1 <= llm_layers <= n_layers:
            msg = f"llm_layers must be between 1 and {n_layers} (the layers of {base_model}), not {llm_layers!r}"
            raise C2TInputError(msg)
        # load only the first llm_layers decoder layers (the rest of the checkpoint is not needed)
        config.num_hidden_layers = llm_layers
        if getattr(config, "layer_types", None) is not None:
            config.layer_types = list(config.layer_types)[:llm_layers]
    import transformers

    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # "some weights were not used": the output layer, the cut layers
    try:
        llm = AutoModel.from_pretrained(base, config=config, dtype=dtypes[dtype])
    finally:
        transformers.logging.set_verbosity(verbosity)
    llm.eval()
    return llm


def base_fingerprint(base_model: str | os.PathLike) -> str:
    """A cheap fingerprint of a model folder: its ``config.json`` and, for each weights file, its size and first MiB.

    Enough to tell another checkpoint (even of the same architecture) from the one a projector was trained on,
    without hashing gigabytes.
    """
    import hashlib

    base = Path(base_model)
    h = hashlib.sha256((base / "config.json").read_bytes())
    for file in sorted([*base.glob("*.safetensors"), *base.glob("*.bin")]):
        h.update(f"{file.name}:{file.stat().st_size}".encode())
        with open(file, "rb") as f:
            h.update(f.read(1 << 20))
    return "sha256:" + h.hexdigest()[:16]


# ----------------------------------------------------------------------------------------------- AnnData side
class ProjectorClassifier:
    """A trained projector + head over a frozen LLM, with the gene vectors and classes it was trained with.

    Build one with :func:`fit_projector`; reload a saved one with :func:`load_projector`.

    Examples
    --------
    >>> import anndata as ad, tempfile, torch
    >>> from transformers import LlamaConfig, LlamaModel
    >>> from c2t.genes import GeneEmbeddings
    >>> _ = torch.manual_seed(0)
    >>> base = tempfile.mkdtemp()
    >>> LlamaModel(LlamaConfig(vocab_size=16, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
    ...                        num_attention_heads=2, num_key_value_heads=1)).save_pretrained(base)
    >>> adata = ad.AnnData(np.array([[5, 0, 1], [0, 3, 1], [4, 0, 0], [0, 2, 2]], dtype=np.float32))
    >>> adata.var_names = ["CD3D", "LYZ", "MS4A1"]
    >>> adata.obs["cell_type"] = ["T", "Mono", "T", "Mono"]
    >>> genes = GeneEmbeddings(np.array(["CD3D", "LYZ", "MS4A1"]), np.eye(3, dtype=np.float32), np.ones(3, bool))
    >>> clf = fit_projector(adata, genes, label_key="cell_type", base_model=base, top_k=2, hidden_dim=8,
    ...                     epochs=20, batch_size=4, learning_rate=1e-2)
    >>> clf.predict(adata)
    >>> adata.obs["c2t_projector"].tolist()
    ['T', 'Mono', 'T', 'Mono']
    >>> clf.embed(adata)
    >>> adata.obsm["X_c2t_projector"].shape
    (4, 16)
    """

    def __init__(self, module, *, genes: np.ndarray, vectors: np.ndarray, classes: Sequence[str],
                 settings: dict[str, Any], history: list[dict[str, Any]] | None = None,
                 manifest: dict[str, Any] | None = None):
        self.module = module
        self.genes = np.asarray(genes, dtype=object)
        self.vectors = np.asarray(vectors, dtype=np.float32)
        self.classes = [str(c) for c in classes]
        self.settings = dict(settings)
        self.history = list(history or [])
        self.manifest = dict(manifest or {})

    def __repr__(self) -> str:
        s = self.settings
        return (f"ProjectorClassifier({len(self.classes)} classes, {len(self.genes)} genes x {self.vectors.shape[1]}, "
                f"top_k={s['top_k']}, pooling={s['pooling']}, base_model={s['base_model']})")

    @property
    def device(self):
        return next(self.module.head.parameters()).device

    # ---------------------------------------------------------------- tensors
    def _tokens(self, adata) -> tuple[np.ndarray, np.ndarray]:
        s = self.settings
        return cell_gene_tokens(adata, self.genes, top_k=s["top_k"], layer=s.get("layer"), use_raw=s.get("use_raw", False),
                                gene_key=s.get("gene_key"), normalize=s.get("normalize", "auto"))

    def _batch(self, ids: np.ndarray, values: np.ndarray):
        import torch

        mask = ids >= 0
        vectors = self.vectors[np.maximum(ids, 0)] * mask[..., None]
        device = self.device
        return (torch.from_numpy(vectors).to(device), torch.from_numpy(values).to(device),
                torch.from_numpy(mask.astype(np.float32)).to(device))

    def _run(self, adata, *, batch_size: int, what: str) -> np.ndarray:
        import torch

        ids, values = self._tokens(adata)
        self.module.eval()
        out = []
        with torch.inference_mode():
            for start in range(0, len(ids), batch_size):
                batch = self._batch(ids[start:start + batch_size], values[start:start + batch_size])
                pooled = self.module.embed(*batch)
                out.append((pooled if what == "embed" else torch.softmax(self.module.head(pooled), dim=-1)).cpu().numpy())
        width = self.module.head.in_features if what == "embed" else len(self.classes)
        return np.concatenate(out).astype(np.float32) if out else np.zeros((0, width), np.float32)

    # ---------------------------------------------------------------- public
    def predict_proba(self, adata, *, batch_size: int = 64) -> np.ndarray:
        """Class probabilities (cells x classes, columns in the order of :attr:`classes`)."""
        return self._run(adata, batch_size=batch_size, what="proba")

    def predict(self, adata, *, key_added: str = "c2t_projector", batch_size: int = 64, copy: bool = False):
        """Predict each cell's label.

        Returns
        -------
        None or anndata.AnnData
            Writes ``adata.obs[key_added]`` (categorical label), ``adata.obs[f"{key_added}_confidence"]`` (its
            probability), ``adata.obsm[f"{key_added}_proba"]`` (cells x classes) and
            ``adata.uns["c2t_projector"][key_added]`` (the classes, in column order, and the model's settings).
        """
        adata = adata.copy() if copy else adata
        proba = self.predict_proba(adata, batch_size=batch_size)
        best = proba.argmax(axis=1)
        adata.obs[key_added] = pd.Categorical(np.asarray(self.classes, dtype=object)[best], categories=self.classes)
        adata.obs[f"{key_added}_confidence"] = proba[np.arange(len(best)), best]
        adata.obsm[f"{key_added}_proba"] = proba
        adata.uns.setdefault("c2t_projector", {})[key_added] = {"classes": list(self.classes), **self._record()}
        return adata if copy else None

    def embed(self, adata, *, key_added: str = "X_c2t_projector", batch_size: int = 64, copy: bool = False):
        """The pooled LLM hidden state each cell's head reads (cells x LLM width).

        Returns
        -------
        None or anndata.AnnData
            Writes ``adata.obsm[key_added]`` (float32) and ``adata.uns["c2t_projector"][key_added]``.
        """
        adata = adata.copy() if copy else adata
        adata.obsm[key_added] = self._run(adata, batch_size=batch_size, what="embed")
        adata.uns.setdefault("c2t_projector", {})[key_added] = self._record()
        return adata if copy else None

    def _record(self) -> dict[str, Any]:
        s = self.settings
        return {"method": "projector", "base_model": str(s["base_model"]), "top_k": s["top_k"], "pooling": s["pooling"],
                "scale_by_expression": s["scale_by_expression"], "gene_embeddings": s.get("gene_encoder") or ""}

    def save(self, path: str | os.PathLike) -> Path:
        """Write the trained weights (projector, read-out token, head), gene vectors, classes, loss log and
        ``manifest.json`` into a folder, atomically (the frozen LLM is referenced by path, not copied)."""
        from safetensors.torch import save_file

        path = Path(path)
        with staged_dir(path) as staging:
            trained = {k: v.detach().cpu().contiguous() for k, v in self.module.state_dict().items()
                       if not k.startswith("llm.")}
            with atomic_path(staging / WEIGHTS_FILE) as tmp:
                save_file(trained, str(tmp))
            with atomic_path(staging / VECTORS_FILE) as tmp, open(tmp, "wb") as f:
                np.save(f, self.vectors)
            write_text_atomic(staging / GENES_FILE, "".join(f"{g}\n" for g in self.genes))
            write_text_atomic(staging / CLASSES_FILE, "".join(f"{c}\n" for c in self.classes))
            write_text_atomic(staging / LOSS_CSV, _history_csv(self.history))
            n_trained = sum(v.numel() for v in trained.values())
            write_manifest(staging, {
                **{k: v for k, v in self.manifest.items() if k not in ("c2t_version", "kind")},
                "kind": KIND, "settings": _jsonable(self.settings), "classes": self.classes,
                "n_genes": len(self.genes), "gene_dim": int(self.vectors.shape[1]),
                "vocabulary_hash": vocabulary_hash(self.genes), "llm_width": int(self.module.head.in_features),
                "parameters": {"trained": n_trained,
                               "frozen_llm": sum(p.numel() for p in self.module.llm.parameters())},
                "files": {"weights": WEIGHTS_FILE, "genes": GENES_FILE, "vectors": VECTORS_FILE,
                          "classes": CLASSES_FILE, "loss_csv": LOSS_CSV},
            })
        return path


def _jsonable(settings: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(settings, default=str))


def _history_csv(history: Sequence[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["step", "epoch", "loss"], extrasaction="ignore")
    writer.writeheader()
    writer.writerows(history)
    return buf.getvalue()


def _labels(adata, label_key: str) -> tuple[np.ndarray, list[str]]:
    if label_key not in adata.obs.columns:
        msg = f"{label_key!r} not found in adata.obs; columns are: {', '.join(map(str, adata.obs.columns)) or '(none)'}"
        raise C2TInputError(msg)
    column = adata.obs[label_key]
    known = column.notna().to_numpy()
    values = column.astype(object).where(known, None).to_numpy()
    classes = sorted({str(v) for v in values[known]})
    if len(classes) < 2:
        msg = f"adata.obs[{label_key!r}] has {len(classes)} label(s) on its labelled cells; a classifier needs at least 2"
        raise C2TInputError(msg)
    index = {c: i for i, c in enumerate(classes)}
    return np.array([index[str(v)] if k else -1 for v, k in zip(values, known, strict=True)], dtype=np.int64), classes


def fit_projector(
    adata,
    gene_embeddings,
    *,
    label_key: str,
    base_model: str | os.PathLike,
    top_k: int = 32,
    scale_by_expression: bool = False,
    pooling: Literal["mean", "last"] = "mean",
    hidden_dim: int = 256,
    dropout: float = 0.1,
    llm_layers: int | None = None,
    epochs: int = 3,
    batch_size: int = 32,
    learning_rate: float = 1e-3,
    weight_decay: float = 0.01,
    seed: int = 0,
    dtype: Literal["float32", "bfloat16", "float16"] = "float32",
    device: str = "auto",
    layer: str | None = None,
    use_raw: bool = False,
    gene_key: str | None = None,
    normalize: Literal["auto", "counts", "log1p"] = "auto",
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> ProjectorClassifier:
    """Train a projector (gene embeddings -> a frozen LLM's input embeddings) and a linear head on cell labels.

    Parameters
    ----------
    adata
        Cells x genes (counts or log1p-normalised); cells whose label is missing are left out.
    gene_embeddings
        :class:`c2t.genes.GeneEmbeddings` (genes without text are never tokens).
    label_key
        ``adata.obs`` column with the labels (e.g. cell types).
    base_model
        A local transformers decoder folder (LLaMA family such as SmolLM2, GPT-2); loaded as a base model
        (no output layer) and frozen.
    top_k
        Genes per cell (soft tokens, highest expression first).
    scale_by_expression
        Scale each projected gene token by its expression relative to the cell's top gene.
    pooling
        ``"mean"`` over the cell's tokens (genes and read-out token) or ``"last"`` (the read-out token, which
        sees every gene through causal attention).
    hidden_dim, dropout
        The projector MLP: ``Linear(gene_dim, hidden_dim) -> GELU -> Dropout -> Linear(hidden_dim, llm_width)``.
    llm_layers
        Use only the first this many decoder layers of the LLM (cheaper; null: all).
    epochs, batch_size, learning_rate, weight_decay, seed
        AdamW on cross-entropy, shuffled cells, seeded initialisation and order.
    dtype, device
        The LLM's weights dtype; ``"auto"`` is CUDA when available, else CPU.
    layer, use_raw, gene_key, normalize
        Which matrix and gene names (as in :func:`c2t.sentences.from_adata`).
    progress
        Called after every step with ``{"step", "epoch", "loss"}``.

    Returns
    -------
    ProjectorClassifier
        ``history`` holds the loss of every step.
    """
    import torch

    from c2t.genes import GeneEmbeddings

    if not isinstance(gene_embeddings, GeneEmbeddings):
        msg = f"gene_embeddings must be a c2t.genes.GeneEmbeddings, not {type(gene_embeddings).__name__}"
        raise C2TInputError(msg)
    for name, value in (("epochs", epochs), ("batch_size", batch_size), ("hidden_dim", hidden_dim)):
        if value <= 0:
            msg = f"{name} must be positive, not {value!r}"
            raise C2TInputError(msg)
    if pooling not in POOLINGS:
        msg = f"pooling must be one of {', '.join(POOLINGS)}, not {pooling!r}"
        raise C2TInputError(msg)
    y, classes = _labels(adata, label_key)
    keep = gene_embeddings.has_text
    genes, vectors = gene_embeddings.genes[keep], gene_embeddings.vectors[keep]
    settings = {"base_model": str(Path(base_model).resolve()), "top_k": top_k, "scale_by_expression": scale_by_expression,
                "pooling": pooling, "hidden_dim": hidden_dim, "dropout": dropout, "llm_layers": llm_layers,
                "epochs": epochs, "batch_size": batch_size, "learning_rate": learning_rate, "weight_decay": weight_decay,
                "seed": seed, "dtype": dtype, "label_key": label_key, "layer": layer, "use_raw": use_raw,
                "gene_key": gene_key, "normalize": normalize, "gene_encoder": gene_embeddings.manifest.get("encoder")}
    llm = _load_llm(base_model, llm_layers=llm_layers, dtype=dtype)
    torch.manual_seed(seed)  # after loading: the trained parameters' initialisation depends on the seed alone
    module = soft_token_classifier(llm, vectors.shape[1], len(classes), hidden_dim=hidden_dim, pooling=pooling,
                                   scale_by_expression=scale_by_expression, dropout=dropout)
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device))
    module.to(dev)
    clf = ProjectorClassifier(module, genes=genes, vectors=vectors, classes=classes, settings=settings,
                              manifest={"gene_embeddings": {k: gene_embeddings.manifest.get(k) for k in
                                                            ("encoder", "descriptions", "coverage")},
                                        "llm": {"model_type": llm.config.model_type,
                                                "fingerprint": base_fingerprint(base_model),
                                                "layers_used": getattr(llm.config, "num_hidden_layers", None)}})
    ids, values = clf._tokens(adata)
    labelled = np.flatnonzero(y >= 0)
    trainable = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=learning_rate, weight_decay=weight_decay)
    rng = np.random.default_rng(seed)
    start_time = time.perf_counter()
    step = 0
    module.train()
    for epoch in range(epochs):
        order = rng.permutation(labelled)
        for start in range(0, len(order), batch_size):
            rows = np.sort(order[start:start + batch_size])
            logits = module(*clf._batch(ids[rows], values[rows]))
            loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(y[rows]).to(dev))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            entry = {"step": step, "epoch": round(epoch + min(1.0, (start + batch_size) / len(order)), 4),
                     "loss": float(loss.detach())}
            clf.history.append(entry)
            if progress is not None:
                progress(entry)
    module.eval()
    clf.manifest["training"] = {"steps": step, "cells": len(labelled), "seconds": round(time.perf_counter() - start_time, 1),
                                "first_loss": clf.history[0]["loss"] if clf.history else None,
                                "last_loss": clf.history[-1]["loss"] if clf.history else None,
                                "label_counts": {c: int((y == i).sum()) for i, c in enumerate(classes)}}
    return clf


def load_projector(path: str | os.PathLike, *, base_model: str | os.PathLike | None = None,
                   device: str = "auto") -> ProjectorClassifier:
    """Load a folder written by :meth:`ProjectorClassifier.save` (the frozen LLM from its recorded path, or
    ``base_model``), checking it against its manifest."""
    import torch
    from safetensors.torch import load_file

    path = Path(path)
    manifest = read_manifest(path, kind=KIND)
    settings = dict(manifest["settings"])
    if base_model is not None:
        settings["base_model"] = str(Path(base_model).resolve())
    genes = np.array([g for g in (path / GENES_FILE).read_text(encoding="utf-8").splitlines() if g], dtype=object)
    classes = [c for c in (path / CLASSES_FILE).read_text(encoding="utf-8").splitlines() if c]
    vectors = np.load(path / VECTORS_FILE)
    if (vocabulary_hash(genes) != manifest["vocabulary_hash"] or vectors.shape != (len(genes), manifest["gene_dim"])
            or classes != manifest["classes"]):
        msg = f"{path}: {GENES_FILE}, {VECTORS_FILE} or {CLASSES_FILE} do not match the manifest (the folder was modified)"
        raise C2TInputError(msg)
    llm = _load_llm(settings["base_model"], llm_layers=settings.get("llm_layers"), dtype=settings.get("dtype", "float32"))
    expected = (manifest.get("llm") or {}).get("fingerprint")
    if expected is not None and base_fingerprint(settings["base_model"]) != expected:
        msg = (f"base_model {settings['base_model']}: not the LLM {path} was trained with (its config.json or weights "
               f"differ; fingerprint expected {expected}, found {base_fingerprint(settings['base_model'])})")
        raise C2TInputError(msg)
    width = int(llm.get_input_embeddings().embedding_dim)
    if width != manifest["llm_width"]:
        msg = (f"base_model {settings['base_model']}: input embeddings of width {width}, but {path} was trained for "
               f"width {manifest['llm_width']} (another LLM)")
        raise C2TInputError(msg)
    module = soft_token_classifier(llm, vectors.shape[1], len(classes), hidden_dim=settings["hidden_dim"],
                                   pooling=settings["pooling"], scale_by_expression=settings["scale_by_expression"],
                                   dropout=settings.get("dropout", 0.1))
    state = load_file(str(path / WEIGHTS_FILE))
    missing, unexpected = module.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("llm.")]
    if missing or unexpected:
        msg = f"{path}: {WEIGHTS_FILE} does not fit the model (missing {missing}, unexpected {unexpected})"
        raise C2TInputError(msg)
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device))
    module.to(dev).eval()
    history = []
    if (path / LOSS_CSV).is_file():
        with open(path / LOSS_CSV, encoding="utf-8") as f:
            history = [{"step": int(r["step"]), "epoch": float(r["epoch"]), "loss": float(r["loss"])} for r in csv.DictReader(f)]
    return ProjectorClassifier(module, genes=genes, vectors=vectors, classes=classes, settings=settings, history=history,
                               manifest=manifest)

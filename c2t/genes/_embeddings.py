"""Gene embeddings: one vector per gene of a vocabulary, from its text, saved with a manifest."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from c2t._atomic import atomic_path, staged_dir, write_text_atomic
from c2t._errors import C2TInputError
from c2t._manifest import read_manifest, vocabulary_hash, write_manifest
from c2t.genes._encoders import TextEncoder, encode_cached

__all__ = ["GeneEmbeddings", "embed_genes"]

KIND = "gene_embeddings"


@dataclass
class GeneEmbeddings:
    """Vectors for a list of genes; genes without text have a zero vector and ``has_text`` False.

    Examples
    --------
    >>> ge = GeneEmbeddings(np.array(["A", "B"]), np.eye(2, dtype=np.float32), np.array([True, False]))
    >>> ge.aligned(["B", "C", "A"]).tolist()
    [[0.0, 0.0], [0.0, 0.0], [1.0, 0.0]]
    >>> ge.random_control(seed=0).vectors.shape
    (2, 2)
    """

    genes: np.ndarray
    vectors: np.ndarray
    has_text: np.ndarray
    manifest: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.genes = np.asarray(self.genes, dtype=object)
        self.vectors = np.array(self.vectors, dtype=np.float32)  # a copy: rows without text are zeroed below
        self.has_text = np.array(self.has_text, dtype=bool)
        assert self.vectors.shape[0] == len(self.genes) == len(self.has_text)
        self.vectors[~self.has_text] = 0.0

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def __repr__(self) -> str:
        return f"GeneEmbeddings({len(self.genes)} genes, {int(self.has_text.sum())} with text, dim {self.dim})"

    def aligned(self, genes: Sequence[str], *, min_overlap: int = 1) -> np.ndarray:
        """Rows for ``genes`` in that order; genes not embedded (or without text) get zeros.

        Raises a :class:`C2TInputError` when fewer than ``min_overlap`` of ``genes`` have a vector: the
        embeddings were made for another gene vocabulary.
        """
        index = pd.Index(self.genes).get_indexer(pd.Index([str(g) for g in genes]))
        usable = (index >= 0) & self.has_text[np.maximum(index, 0)]
        if usable.sum() < min_overlap:
            msg = (
                f"only {int(usable.sum())} of {len(genes)} genes have an embedding (need {min_overlap}); "
                f"these gene embeddings cover another vocabulary (e.g. {', '.join(map(str, self.genes[:3]))})"
            )
            raise C2TInputError(msg)
        out = np.zeros((len(genes), self.dim), dtype=np.float32)
        out[usable] = self.vectors[index[usable]]
        return out

    def random_control(self, *, seed: int = 0) -> GeneEmbeddings:
        """Same shape and text mask, Gaussian vectors: the floor every text embedding must beat."""
        rng = np.random.default_rng(seed)
        scale = float(np.linalg.norm(self.vectors[self.has_text], axis=1).mean()) if self.has_text.any() else 1.0
        vectors = rng.standard_normal(self.vectors.shape).astype(np.float32) * scale / np.sqrt(max(self.dim, 1))
        manifest = {**self.manifest, "encoder": f"random-control(seed={seed})", "control_of": self.manifest.get("encoder")}
        return GeneEmbeddings(self.genes.copy(), vectors, self.has_text.copy(), manifest)

    def save(self, path: str | os.PathLike) -> Path:
        """Save ``vectors.npy``, ``genes.tsv`` (gene, has_text) and ``manifest.json`` into a folder, atomically."""
        path = Path(path)
        with staged_dir(path) as staging:
            with atomic_path(staging / "vectors.npy") as tmp, open(tmp, "wb") as f:
                np.save(f, self.vectors)
            table = pd.DataFrame({"gene": self.genes.astype(str), "has_text": self.has_text})
            write_text_atomic(staging / "genes.tsv", table.to_csv(sep="\t", index=False))
            write_manifest(staging, {**self.manifest, "kind": KIND, "n_genes": len(self.genes), "dim": self.dim,
                                     "vocabulary_hash": vocabulary_hash(self.genes)})
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> GeneEmbeddings:
        """Load a folder written by :meth:`save`, checking it against its manifest."""
        path = Path(path)
        manifest = read_manifest(path, kind=KIND)
        table = pd.read_csv(path / "genes.tsv", sep="\t", dtype={"gene": str}, keep_default_na=False)
        vectors = np.load(path / "vectors.npy")
        if vocabulary_hash(table["gene"]) != manifest["vocabulary_hash"] or vectors.shape[0] != len(table):
            msg = f"{path}: genes.tsv or vectors.npy do not match the manifest (the folder was modified)"
            raise C2TInputError(msg)
        return cls(table["gene"].to_numpy(dtype=object), vectors, table["has_text"].to_numpy(dtype=bool), manifest)


def embed_genes(
    matched: pd.DataFrame,
    encoder: TextEncoder,
    *,
    cache_dir: str | os.PathLike | None = None,
    progress=None,
) -> GeneEmbeddings:
    """Embed the text of each gene of ``matched`` (the output of :meth:`GeneDescriptions.match`).

    Genes with empty text get a zero vector and ``has_text=False`` (GenePT: they contribute nothing).

    Returns
    -------
    GeneEmbeddings
        ``manifest`` records the encoder id, the description source and the coverage.
    """
    if not {"gene", "text"} <= set(matched.columns):
        msg = "matched must have columns 'gene' and 'text' (see GeneDescriptions.match)"
        raise C2TInputError(msg)
    has_text = (matched["text"].fillna("") != "").to_numpy()
    if not has_text.any():
        msg = f"none of the {len(matched)} genes has a description; nothing to embed"
        raise C2TInputError(msg)
    texts = matched["text"][has_text].tolist()
    vectors_with_text = encode_cached(encoder, texts, cache_dir=cache_dir, progress=progress)
    vectors = np.zeros((len(matched), vectors_with_text.shape[1]), dtype=np.float32)
    vectors[has_text] = vectors_with_text
    manifest = {
        "encoder": encoder.id,
        "descriptions": matched.attrs.get("source"),
        "coverage": matched.attrs.get("coverage"),
    }
    return GeneEmbeddings(matched["gene"].to_numpy(dtype=object), vectors, has_text, manifest)

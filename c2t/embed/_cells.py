"""Cell embeddings written to ``adata.obsm``: GenePT-w, GenePT-s, CELLama, PCA and a random control.

Every function takes the AnnData first and the rest keyword-only, writes ``adata.obsm[key_added]`` and a
record in ``adata.uns["c2t_embed"][key_added]``, and returns ``None`` (or the AnnData with ``copy=True``).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from c2t._errors import C2TInputError
from c2t.genes._embeddings import GeneEmbeddings
from c2t.genes._encoders import TextEncoder, encode_cached

__all__ = ["cellama", "cellama_texts", "genept_s", "genept_w", "pca", "random_cells"]


def _record(adata, key: str, info: dict[str, Any]) -> None:
    adata.uns.setdefault("c2t_embed", {})[key] = info


def genept_w(
    adata,
    gene_embeddings: GeneEmbeddings,
    *,
    layer: str | None = None,
    use_raw: bool = False,
    gene_key: str | None = None,
    normalize: Literal["auto", "counts", "log1p"] = "auto",
    average: bool = True,
    l2: bool = True,
    key_added: str = "X_genept_w",
    chunk_size: int = 20_000,
    copy: bool = False,
):
    """GenePT-w: each cell is the expression-weighted combination of its genes' text embeddings.

    Counts are normalised to log1p(CP10k) first (detected as in :func:`c2t.sentences.from_adata`). The product
    is one sparse x dense multiplication per chunk of cells; a cell's embedding depends on that cell alone.

    Parameters
    ----------
    adata
        Cells x genes.
    gene_embeddings
        Vectors for the genes (genes without text contribute 0).
    layer, use_raw, gene_key, normalize
        Which matrix, which gene names, and whether it holds counts (as in :func:`c2t.sentences.from_adata`).
    average
        Divide by the sum of the weights of the cell's genes that have text (a weighted mean).
    l2
        Scale each cell vector to unit length.
    key_added
        ``adata.obsm`` key.
    copy
        Return a modified copy instead of writing into ``adata``.

    Returns
    -------
    None or anndata.AnnData
        Writes ``adata.obsm[key_added]`` (cells x dim, float32) and ``adata.uns["c2t_embed"][key_added]``.

    Examples
    --------
    >>> import anndata as ad, numpy as np
    >>> adata = ad.AnnData(np.array([[1.0, 0.0], [0.0, 3.0]], dtype=np.float32))
    >>> adata.var_names = ["CD3D", "LYZ"]
    >>> ge = GeneEmbeddings(np.array(["CD3D", "LYZ"]), np.eye(2, dtype=np.float32), np.array([True, True]))
    >>> genept_w(adata, ge)
    >>> adata.obsm["X_genept_w"].tolist()
    [[1.0, 0.0], [0.0, 1.0]]
    """
    from c2t.embed._kernels import weighted_sum
    from c2t.io import detect_input_kind, normalize_log1p, open_source, resolve_genes

    adata = adata.copy() if copy else adata
    with open_source(adata, layer=layer, use_raw=use_raw) as source:
        plan = resolve_genes(source.var, gene_key=gene_key, on_duplicate="first")
        vectors = gene_embeddings.aligned(plan.vocabulary)
        # one row per matrix column (zeros for dropped columns and genes without text)
        by_column = np.zeros((len(plan.column_to_gene), gene_embeddings.dim), dtype=np.float32)
        kept = plan.column_to_gene >= 0
        by_column[kept] = vectors[plan.column_to_gene[kept]]
        column_has_text = (np.abs(by_column).sum(axis=1) > 0).astype(np.float32)
        head = source.rows(0, min(source.n_obs, 2000))
        kind = detect_input_kind(head) if normalize == "auto" else normalize
        out = np.empty((source.n_obs, gene_embeddings.dim), dtype=np.float32)
        for start in range(0, source.n_obs, chunk_size):
            stop = min(source.n_obs, start + chunk_size)
            block = source.rows(start, stop)
            if kind == "counts":
                block = normalize_log1p(block)
            weighted_sum(block, by_column, out=out[start:stop], column_has_text=column_has_text, average=average,
                         l2=l2)
    adata.obsm[key_added] = out
    _record(adata, key_added, {"method": "genept-w", "gene_embeddings": gene_embeddings.manifest.get("encoder"),
                               "input": kind, "average": average, "l2": l2,
                               "genes_with_text": int(column_has_text.sum())})
    return adata if copy else None


def _top_genes(adata, *, top_k: int | None, layer, use_raw, gene_key, chunk_size: int = 10_000) -> list[list[str]]:
    """Each cell's ``top_k`` expressed genes, highest value first.

    Ties go to the gene that comes first in the data's gene order, so a cell's sentence (and so its embedding)
    depends on that cell alone, not on its row in the AnnData. (Cell sentences break ties by a permutation
    seeded with the row number, which changes when the same cell sits in another AnnData.) Ranks of counts
    and of log1p(CP10k) values are the same within a cell, so no normalisation is needed.
    """
    from c2t.io import open_source, resolve_genes

    with open_source(adata, layer=layer, use_raw=use_raw) as source:
        plan = resolve_genes(source.var, gene_key=gene_key, on_duplicate="first")
        names = plan.vocabulary.astype(str)
        out: list[list[str]] = []
        for start in range(0, source.n_obs, chunk_size):
            block = source.rows(start, min(source.n_obs, start + chunk_size))
            rows = np.repeat(np.arange(block.shape[0]), np.diff(block.indptr))
            bad = ~(np.isfinite(block.data) & (block.data >= 0))
            if bad.any():
                row = int(rows[np.argmax(bad)])
                cell = source.obs_names(start + row, start + row + 1)[0]
                msg = f"{source.name} ({source.matrix}): cell {cell!r} has a negative, NaN or infinite value"
                raise C2TInputError(msg)
            genes = plan.column_to_gene[block.indices]
            keep = (block.data > 0) & (genes >= 0)
            rows, genes, values = rows[keep], genes[keep], block.data[keep]
            order = np.lexsort((genes, -values, rows))
            rows, genes = rows[order], genes[order]
            bounds = np.searchsorted(rows, np.arange(block.shape[0] + 1))
            for lo, hi in itertools.pairwise(bounds):
                out.append(names[genes[lo : hi if top_k is None else min(hi, lo + top_k)]].tolist())
    return out


def genept_s(
    adata,
    encoder: TextEncoder,
    *,
    top_k: int = 100,
    template: str = "A cell with genes ranked by expression: {genes}",
    layer: str | None = None,
    use_raw: bool = False,
    gene_key: str | None = None,
    cache_dir=None,
    key_added: str = "X_genept_s",
    copy: bool = False,
):
    """GenePT-s: embed each cell's sentence (its top ``top_k`` genes by expression) with a text encoder.

    Tied genes are ordered by the data's gene order, so a cell's embedding does not depend on the other cells.

    Returns
    -------
    None or anndata.AnnData
        Writes ``adata.obsm[key_added]`` and ``adata.uns["c2t_embed"][key_added]``.
    """
    if "{genes}" not in template:
        msg = "the GenePT-s template must contain {genes}"
        raise C2TInputError(msg)
    adata = adata.copy() if copy else adata
    ranked = _top_genes(adata, top_k=top_k, layer=layer, use_raw=use_raw, gene_key=gene_key)
    texts = [template.format(genes=" ".join(genes)) for genes in ranked]
    adata.obsm[key_added] = encode_cached(encoder, texts, cache_dir=cache_dir)
    _record(adata, key_added, {"method": "genept-s", "encoder": encoder.id, "top_k": top_k, "template": template})
    return adata if copy else None


def _join_names(names: Sequence[str]) -> str:
    if len(names) <= 1:
        return "".join(names)
    return ", ".join(names[:-1]) + " and " + names[-1]


def cellama_texts(
    adata,
    *,
    top_k: int = 32,
    metadata_keys: Sequence[str] = (),
    neighbor_key: str | None = None,
    n_neighbors: int = 6,
    spatial_key: str = "spatial",
    layer: str | None = None,
    use_raw: bool = False,
    gene_key: str | None = None,
) -> list[str]:
    """CELLama sentences: ``"Top genes are G1, G2, ... and Gk."``, then one sentence per metadata column,
    then (with ``neighbor_key`` and coordinates in ``obsm[spatial_key]``) the labels of the nearest cells.

    Examples
    --------
    >>> import anndata as ad, numpy as np, pandas as pd
    >>> adata = ad.AnnData(np.array([[3, 1, 0], [0, 2, 5]], dtype=np.float32),
    ...                    obs=pd.DataFrame({"tissue": ["blood", "lung"]}, index=["a", "b"]))
    >>> adata.var_names = ["CD3D", "LYZ", "SFTPC"]
    >>> cellama_texts(adata, top_k=2, metadata_keys=["tissue"])
    ['Top genes are CD3D and LYZ. The tissue is blood.', 'Top genes are SFTPC and LYZ. The tissue is lung.']
    """
    missing = [k for k in [*metadata_keys, *([neighbor_key] if neighbor_key else [])] if k not in adata.obs]
    if missing:
        msg = f"{missing[0]!r} not found in adata.obs; columns are: {', '.join(adata.obs.columns)}"
        raise C2TInputError(msg)
    ranked = _top_genes(adata, top_k=top_k, layer=layer, use_raw=use_raw, gene_key=gene_key)
    texts = []
    neighbor_text = None
    if neighbor_key:
        if spatial_key not in adata.obsm:
            msg = f"neighbour labels need coordinates in adata.obsm[{spatial_key!r}]; obsm keys are: {', '.join(adata.obsm)}"
            raise C2TInputError(msg)
        from sklearn.neighbors import NearestNeighbors

        coords = np.asarray(adata.obsm[spatial_key])[:, :2]
        labels = adata.obs[neighbor_key].astype(str).to_numpy()
        k = min(n_neighbors, adata.n_obs - 1)
        neighbor_text = [""] * adata.n_obs
        if k > 0:
            # kneighbors() without X leaves each cell itself out by index (a cell at the same spot is a neighbour)
            _, idx = NearestNeighbors(n_neighbors=k).fit(coords).kneighbors()
            neighbor_text = [f" Nearby cells are {_join_names(list(labels[row]))}." for row in idx]
    meta = {k: adata.obs[k].astype(str).to_numpy() for k in metadata_keys}
    for i, genes in enumerate(ranked):
        text = f"Top genes are {_join_names(genes)}." if genes else "No genes are expressed."
        for key, values in meta.items():
            text += f" The {key.replace('_', ' ')} is {values[i]}."
        if neighbor_text is not None:
            text += neighbor_text[i]
        texts.append(text)
    return texts


def cellama(
    adata,
    encoder: TextEncoder,
    *,
    top_k: int = 32,
    metadata_keys: Sequence[str] = (),
    neighbor_key: str | None = None,
    n_neighbors: int = 6,
    spatial_key: str = "spatial",
    cache_dir=None,
    key_added: str = "X_cellama",
    copy: bool = False,
    **sentence_options,
):
    """CELLama: embed :func:`cellama_texts` sentences (optionally with a model fine-tuned by :func:`finetune_cellama`).

    Returns
    -------
    None or anndata.AnnData
        Writes ``adata.obsm[key_added]`` and ``adata.uns["c2t_embed"][key_added]``.
    """
    adata = adata.copy() if copy else adata
    texts = cellama_texts(adata, top_k=top_k, metadata_keys=metadata_keys, neighbor_key=neighbor_key,
                          n_neighbors=n_neighbors, spatial_key=spatial_key, **sentence_options)
    adata.obsm[key_added] = encode_cached(encoder, texts, cache_dir=cache_dir)
    _record(adata, key_added, {"method": "cellama", "encoder": encoder.id, "top_k": top_k,
                               "metadata_keys": list(metadata_keys), "neighbor_key": neighbor_key})
    return adata if copy else None


def pca(
    adata,
    *,
    n_comps: int = 50,
    n_top_genes: int = 2000,
    layer: str | None = None,
    normalize: Literal["auto", "counts", "log1p"] = "auto",
    seed: int = 0,
    key_added: str = "X_pca_log",
    copy: bool = False,
):
    """The classical baseline: PCA of log1p(CP10k) expression on highly variable genes (scanpy).

    Returns
    -------
    None or anndata.AnnData
        Writes ``adata.obsm[key_added]`` and ``adata.uns["c2t_embed"][key_added]``.
    """
    import anndata as ad
    import scanpy as sc
    import scipy.sparse as sp

    from c2t.io import detect_input_kind, normalize_log1p

    adata = adata.copy() if copy else adata
    X = sp.csr_matrix(adata.layers[layer] if layer else adata.X, dtype=np.float32)
    kind = detect_input_kind(X) if normalize == "auto" else normalize
    work = ad.AnnData(normalize_log1p(X) if kind == "counts" else X)
    n_top = min(n_top_genes, work.n_vars)
    if n_top < work.n_vars:
        sc.pp.highly_variable_genes(work, n_top_genes=n_top, subset=True)
    n = min(n_comps, work.n_obs - 1, work.n_vars - 1)
    sc.pp.pca(work, n_comps=n, random_state=seed)
    adata.obsm[key_added] = work.obsm["X_pca"].astype(np.float32)
    _record(adata, key_added, {"method": "pca", "n_comps": n, "n_top_genes": n_top, "input": kind})
    return adata if copy else None


def random_cells(adata, *, dim: int = 384, seed: int = 0, key_added: str = "X_random", copy: bool = False):
    """The random control: a Gaussian vector per cell, independent of its expression (scores at chance).

    Returns
    -------
    None or anndata.AnnData
        Writes ``adata.obsm[key_added]`` and ``adata.uns["c2t_embed"][key_added]``.
    """
    adata = adata.copy() if copy else adata
    adata.obsm[key_added] = np.random.default_rng(seed).standard_normal((adata.n_obs, dim)).astype(np.float32)
    _record(adata, key_added, {"method": "random", "dim": dim, "seed": seed})
    return adata if copy else None

"""The one interface every cell encoder shares, so that a benchmark can loop over methods.

A *cell encoder* is anything with a ``name`` and an ``embed(adata) -> np.ndarray`` method that returns one
row per cell (``adata.n_obs x dim``, float32, row ``i`` is cell ``i``). The PLM encoders of this package are
cell encoders; so can be the LLM hidden-state and text-level embeddings (GenePT, CELLama) elsewhere in c2t,
and PCA: the benchmark only needs this protocol.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from c2t._errors import C2TInputError


@runtime_checkable
class CellEncoder(Protocol):
    """What a cell encoder provides.

    Attributes
    ----------
    name
        A short label for tables and ``obsm`` keys (e.g. ``"geneformer"``).

    Examples
    --------
    >>> import numpy as np
    >>> class TotalCounts:
    ...     name = "total_counts"
    ...     def embed(self, adata):
    ...         return np.asarray(adata.X.sum(axis=1), dtype=np.float32).reshape(-1, 1)
    >>> isinstance(TotalCounts(), CellEncoder)
    True
    """

    name: str

    def embed(self, adata) -> np.ndarray:
        """Return a ``(adata.n_obs, dim)`` float32 array: one embedding per cell, in the order of ``adata``."""
        ...


def embed(adata, encoder: CellEncoder, *, key_added: str | None = None, copy: bool = False):
    """Embed the cells of ``adata`` with ``encoder`` and store the result in ``adata.obsm``.

    Parameters
    ----------
    adata
        The cells (an in-memory AnnData).
    encoder
        Any :class:`CellEncoder`.
    key_added
        The ``obsm`` key (default ``"X_<encoder.name>"``).
    copy
        Work on (and return) a copy of ``adata``.

    Returns
    -------
    ``None``, or the copy when ``copy=True``. Writes ``adata.obsm[key_added]`` (cells x dim, float32).

    Examples
    --------
    >>> import anndata as ad, numpy as np
    >>> class Ones:
    ...     name = "ones"
    ...     def embed(self, adata):
    ...         return np.ones((adata.n_obs, 2), dtype=np.float32)
    >>> adata = ad.AnnData(np.zeros((3, 4), dtype=np.float32))
    >>> embed(adata, Ones())
    >>> adata.obsm["X_ones"].shape
    (3, 2)
    """
    if not isinstance(encoder, CellEncoder):
        msg = f"encoder must have a name and an embed(adata) method; got {type(encoder).__name__}"
        raise C2TInputError(msg)
    if copy:
        adata = adata.copy()
    out = np.asarray(encoder.embed(adata), dtype=np.float32)
    if out.ndim != 2 or out.shape[0] != adata.n_obs:
        msg = f"{encoder.name}: embed returned shape {out.shape}, expected ({adata.n_obs}, dim)"
        raise C2TInputError(msg)
    adata.obsm[key_added or f"X_{encoder.name}"] = out
    return adata if copy else None

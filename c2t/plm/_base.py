"""``CellTokenizer``: what every PLM tokeniser shares — reading cells in batches, matching genes, checking values.

A tokeniser subclass implements :meth:`CellTokenizer._encode` on one CSR block of cells whose columns are
already mapped to token ids (or positions); everything else (AnnData or ``.h5ad`` path, layers, gene names,
counts checks, batching, padding, torch conversion, saving) lives here.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp

from c2t._errors import C2TInputError
from c2t.plm._encoding import Encoding, concat
from c2t.plm._vocab import TokenVocab, match_genes

TOKENIZER_FILE = "c2t_tokenizer.json"
ARRAYS_FILE = "c2t_tokenizer_arrays.npz"
_DETECT_ROWS = 2_000


@dataclass
class Block:
    """One batch of cells as the tokeniser sees it."""

    start: int  # global index of the first cell
    matrix: sp.csr_matrix  # float32 values, columns of the data (duplicates summed when asked)
    col_map: np.ndarray  # per column: token id / position, or -1
    tie_map: np.ndarray  # per column: the gene's index in the tokeniser's gene list (ranking tie-break), or -1
    token_of_gene: np.ndarray  # gene index -> token id (inverse of tie_map's numbering)
    n_kept: np.ndarray  # per cell: positive values in mapped columns
    totals: np.ndarray  # per cell: sum over every column of the raw rows (sequencing depth for counts)
    cell_ids: np.ndarray
    obs: pd.DataFrame
    input_kind: str  # "counts" or "log1p"


class CellTokenizer:
    """Base class of the PLM tokenisers (see the subclasses for each published recipe).

    Calling a tokeniser on an AnnData (or an ``.h5ad`` path) returns one :class:`~c2t.plm.Encoding` for all
    cells; :meth:`batches` yields one per batch (bounded memory). A tokeniser without a vocabulary learns it
    (and any reference statistic of its recipe) from the data on first use, or explicitly with :meth:`fit`.
    """

    recipe: ClassVar[str] = ""
    needs_counts: ClassVar[bool] = False
    default_pooling: ClassVar[str] = "mean"
    positional: ClassVar[bool] = True  # whether the recipe's model adds position embeddings
    obs_keys: tuple[str, ...] = ()
    vocab: TokenVocab | None = None

    # ------------------------------------------------------------------------------------ subclass API
    def _encode(self, block: Block) -> Encoding:  # pragma: no cover - abstract
        raise NotImplementedError

    def _build_vocab(self, genes: np.ndarray, obs: pd.DataFrame) -> None:
        """Make the vocabulary from the data's gene names and the ``obs_keys`` columns of every cell."""
        raise NotImplementedError

    def _fit_stats(self, blocks: Iterator[Block]) -> None:
        """Learn reference statistics (medians, metadata values, ...) from the data; default: nothing."""

    def _gene_lookup(self) -> tuple[np.ndarray, np.ndarray]:
        """Gene names of the vocabulary and the value (token id or position) each maps to."""
        return self.vocab.gene_names, self.vocab.gene_ids

    def _params(self) -> dict[str, Any]:
        """JSON-able constructor parameters (saved with the tokeniser)."""
        return {}

    def _arrays(self) -> dict[str, np.ndarray]:
        """Large fitted arrays (saved beside the JSON)."""
        return {}

    def _set_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        """Restore what :meth:`_arrays` saved."""

    @property
    def is_fitted(self) -> bool:
        return self.vocab is not None

    @property
    def model_max_length(self) -> int | None:
        """The longest sequence this recipe produces (positions a model needs), when fixed."""
        return getattr(self, "max_length", None)

    # ------------------------------------------------------------------------------------ public API
    def fit(self, adata, *, layer: str | None = None, use_raw: bool = False, gene_key: str | None = None,
            on_duplicate: Literal["error", "first", "sum"] = "error", batch_size: int = 8192) -> CellTokenizer:
        """Learn the gene vocabulary (when none was given) and the recipe's reference statistics from ``adata``.

        Returns the tokeniser itself.
        """
        from c2t.io import open_source, resolve_genes

        with open_source(adata, layer=layer, use_raw=use_raw) as source:
            plan = resolve_genes(source.var, gene_key=gene_key, on_duplicate=on_duplicate)
            if self.vocab is None:
                keys = list(self.obs_keys)
                source.check_obs_keys(keys)
                obs = source.obs_columns(keys, 0, source.n_obs) if keys else pd.DataFrame(index=range(source.n_obs))
                self._build_vocab(np.asarray(plan.vocabulary, dtype=object), obs)
            self._fit_stats(self._blocks(source, plan, batch_size))
        return self

    def __call__(self, adata, *, layer: str | None = None, use_raw: bool = False, gene_key: str | None = None,
                 on_duplicate: Literal["error", "first", "sum"] = "error", batch_size: int = 8192,
                 return_tensors: Literal["np", "pt"] = "np") -> Encoding:
        """Tokenise every cell of ``adata`` (AnnData or ``.h5ad`` path) into one padded :class:`Encoding`.

        Parameters
        ----------
        adata
            Cells x genes; which matrix: ``X``, ``layers[layer]`` or ``raw.X``.
        gene_key
            ``var`` column with the gene names to match to the vocabulary (default ``var_names``).
        on_duplicate
            Duplicated gene names: ``"error"``, keep the ``"first"`` or ``"sum"`` them.
        batch_size
            Cells read and tokenised at a time.
        return_tensors
            ``"np"`` (numpy arrays) or ``"pt"`` (torch tensors).
        """
        parts = list(self.batches(adata, layer=layer, use_raw=use_raw, gene_key=gene_key,
                                  on_duplicate=on_duplicate, batch_size=batch_size))
        out = concat(parts)
        return out.to_torch() if return_tensors == "pt" else out

    def batches(self, adata, *, layer: str | None = None, use_raw: bool = False, gene_key: str | None = None,
                on_duplicate: Literal["error", "first", "sum"] = "error", batch_size: int = 1024,
                return_tensors: Literal["np", "pt"] = "np") -> Iterator[Encoding]:
        """Yield one :class:`Encoding` per ``batch_size`` cells (each padded to its own longest cell)."""
        from c2t.io import open_source, resolve_genes

        if return_tensors not in ("np", "pt"):
            msg = f"return_tensors must be 'np' or 'pt', not {return_tensors!r}"
            raise C2TInputError(msg)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer) or batch_size < 1:
            msg = f"batch_size must be a positive integer, not {batch_size!r}"
            raise C2TInputError(msg)
        if not self.is_fitted:
            self.fit(adata, layer=layer, use_raw=use_raw, gene_key=gene_key, on_duplicate=on_duplicate)
        with open_source(adata, layer=layer, use_raw=use_raw) as source:
            plan = resolve_genes(source.var, gene_key=gene_key, on_duplicate=on_duplicate)
            for block in self._blocks(source, plan, batch_size):
                enc = self._encode(block)
                enc.cell_ids = block.cell_ids
                enc.report = {**self._report, **enc.report}
                yield enc.to_torch() if return_tensors == "pt" else enc

    # ------------------------------------------------------------------------------------ reading
    def _blocks(self, source, plan, batch_size: int) -> Iterator[Block]:
        from c2t.io import detect_input_kind
        from c2t.plm._kernels import scan_block

        if source.n_obs == 0:
            msg = f"{source.name} ({source.matrix}): the matrix has no cells (0 rows)"
            raise C2TInputError(msg)
        keys = list(self.obs_keys)
        source.check_obs_keys(keys)
        names, values = self._gene_lookup()
        value_of_gene, report = match_genes(np.asarray(plan.vocabulary, dtype=object), names, values,
                                            what=f"the {self.recipe} vocabulary")
        index_of_gene, _ = match_genes(np.asarray(plan.vocabulary, dtype=object), names, np.arange(len(names)))
        token_of_gene = np.asarray(values, dtype=np.int32)
        report["gene_names_from"] = plan.report.get("source")
        self._report = {"recipe": self.recipe, "genes": report}
        head = source.rows(0, min(source.n_obs, _DETECT_ROWS))
        input_kind = detect_input_kind(head) if head.nnz else "counts"
        for start in range(0, source.n_obs, batch_size):
            stop = min(source.n_obs, start + batch_size)
            raw = source.rows(start, stop)  # a view for in-memory CSR
            block, column_to_gene = plan.apply(raw)
            known = column_to_gene >= 0
            col_map = np.where(known, value_of_gene[np.maximum(column_to_gene, 0)], -1).astype(np.int32)
            tie_map = np.where(known, index_of_gene[np.maximum(column_to_gene, 0)], -1).astype(np.int32)
            data = block.data if block.data.dtype == np.float32 else block.data.astype(np.float32)
            n_kept, totals, n_bad, n_non_integer = scan_block(block.indptr, block.indices, data, col_map)
            if n_bad:
                msg = (
                    f"{source.name} ({source.matrix}): cells {start}-{stop} hold negative, NaN or infinite values; "
                    "the PLM recipes need non-negative expression"
                )
                raise C2TInputError(msg)
            if self.needs_counts and (n_non_integer or input_kind != "counts"):
                msg = (
                    f"the {self.recipe} recipe needs raw counts, but {source.name} ({source.matrix}) holds non-integer "
                    f"values (log-normalised data?) in cells {start}-{stop}; pass layer= the raw counts layer or use_raw=True"
                )
                raise C2TInputError(msg)
            if plan.sum_duplicates:  # the depth is the sum over every column of the raw rows
                totals = np.asarray(raw.sum(axis=1), dtype=np.float64).ravel()
            matrix = block
            if data is not block.data:  # float32 values without copying the index arrays
                matrix = sp.csr_matrix(block.shape, dtype=np.float32)
                matrix.data, matrix.indices, matrix.indptr = data, block.indices, block.indptr
            obs = source.obs_columns(keys, start, stop) if keys else pd.DataFrame(index=range(stop - start))
            yield Block(start, matrix, col_map, tie_map, token_of_gene, n_kept, totals, source.obs_names(start, stop),
                        obs, input_kind)

    # ------------------------------------------------------------------------------------ helpers
    def _special_mask(self, input_ids: np.ndarray, attention_mask: np.ndarray | None = None) -> np.ndarray:
        """``True`` at special, metadata and padding positions (everything that is not a gene)."""
        genes = self.vocab.gene_ids
        lo, hi = (int(genes.min()), int(genes.max())) if len(genes) else (0, -1)
        others = self.vocab.special_ids()
        if hi - lo + 1 == len(genes) and not ((others >= lo) & (others <= hi)).any():
            special = (input_ids < lo) | (input_ids > hi)  # genes hold one range of ids: two comparisons
        else:
            special = np.isin(input_ids, others)
        return special if attention_mask is None else special | (attention_mask == 0)

    # ------------------------------------------------------------------------------------ disk
    def save(self, folder: str | os.PathLike) -> Path:
        """Write the recipe, its parameters and vocabulary (``c2t_tokenizer.json``) and fitted arrays."""
        from c2t._atomic import atomic_path, write_text_atomic

        if not self.is_fitted:
            msg = f"the {self.recipe} tokenizer has no vocabulary yet; fit it (or call it on data) before saving"
            raise C2TInputError(msg)
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {"recipe": self.recipe, "params": self._params(), "vocab": self.vocab.to_dict()}
        write_text_atomic(folder / TOKENIZER_FILE, json.dumps(state, indent=1) + "\n")
        arrays = self._arrays()
        if arrays:
            with atomic_path(folder / ARRAYS_FILE) as tmp, open(tmp, "wb") as f:
                np.savez(f, **arrays)
        return folder


def load_tokenizer(folder: str | os.PathLike) -> CellTokenizer:
    """Load a tokeniser written by :meth:`CellTokenizer.save` (or inside a pre-trained c2t encoder folder)."""
    from c2t.plm._registry import TOKENIZERS

    folder = Path(folder)
    path = folder / TOKENIZER_FILE
    if not path.is_file():
        msg = f"{folder}: no {TOKENIZER_FILE}; not a saved c2t tokenizer"
        raise C2TInputError(msg)
    state = json.loads(path.read_text(encoding="utf-8"))
    cls = TOKENIZERS.get(state.get("recipe"))
    if cls is None:
        msg = f"{path}: unknown recipe {state.get('recipe')!r}; known: {', '.join(TOKENIZERS)}"
        raise C2TInputError(msg)
    tok = cls(**state["params"])
    tok.vocab = TokenVocab.from_dict(state["vocab"])
    arrays_path = folder / ARRAYS_FILE
    if arrays_path.is_file():
        with np.load(arrays_path, allow_pickle=False) as arrays:
            tok._set_arrays({k: arrays[k] for k in arrays.files})
    return tok


def check_positive_int(name: str, value, *, allow_none: bool = False) -> None:
    """Refuse anything but a positive integer (or ``None`` when allowed), naming the parameter."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        msg = f"{name} must be a positive integer{' or None' if allow_none else ''}, not {value!r}"
        raise C2TInputError(msg)


def as_genes(genes: Sequence[str] | None) -> np.ndarray | None:
    return None if genes is None else np.asarray([str(g) for g in genes], dtype=object)

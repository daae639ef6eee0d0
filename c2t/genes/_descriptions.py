"""Gene descriptions: a table of gene text (e.g. NCBI RefSeq summaries) matched to a dataset's genes."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from c2t._errors import C2TInputError

__all__ = ["GeneDescriptions", "load_descriptions"]

Require = Literal["summary", "name"]


def _compose(symbol: pd.Series, full_name: pd.Series, summary: pd.Series, require: Require) -> pd.Series:
    """``"SYMBOL (full name). summary"``; empty where the gene lacks what ``require`` asks for."""
    name = full_name.fillna("").astype(str).str.strip()
    text = summary.fillna("").astype(str).str.strip()
    head = np.where(name != "", symbol + " (" + name + ")", symbol)
    composed = pd.Series(head, index=symbol.index) + np.where(text != "", ". " + text, ".")
    has = text != "" if require == "summary" else (text != "") | (name != "")
    return composed.where(has, "")


@dataclass
class GeneDescriptions:
    """A gene text table indexed by official symbol, with aliases and optional Ensembl ids.

    Attributes
    ----------
    table
        Columns ``symbol``, ``text`` (empty when the gene has no usable text), ``aliases`` (list of str),
        ``ensembl`` (may be empty).
    source
        Where the table came from (a path or ``"DataFrame"``), recorded in manifests.
    """

    table: pd.DataFrame
    source: str = "DataFrame"
    require: str = "summary"
    _alias_map: dict[str, str] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        symbols = set(self.table["symbol"])
        counts: dict[str, set[str]] = {}
        for sym, aliases in zip(self.table["symbol"], self.table["aliases"], strict=True):
            for alias in aliases:
                counts.setdefault(alias.upper(), set()).add(sym)
        upper_symbols = {s.upper() for s in symbols}
        # an alias is usable only when it names one gene and is nobody's official symbol
        self._alias_map = {a: next(iter(s)) for a, s in counts.items() if len(s) == 1 and a not in upper_symbols}

    def __len__(self) -> int:
        return len(self.table)

    @property
    def n_with_text(self) -> int:
        return int((self.table["text"] != "").sum())

    def match(self, genes: Sequence[str], *, gene_map: Mapping[str, str] | str | os.PathLike | None = None) -> pd.DataFrame:
        """Find each dataset gene's description: by symbol, symbol ignoring case, unique alias, or Ensembl id.

        Parameters
        ----------
        genes
            The dataset's gene names (e.g. ``adata.var_names`` or a CellSentences vocabulary).
        gene_map
            An id -> symbol table (see :func:`c2t.io.read_gene_map`) tried first, e.g. Ensembl -> symbol.

        Returns
        -------
        pandas.DataFrame
            One row per input gene: ``gene``, ``symbol`` (matched official symbol or empty), ``how``
            (``symbol``, ``case``, ``alias``, ``ensembl``, ``map`` or ``none``), ``text`` (empty if none).
            ``df.attrs["coverage"]`` holds the counts (see :meth:`coverage`).

        Examples
        --------
        >>> table = pd.DataFrame({"symbol": ["CD3D", "MS4A1"], "full_name": ["CD3 delta", "membrane 4A1"],
        ...                       "synonyms": ["T3D", "CD20; B1"], "summary": ["T cell receptor part.", None]})
        >>> desc = GeneDescriptions.from_frame(table)
        >>> m = desc.match(["CD3D", "cd20", "XYZ"])
        >>> m["how"].tolist(), m["text"].str.len().gt(0).tolist()
        (['symbol', 'alias', 'none'], [True, False, False])
        >>> m.attrs["coverage"]["with_text"]
        1
        """
        from c2t.io import read_gene_map

        genes = [str(g) for g in genes]
        by_symbol = pd.Series(self.table.index, index=self.table["symbol"])
        upper = self.table["symbol"].str.upper()
        by_upper = pd.Series(self.table["symbol"].to_numpy(), index=upper)[~upper.duplicated(keep=False).to_numpy()]
        by_ensembl = {}
        if "ensembl" in self.table:
            by_ensembl = {e: s for s, e in zip(self.table["symbol"], self.table["ensembl"], strict=True) if e}
        mapping = read_gene_map(gene_map) if gene_map is not None else {}
        symbols, hows = [], []
        for gene in genes:
            base = gene.split(".")[0] if gene.startswith("ENS") else gene
            if gene in by_symbol.index:
                symbols.append(gene), hows.append("symbol")
            elif (mapped := mapping.get(gene) or mapping.get(base)) and mapped in by_symbol.index:
                symbols.append(mapped), hows.append("map")
            elif base in by_ensembl:
                symbols.append(by_ensembl[base]), hows.append("ensembl")
            elif gene.upper() in by_upper.index:
                symbols.append(by_upper[gene.upper()]), hows.append("case")
            elif gene.upper() in self._alias_map:
                symbols.append(self._alias_map[gene.upper()]), hows.append("alias")
            else:
                symbols.append(""), hows.append("none")
        text_of = dict(zip(self.table["symbol"], self.table["text"], strict=True))
        out = pd.DataFrame({"gene": genes, "symbol": symbols, "how": hows})
        out["text"] = [text_of.get(s, "") for s in symbols]
        out.attrs["coverage"] = self._coverage(out)
        return out

    @staticmethod
    def _coverage(matched: pd.DataFrame) -> dict[str, Any]:
        how = matched["how"].value_counts()
        return {
            "n_genes": len(matched),
            "matched": int((matched["how"] != "none").sum()),
            "with_text": int((matched["text"] != "").sum()),
            "by": {k: int(how.get(k, 0)) for k in ("symbol", "map", "ensembl", "case", "alias", "none")},
            "fraction_with_text": round(float((matched["text"] != "").mean()) if len(matched) else 0.0, 4),
        }

    @classmethod
    def from_frame(
        cls,
        frame: pd.DataFrame,
        *,
        symbol_col: str = "symbol",
        name_col: str | None = "full_name",
        summary_col: str = "summary",
        alias_col: str | None = "synonyms",
        ensembl_col: str | None = None,
        require: Require = "summary",
        source: str = "DataFrame",
    ) -> GeneDescriptions:
        """Build from a DataFrame (columns named as in the NCBI table ``human_gene_descriptions.parquet``)."""
        if frame.shape[0] == 0:
            msg = f"the gene description table {source} is empty"
            raise C2TInputError(msg)
        for col in [symbol_col, summary_col, name_col, alias_col, ensembl_col]:
            if col is not None and col not in frame.columns:
                msg = f"column {col!r} not found in the gene description table {source}; columns are: {', '.join(frame.columns)}"
                raise C2TInputError(msg)
        if require not in ("summary", "name"):
            msg = f"require must be 'summary' or 'name', not {require!r}"
            raise C2TInputError(msg)
        frame = frame[frame[symbol_col].notna()].drop_duplicates(symbol_col)
        symbol = frame[symbol_col].astype(str).str.strip()
        empty = pd.Series([""] * len(frame), index=frame.index)
        names = frame[name_col] if name_col else empty
        table = pd.DataFrame({"symbol": symbol.to_numpy()})
        table["text"] = _compose(symbol, names, frame[summary_col], require).to_numpy()
        aliases = frame[alias_col].fillna("") if alias_col else empty
        table["aliases"] = [[a.strip() for a in str(v).split(";") if a.strip()] for v in aliases]
        table["ensembl"] = frame[ensembl_col].fillna("").astype(str).to_numpy() if ensembl_col else ""
        return cls(table=table, source=source, require=require)


def load_descriptions(path: str | os.PathLike, *, require: Require = "summary", **columns: str | None) -> GeneDescriptions:
    """Load a gene description table from Parquet, CSV or TSV.

    Parameters
    ----------
    path
        The table; by default its columns are named like the NCBI table in ``../shared/data``:
        ``symbol``, ``full_name``, ``synonyms`` (``;``-separated aliases) and ``summary``.
    require
        ``"summary"`` (default): only genes with a summary have text (GenePT's choice); ``"name"``: the full
        name alone is enough.
    **columns
        Other column names: ``symbol_col``, ``name_col``, ``summary_col``, ``alias_col``, ``ensembl_col``.

    Returns
    -------
    GeneDescriptions
    """
    path = Path(path)
    if not path.is_file():
        msg = f"gene description table {path}: no such file"
        raise C2TInputError(msg)
    if path.suffix == ".parquet":
        frame = pd.read_parquet(path)
    else:
        frame = pd.read_csv(path, sep="\t" if path.suffix in {".tsv", ".txt"} else ",")
    return GeneDescriptions.from_frame(frame, require=require, source=str(path), **columns)

"""Pre-trained single-cell language models (PLMs) beside the LLMs: the survey's tokenisations and small encoders.

Tokenisers (numpy + numba; no torch) turn an AnnData into model inputs, one published recipe each:

- :class:`ScBERTTokenizer`: expression bins (log2, floored, capped) over a fixed gene panel;
- :class:`GeneformerTokenizer`: rank value encoding (v1: 2,048 tokens; v2: ``<cls>`` ... ``<eos>``, 4,096);
- :class:`ScGPTTokenizer`: gene tokens with per-cell quantile value bins (51), ``<cls>``, batch/modality tokens;
- :class:`TGPTTokenizer`: the top 64 genes ranked by expression;
- :class:`ScFoundationTokenizer`: expressed genes with values, plus total-count tokens T and S;
- :class:`UCETokenizer`: expression-weighted gene samples grouped by chromosome, over fixed gene embeddings;
- :class:`CellPLMTokenizer`: cells as tokens (expression x gene embedding);
- :class:`RankMetadataTokenizer`: metadata tokens + technology-normalised ranking (Nicheformer, GeneCompass);
- :class:`ScMulanTokenizer`: a task word, metadata words, then gene words with values (scMulan style).

Each returns an :class:`Encoding` — a dict of ``input_ids``, ``attention_mask`` and, where the recipe has
them, ``values`` — that a Hugging Face model takes as ``model(**encoding)``.

Encoders (torch + transformers, the ``c2t[plm]`` extra): :func:`pretrain` a small BERT (masked genes) or
GPT-2 (next gene) on your data with any tokeniser, :func:`load_encoder` it back, or load a Geneformer or tGPT
checkpoint folder (:func:`load_geneformer`, :func:`load_tgpt`). Every encoder is a :class:`CellEncoder`:
``encoder.embed(adata)`` returns a cells x dim array, and :func:`embed` writes it to ``adata.obsm``.

>>> import anndata as ad, numpy as np
>>> adata = ad.AnnData(np.array([[0, 4, 1, 4, 11], [3, 0, 0, 1, 0]], dtype=np.float32))
>>> adata.var_names = ["A", "B", "C", "D", "E"]
>>> enc = TGPTTokenizer(top_k=3)(adata)
>>> enc["input_ids"].shape, enc["attention_mask"].tolist()
((2, 3), [[1, 1, 1], [1, 1, 0]])
"""

from __future__ import annotations

import importlib

from c2t.plm._base import CellTokenizer, load_tokenizer
from c2t.plm._cellplm import CellPLMTokenizer
from c2t.plm._encoder import CellEncoder, embed
from c2t.plm._encoding import Encoding
from c2t.plm._geneformer import GeneformerTokenizer
from c2t.plm._nicheformer import RankMetadataTokenizer
from c2t.plm._registry import TOKENIZERS
from c2t.plm._scbert import ScBERTTokenizer
from c2t.plm._scfoundation import ScFoundationTokenizer
from c2t.plm._scgpt import ScGPTTokenizer
from c2t.plm._scmulan import ScMulanTokenizer
from c2t.plm._tgpt import TGPTTokenizer
from c2t.plm._uce import UCETokenizer
from c2t.plm._vocab import TokenVocab

# torch-backed names load on first use, so that tokenising needs neither torch nor transformers
_LAZY = {
    "PLMEncoder": "c2t.plm._model",
    "PretrainConfig": "c2t.plm._pretrain",
    "pretrain": "c2t.plm._pretrain",
    "load_encoder": "c2t.plm._checkpoints",
    "load_geneformer": "c2t.plm._checkpoints",
    "load_tgpt": "c2t.plm._checkpoints",
    "load_checkpoint": "c2t.plm._checkpoints",
}

__all__ = [
    "TOKENIZERS",
    "CellEncoder",
    "CellPLMTokenizer",
    "CellTokenizer",
    "Encoding",
    "GeneformerTokenizer",
    "PLMEncoder",
    "PretrainConfig",
    "RankMetadataTokenizer",
    "ScBERTTokenizer",
    "ScFoundationTokenizer",
    "ScGPTTokenizer",
    "ScMulanTokenizer",
    "TGPTTokenizer",
    "TokenVocab",
    "UCETokenizer",
    "embed",
    "load_checkpoint",
    "load_encoder",
    "load_geneformer",
    "load_tgpt",
    "load_tokenizer",
    "pretrain",
]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    msg = f"module 'c2t.plm' has no attribute {name!r}"
    raise AttributeError(msg)

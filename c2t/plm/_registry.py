"""Name -> tokeniser class: the recipes ``c2t pretrain`` and :func:`c2t.plm.load_tokenizer` know."""

from __future__ import annotations

from c2t.plm._cellplm import CellPLMTokenizer
from c2t.plm._geneformer import GeneformerTokenizer
from c2t.plm._nicheformer import RankMetadataTokenizer
from c2t.plm._scbert import ScBERTTokenizer
from c2t.plm._scfoundation import ScFoundationTokenizer
from c2t.plm._scgpt import ScGPTTokenizer
from c2t.plm._scmulan import ScMulanTokenizer
from c2t.plm._tgpt import TGPTTokenizer
from c2t.plm._uce import UCETokenizer

TOKENIZERS = {
    cls.recipe: cls
    for cls in (ScBERTTokenizer, GeneformerTokenizer, ScGPTTokenizer, TGPTTokenizer, ScFoundationTokenizer,
                UCETokenizer, CellPLMTokenizer, RankMetadataTokenizer, ScMulanTokenizer)
}

"""Cell sentences: each cell's genes ranked by expression, as ids plus one vocabulary, and the way back.

>>> import anndata as ad, numpy as np
>>> adata = ad.AnnData(np.array([[0, 9, 1], [4, 0, 2]], dtype=np.float32))
>>> adata.var_names = ["CD3D", "LYZ", "MS4A1"]
>>> cs = from_adata(adata)
>>> cs.texts()
['LYZ MS4A1', 'CD3D MS4A1']
>>> decoded = decode(cs.texts(), model=cs)
>>> decoded.shape
(2, 3)
"""

from c2t.sentences._build import convert, from_adata
from c2t.sentences._core import CellSentences, load
from c2t.sentences._decode import decode
from c2t.sentences._inverse import InverseModel, RankStats

__all__ = ["CellSentences", "InverseModel", "RankStats", "convert", "decode", "from_adata", "load"]

"""Cell embeddings from text-level gene embeddings and cell sentences, written to ``adata.obsm``.

=====================  ===========================  ====================================================
function               default ``obsm`` key         what a cell is
=====================  ===========================  ====================================================
:func:`genept_w`       ``X_genept_w``               expression-weighted mean of its genes' text vectors
:func:`genept_s`       ``X_genept_s``               the embedding of its ranked gene sentence
:func:`cellama`        ``X_cellama``                "Top genes are ..." + metadata (+ spatial neighbours)
:func:`pca`            ``X_pca_log``                PCA of log expression (the classical baseline)
:func:`random_cells`   ``X_random``                 Gaussian noise (the floor)
=====================  ===========================  ====================================================
"""

from c2t.embed._cells import cellama, cellama_texts, genept_s, genept_w, pca, random_cells
from c2t.embed._finetune import finetune_cellama

__all__ = ["cellama", "cellama_texts", "finetune_cellama", "genept_s", "genept_w", "pca", "random_cells"]

"""Benchmark methods: a plain dict from name to a small function ``(adata, **options) -> cells x dim array``.

Adding a method is one function here and one line in :data:`METHODS` (or :data:`LABEL_METHODS` for a method
that labels cells itself, such as annotation by generation, or :data:`GENERATIVE_METHODS` for one that generates
cells). The runner passes ``seed``, ``cache_dir``, ``train`` (the indices of the split's training cells, for a
method that fits on them) and ``labels`` (a generative method's labels to generate) to a function whose signature
names them; every other option comes from the config.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from c2t._errors import C2TInputError

DESCRIPTIONS = Path(__file__).resolve().parents[3] / "shared" / "data" / "human_gene_descriptions.parquet"


def _descriptions_path(descriptions: str | os.PathLike | None) -> Path:
    path = Path(descriptions or os.environ.get("C2T_DESCRIPTIONS") or DESCRIPTIONS)
    if not path.is_file():
        msg = f"{path}: no gene description table; set the method's descriptions: option or $C2T_DESCRIPTIONS"
        raise C2TInputError(msg)
    return path


@functools.lru_cache(maxsize=4)
def _encoder(model: str | None):
    from c2t.genes import SentenceTransformerEncoder
    from c2t.models import minilm_path

    return SentenceTransformerEncoder(model or minilm_path())


def pca(adata, *, n_comps: int = 50, n_top_genes: int = 2000, seed: int = 0) -> np.ndarray:
    """PCA of log1p(CP10k) expression on highly variable genes: the classical baseline.

    Examples
    --------
    >>> import anndata as ad, numpy as np
    >>> adata = ad.AnnData(np.random.default_rng(0).poisson(2, (30, 20)).astype(np.float32))
    >>> pca(adata, n_comps=5).shape
    (30, 5)
    """
    import c2t.embed

    work = c2t.embed.pca(adata, n_comps=n_comps, n_top_genes=n_top_genes, seed=seed, copy=True)
    return work.obsm["X_pca_log"]


def random(adata, *, dim: int = 50, seed: int = 0) -> np.ndarray:
    """The random control: Gaussian vectors independent of expression (scores at chance).

    Examples
    --------
    >>> import anndata as ad, numpy as np
    >>> random(ad.AnnData(np.zeros((4, 3), dtype=np.float32)), dim=2).shape
    (4, 2)
    """
    return np.random.default_rng(seed).standard_normal((adata.n_obs, dim)).astype(np.float32)


def genept_w(adata, *, descriptions: str | None = None, model: str | None = None, random_genes: bool = False,
             gene_seed: int = 0, cache_dir: str | None = None) -> np.ndarray:
    """GenePT-w: expression-weighted mean of the genes' description embeddings (all-MiniLM-L6-v2 by default).

    Only the genes expressed in ``adata`` are embedded; with ``random_genes`` the gene vectors are replaced
    by random ones of the same norm, drawn with ``gene_seed`` (GenePT's own control).
    """
    import c2t.embed
    from c2t.genes import embed_genes, load_descriptions

    matched = load_descriptions(_descriptions_path(descriptions)).match(adata.var_names.astype(str))
    expressed = np.asarray((adata.X > 0).sum(axis=0)).ravel() > 0
    matched.loc[~expressed, "text"] = ""
    genes = embed_genes(matched, _encoder(model), cache_dir=cache_dir)
    if random_genes:
        genes = genes.random_control(seed=gene_seed)
    return c2t.embed.genept_w(adata, genes, copy=True).obsm["X_genept_w"]


def genept_s(adata, *, top_k: int = 100, model: str | None = None, cache_dir: str | None = None) -> np.ndarray:
    """GenePT-s: the text embedding of each cell's sentence of its ``top_k`` genes."""
    import c2t.embed

    return c2t.embed.genept_s(adata, _encoder(model), top_k=top_k, cache_dir=cache_dir, copy=True).obsm["X_genept_s"]


def cellama(adata, *, top_k: int = 32, metadata_keys: tuple[str, ...] = (), model: str | None = None,
            cache_dir: str | None = None) -> np.ndarray:
    """CELLama (frozen encoder): "Top genes are ..." sentences, optionally with metadata columns."""
    import c2t.embed

    return c2t.embed.cellama(adata, _encoder(model), top_k=top_k, metadata_keys=list(metadata_keys),
                             cache_dir=cache_dir, copy=True).obsm["X_cellama"]


def cellama_finetuned(adata, *, train, top_k: int = 32, metadata_keys: tuple[str, ...] = (), model: str | None = None,
                      max_cells: int = 300, n_neighbors: int = 2, n_random: int = 2, epochs: int = 1,
                      batch_size: int = 32, learning_rate: float = 2e-5, max_seq_length: int = 128,
                      seed: int = 0) -> np.ndarray:
    """CELLama fine-tuned (:func:`c2t.embed.finetune_cellama`) on up to ``max_cells`` of the split's training
    cells only (never a test cell), then every cell embedded with the fine-tuned encoder.

    Steps: ``max_cells * (n_neighbors + n_random) / batch_size * epochs`` (about 38 with the defaults, a few
    minutes on two CPU cores). The model is fine-tuned anew per seed, since each seed has its own split, in a
    temporary folder that is removed afterwards.
    """
    import tempfile

    import c2t.embed
    from c2t.genes import SentenceTransformerEncoder
    from c2t.models import minilm_path

    train = np.asarray(train)
    if len(train) > max_cells:
        train = np.sort(np.random.default_rng(seed).choice(train, max_cells, replace=False))
    cells = adata[train].copy()
    cells = c2t.embed.pca(cells, n_comps=min(50, cells.n_obs - 1, cells.n_vars - 1), seed=seed, copy=True)
    with tempfile.TemporaryDirectory(prefix="c2t_cellama_") as tmp:
        folder = c2t.embed.finetune_cellama(
            cells, model_path=model or minilm_path(), out=f"{tmp}/model", top_k=top_k, metadata_keys=list(metadata_keys),
            n_neighbors=n_neighbors, n_random=n_random, epochs=epochs, batch_size=batch_size,
            learning_rate=learning_rate, max_seq_length=max_seq_length, seed=seed)
        encoder = SentenceTransformerEncoder(folder)
        return c2t.embed.cellama(adata, encoder, top_k=top_k, metadata_keys=list(metadata_keys), cache_dir=None,
                                 copy=True).obsm["X_cellama"]


def plm(adata, *, path: str | None = None, checkpoint_options: dict | None = None, tokenizer: str = "geneformer",
        max_length: int = 256, max_steps: int = 200, hidden_size: int = 128, num_layers: int = 2,
        seed: int = 0) -> np.ndarray:
    """A PLM encoder: ``path`` is a folder from ``c2t pretrain`` or a published checkpoint on disk (a Geneformer
    or tGPT folder, loaded by :func:`c2t.plm.load_checkpoint` with ``checkpoint_options``, e.g. ``gene_key``,
    ``token_dictionary``, ``total_key``); without it, a small BERT is pre-trained from scratch on these cells
    for ``max_steps`` masked-gene steps with the ``tokenizer`` recipe (labels are not used).

    Needs torch and transformers (``pip install 'c2t[plm]'``).
    """
    from c2t.plm import load_checkpoint, pretrain

    if path:
        encoder = load_checkpoint(path, **dict(checkpoint_options or {}))
    else:
        encoder = pretrain(adata, tokenizer=tokenizer, tokenizer_options={"max_length": max_length},
                           max_steps=max_steps, hidden_size=hidden_size, num_layers=num_layers,
                           intermediate_size=2 * hidden_size, seed=seed, validation_fraction=0.05)
    return np.asarray(encoder.embed(adata), dtype=np.float32)


def llm(adata, *, model: str, layer: int = -1, top_k: int | None = None, batch_size: int = 16,
        seed: int = 0) -> np.ndarray:
    """Hidden-state embeddings of a (tuned) language model: masked mean of one layer over each cell sentence's
    tokens (:func:`c2t.generate.embed_hidden`); ``model`` is a c2t run, merged model or Hugging Face folder."""
    from c2t.generate import embed_hidden

    return embed_hidden(model, adata, layer=layer, top_k=top_k, batch_size=batch_size, seed=seed,
                        copy=True).obsm["X_c2t_llm"]


METHODS: dict[str, Callable[..., np.ndarray]] = {
    "pca": pca,
    "random": random,
    "genept_w": genept_w,
    "genept_s": genept_s,
    "cellama": cellama,
    "cellama_finetuned": cellama_finetuned,
    "plm": plm,
    "llm": llm,
}


def llm_generate(adata, *, model: str, task: str = "cell_type", backend: str = "transformers",
                 base_url: str | None = None, served_model: str | None = None, batch_size: int = 32,
                 seed: int = 0) -> np.ndarray:
    """Annotation by generation with a tuned run (:func:`c2t.generate.predict`): one label per cell (the run's
    labels or ``"unknown"``). A label method: it answers the test cells directly, no head is trained."""
    from c2t.generate import predict

    work = adata.copy()
    predict(model, work, task=task, backend=backend, base_url=base_url, served_model=served_model, seed=seed,
            sampling={"batch_size": batch_size}, key_added="c2t_bench_prediction")
    return work.obs["c2t_bench_prediction"].astype(str).to_numpy()


def llm_likelihood(adata, *, model: str, task: str = "cell_type", backend: str = "transformers",
                   base_url: str | None = None, served_model: str | None = None, score_by: str = "sum",
                   unknown_threshold: float | None = None, seed: int = 0) -> np.ndarray:
    """Annotation by likelihood with a tuned run (:func:`c2t.generate.predict` with ``scoring="likelihood"``):
    every label the run knows is scored as the completion of the cell's prompt, the most probable one wins
    (``"unknown"`` below ``unknown_threshold``). A label method: it answers the test cells directly."""
    from c2t.generate import predict

    work = adata.copy()
    predict(model, work, task=task, backend=backend, base_url=base_url, served_model=served_model, seed=seed,
            scoring="likelihood", score_by=score_by, unknown_threshold=unknown_threshold,
            key_added="c2t_bench_prediction")
    return work.obs["c2t_bench_prediction"].astype(str).to_numpy()


#: Methods that return one label per cell instead of an embedding (scored on the test cells' annotation only).
LABEL_METHODS: dict[str, Callable[..., np.ndarray]] = {
    "llm_generate": llm_generate,
    "llm_likelihood": llm_likelihood,
}
#: The "head" column of a label method's rows: how it labelled the cells.
LABEL_HEADS: dict[str, str] = {"llm_generate": "generation", "llm_likelihood": "likelihood"}


def llm_cells(adata, *, labels, model: str, per_label: int = 20, temperature: float = 1.0,
              max_new_tokens: int | None = None, backend: str = "transformers", base_url: str | None = None,
              served_model: str | None = None, batch_size: int = 32, seed: int = 0):
    """Cells generated by a tuned run (:func:`c2t.generate.generate_cells`): ``per_label`` cells for each of
    ``labels`` that the run was trained to generate. A generative method (the ``generation`` task only).

    Returns
    -------
    generated, real : anndata.AnnData
        The generated cells (``obs["condition"]``: the label asked for, ``obs["c2t_text"]``: the raw sentence)
        and ``adata``'s cells in the same representation: each real cell's top-k sentence decoded with the run's
        inverse model over the run's vocabulary, so both differ only in where the sentence came from.
    """
    from c2t.generate import generate_cells, read_run_info

    info = read_run_info(model)
    known = info.labels("generation")
    wanted = [str(label) for label in labels if not known or str(label) in known]
    if not wanted:
        msg = (f"{model}: the run generates none of the dataset's labels ({', '.join(map(str, labels))}); "
               f"its labels are: {', '.join(known)}")
        raise C2TInputError(msg)
    top_k = info.top_k
    sampling = {"temperature": temperature, "seed": seed, "batch_size": batch_size,
                "max_new_tokens": max_new_tokens or 3 * (top_k or 100) + 16}
    generated = generate_cells(model, labels={label: per_label for label in wanted}, backend=backend,
                               sampling=sampling, base_url=base_url, served_model=served_model)
    return generated, _decoded_real(adata, info)


def _decoded_real(adata, info):
    """``adata``'s cells as a run sees them: their top-k sentences decoded with the run's inverse model."""
    from c2t.sentences import decode, from_adata

    texts = from_adata(adata, top_k=info.top_k, seed=info.dataset.get("seed", 0)).texts()
    real = decode(texts, model=(info.vocabulary(), info.inverse_model()), delimiter=" ")
    real.obs_names = adata.obs_names
    return real


def random_cells(adata, *, labels, train, model: str, per_label: int = 20, seed: int = 0):
    """The generative control: for each label, ``per_label`` sentences of the run's top-k genes drawn at random
    (without replacement, weighted by how often each gene is in the training cells' sentences, so label-blind but
    with real genes at their overall frequency), decoded like :func:`llm_cells`' cells.

    Returns
    -------
    generated, real : anndata.AnnData
        As :func:`llm_cells`.
    """
    import pandas as pd

    from c2t.generate import read_run_info
    from c2t.sentences import decode

    info = read_run_info(model)
    vocabulary = np.asarray(info.vocabulary(), dtype=str)
    real = _decoded_real(adata, info)
    counts = np.asarray((real[np.asarray(train)].X > 0).sum(axis=0)).ravel().astype(float)
    if counts.sum() == 0:
        counts[:] = 1.0
    top_k = info.top_k or 100
    rng = np.random.default_rng(seed)
    conditions = [str(label) for label in labels for _ in range(per_label)]
    n_genes = min(top_k, int((counts > 0).sum()))
    sentences = [" ".join(vocabulary[rng.choice(len(vocabulary), n_genes, replace=False, p=counts / counts.sum())])
                 for _ in conditions]
    obs = pd.DataFrame({"condition": pd.Categorical(conditions), "c2t_text": sentences},
                       index=pd.Index([f"random_{i}" for i in range(len(conditions))]))
    generated = decode(sentences, model=(info.vocabulary(), info.inverse_model()), delimiter=" ", obs=obs)
    return generated, real


#: Methods that generate cells (scored by the ``generation`` task only): ``(adata, *, labels, **options) ->
#: (generated, real)`` AnnData pair in one representation (see :func:`llm_cells`).
GENERATIVE_METHODS: dict[str, Callable] = {
    "llm_cells": llm_cells,
    "random_cells": random_cells,
}

#: The method dicts by kind (the dicts themselves: a method registered in one later is seen here too).
METHODS_BY_KIND: dict[str, dict[str, Callable]] = {"embedding": METHODS, "label": LABEL_METHODS,
                                                   "generative": GENERATIVE_METHODS}


def all_methods() -> dict[str, Callable]:
    """Every method by name, whatever its kind (read at call time, so later registrations count)."""
    return {name: fn for table in METHODS_BY_KIND.values() for name, fn in table.items()}

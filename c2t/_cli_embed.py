"""CLI verbs for text-level embeddings: ``c2t embed genes``, ``c2t embed cells`` and ``c2t annotate``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from c2t._errors import C2TInputError

embed_app = typer.Typer(help="Gene and cell embeddings from text (GenePT, CELLama, ...).", no_args_is_help=True)

METHODS = ("genept-w", "genept-s", "cellama", "pca", "random")


def _fail(message: str) -> None:
    from c2t.cli import _fail as fail

    fail(message)


def _encoder(model: Path | None, openai_model: str | None, base_url: str | None, api_key_env: str):
    from c2t.genes import OpenAIEmbeddingEncoder, SentenceTransformerEncoder

    if (model is None) == (openai_model is None):
        _fail("give exactly one of --model (a local sentence-transformers folder) or --openai-model")
    if model is not None:
        return SentenceTransformerEncoder(model)
    return OpenAIEmbeddingEncoder(openai_model, base_url=base_url, api_key_env=api_key_env)


def _read_adata(path: Path):
    from c2t.io import read_h5ad

    return read_h5ad(path)


def _gene_list(genes_from: Path, gene_key: str | None) -> list[str]:
    if genes_from.suffix == ".h5ad":
        from c2t.io import open_source, resolve_genes

        with open_source(genes_from) as source:
            return resolve_genes(source.var, gene_key=gene_key, on_duplicate="first").vocabulary.tolist()
    if not genes_from.is_file():
        _fail(f"{genes_from}: no such file")
    return [line.strip() for line in genes_from.read_text().splitlines() if line.strip()]


@embed_app.command("genes")
def embed_genes_command(
    descriptions: Annotated[Path, typer.Option(help="Gene description table (.parquet/.csv/.tsv: symbol, full_name, synonyms, summary).")],
    genes_from: Annotated[Path, typer.Option("--genes-from", help="An .h5ad (its genes) or a .txt with one gene per line.")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Output folder (vectors.npy, genes.tsv, manifest.json).")],
    model: Annotated[Path | None, typer.Option(help="Local sentence-transformers model folder.")] = None,
    openai_model: Annotated[str | None, typer.Option("--openai-model", help="Embedding model of an OpenAI-compatible server.")] = None,
    base_url: Annotated[str | None, typer.Option("--base-url", help="OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1.")] = None,
    api_key_env: Annotated[str, typer.Option("--api-key-env", help="Environment variable holding the API key.")] = "OPENAI_API_KEY",
    llm_model: Annotated[str | None, typer.Option("--llm-model", help="Chat model that writes descriptions for genes without one.")] = None,
    llm_base_url: Annotated[str | None, typer.Option("--llm-base-url", help="Server of --llm-model (default: --base-url).")] = None,
    gene_key: Annotated[str | None, typer.Option("--gene-key", help="var column with gene names (for an .h5ad).")] = None,
    require: Annotated[str, typer.Option(help="'summary' (genes need a summary) or 'name' (the full name is enough).")] = "summary",
    cache_dir: Annotated[Path, typer.Option("--cache-dir", help="Cache of embeddings and LLM answers.")] = Path(".c2t_cache"),
) -> None:
    """Embed each gene's description (GenePT): the gene embeddings used by `c2t embed cells --method genept-w`."""
    from rich.console import Console

    from c2t.genes import describe_genes_with_llm, embed_genes, load_descriptions

    try:
        table = load_descriptions(descriptions, require=require)
        matched = table.match(_gene_list(genes_from, gene_key))
        coverage = matched.attrs["coverage"]
        if llm_model:
            missing = matched["text"] == ""
            written = describe_genes_with_llm(matched.loc[missing, "gene"].tolist(), model=llm_model,
                                              base_url=llm_base_url or base_url, api_key_env=api_key_env,
                                              cache_dir=cache_dir)
            matched.loc[missing, "text"] = written["text"].to_numpy()
            coverage = {**coverage, "llm_written": int((written["text"] != "").sum())}
        matched.attrs.update(coverage=coverage, source=str(descriptions))
        result = embed_genes(matched, _encoder(model, openai_model, base_url, api_key_env), cache_dir=cache_dir)
        result.save(out)
    except C2TInputError as err:
        _fail(str(err))
        return
    Console().print(f"[green]wrote[/] {out}: {result}; coverage {coverage}", highlight=False)


def _check_output(out: Path) -> None:
    if out.suffix not in {".h5ad", ".parquet", ".npy"}:
        _fail(f"{out}: the output must end in .h5ad, .parquet or .npy")


def write_embedding(adata, key: str, out: Path) -> None:
    """Write ``adata.obsm[key]`` as .h5ad (the AnnData with it), .parquet (cell_id + embedding) or .npy."""
    from c2t._atomic import atomic_path

    _check_output(out)
    suffix = out.suffix
    with atomic_path(out) as tmp:
        if suffix == ".h5ad":
            adata.write_h5ad(tmp)
        elif suffix == ".npy":
            with open(tmp, "wb") as f:
                np.save(f, np.asarray(adata.obsm[key], dtype=np.float32))
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            values = np.asarray(adata.obsm[key], dtype=np.float32)
            column = pa.FixedSizeListArray.from_arrays(pa.array(values.ravel()), values.shape[1])
            pq.write_table(pa.table({"cell_id": adata.obs_names.astype(str).tolist(), key: column}), tmp)


@embed_app.command("cells")
def embed_cells_command(
    input: Annotated[Path, typer.Argument(help="Cells (.h5ad).")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Output .h5ad (obsm), .parquet or .npy.")],
    method: Annotated[str, typer.Option(help="genept-w, genept-s, cellama, pca or random.")] = "genept-w",
    gene_embeddings: Annotated[Path | None, typer.Option("--gene-embeddings", help="Folder from `c2t embed genes` (genept-w).")] = None,
    model: Annotated[Path | None, typer.Option(help="Local sentence-transformers model (genept-s, cellama).")] = None,
    openai_model: Annotated[str | None, typer.Option("--openai-model")] = None,
    base_url: Annotated[str | None, typer.Option("--base-url")] = None,
    api_key_env: Annotated[str, typer.Option("--api-key-env")] = "OPENAI_API_KEY",
    top_k: Annotated[int, typer.Option("--top-k", help="Genes per sentence (genept-s, cellama).")] = 100,
    metadata_keys: Annotated[str | None, typer.Option("--metadata-keys", help="obs columns written into CELLama sentences.")] = None,
    neighbor_key: Annotated[str | None, typer.Option("--neighbor-key", help="obs labels of spatial neighbours (CELLama).")] = None,
    gene_key: Annotated[str | None, typer.Option("--gene-key")] = None,
    key_added: Annotated[str | None, typer.Option("--key-added", help="obsm key (default X_<method>).")] = None,
    random_control: Annotated[bool, typer.Option("--random-control", help="genept-w with random gene vectors.")] = False,
    cache_dir: Annotated[Path, typer.Option("--cache-dir")] = Path(".c2t_cache"),
) -> None:
    """Embed cells and export them (obsm of an .h5ad, .parquet or .npy)."""
    from rich.console import Console

    import c2t.embed as emb
    from c2t.genes import GeneEmbeddings

    if method not in METHODS:
        _fail(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    _check_output(out)  # before any work: embedding many cells and then failing on the name wastes it all
    key = key_added or "X_" + method.replace("-", "_")
    try:
        adata = _read_adata(input)
        if method == "genept-w":
            if gene_embeddings is None:
                _fail("--method genept-w needs --gene-embeddings (a folder from `c2t embed genes`)")
            genes = GeneEmbeddings.load(gene_embeddings)
            emb.genept_w(adata, genes.random_control() if random_control else genes, gene_key=gene_key, key_added=key)
        elif method == "genept-s":
            emb.genept_s(adata, _encoder(model, openai_model, base_url, api_key_env), top_k=top_k, gene_key=gene_key,
                         cache_dir=cache_dir, key_added=key)
        elif method == "cellama":
            keys = [k.strip() for k in (metadata_keys or "").split(",") if k.strip()]
            emb.cellama(adata, _encoder(model, openai_model, base_url, api_key_env), top_k=top_k, metadata_keys=keys,
                        neighbor_key=neighbor_key, gene_key=gene_key, cache_dir=cache_dir, key_added=key)
        elif method == "pca":
            emb.pca(adata, key_added=key)
        else:
            emb.random_cells(adata, key_added=key)
        write_embedding(adata, key, out)
    except C2TInputError as err:
        _fail(str(err))
        return
    Console().print(f"[green]wrote[/] {out}: obsm[{key!r}] {adata.obsm[key].shape}", highlight=False)


def annotate_command(
    reference: Annotated[Path, typer.Option(help="Labelled reference .h5ad holding the embedding in obsm.")],
    query: Annotated[Path, typer.Option(help="Query .h5ad holding the same embedding in obsm.")],
    label_key: Annotated[str, typer.Option("--label-key", help="obs column of the reference with the labels.")],
    use_rep: Annotated[str, typer.Option("--use-rep", help="obsm key of the embedding, e.g. X_genept_w.")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Output .h5ad: the query with predicted labels.")],
    method: Annotated[str, typer.Option(help="knn, logistic or mlp.")] = "knn",
    unknown_threshold: Annotated[float | None, typer.Option("--unknown-threshold", help="Below this confidence: 'unknown'.")] = None,
    key_added: Annotated[str, typer.Option("--key-added")] = "c2t_label",
    save_head: Annotated[Path | None, typer.Option("--save-head", help="Also save the trained head here.")] = None,
) -> None:
    """Annotate query cells from a labelled reference with an embedding head (kNN, logistic, MLP)."""
    from rich.console import Console

    from c2t.heads import annotate, fit_head
    from c2t.io import write_h5ad

    try:
        ref, q = _read_adata(reference), _read_adata(query)
        head = fit_head(ref, use_rep=use_rep, label_key=label_key, method=method)
        annotate(q, head, use_rep=use_rep, key_added=key_added, unknown_threshold=unknown_threshold)
        if save_head:
            head.save(save_head)
        write_h5ad(q, out)
    except C2TInputError as err:
        _fail(str(err))
        return
    counts = q.obs[key_added].value_counts().head(8).to_dict()
    line = f"[green]wrote[/] {out}: {q.n_obs} cells labelled by a {method} head; most common: {counts}"
    if label_key in q.obs:
        from sklearn.metrics import accuracy_score, f1_score

        truth = q.obs[label_key].astype(str)
        line += (f"; accuracy {accuracy_score(truth, q.obs[key_added]):.3f}, "
                 f"macro-F1 {f1_score(truth, q.obs[key_added], average='macro'):.3f}")
    Console().print(line, highlight=False)


def register(app: typer.Typer) -> None:
    """Attach these verbs to the main ``c2t`` app."""
    app.add_typer(embed_app, name="embed")
    app.command("annotate")(annotate_command)

"""CLI verbs for generation and inference: ``c2t generate cells``, ``c2t predict``, ``c2t embed llm`` and
``c2t annotate-clusters``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from c2t._errors import C2TInputError

generate_app = typer.Typer(help="Generate cells with a tuned model (transformers, vLLM or an OpenAI-compatible server).",
                           no_args_is_help=True)

Backend = Annotated[str, typer.Option(help="transformers, vllm (offline engine) or openai (a server: --base-url, --served-model).")]
BaseUrl = Annotated[str | None, typer.Option("--base-url", help="OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1.")]
Served = Annotated[str | None, typer.Option("--served-model", help="Model name on the server (vLLM: --served-model-name or a --lora-modules name).")]
SamplingFile = Annotated[Path | None, typer.Option("--sampling", help="YAML of sampling settings (temperature, top_p, top_k, max_new_tokens, seed, batch_size).")]
Device = Annotated[str | None, typer.Option(help="transformers backend: cpu, cuda, ... (default: cuda when available).")]


def _fail(message: str) -> None:
    from c2t.cli import _fail as fail

    fail(message)


def _sampling(path: Path | None, **overrides):
    from c2t.generate import Sampling

    base = Sampling.from_yaml(path) if path is not None else None
    values = {k: v for k, v in overrides.items() if v is not None}
    if base is None:
        return values
    return base.replace(**values)


def _backend_options(backend: str, device: str | None) -> dict:
    return {"device": device} if backend == "transformers" and device else {}


@generate_app.command("cells")
def generate_cells_command(
    model: Annotated[Path, typer.Option(help="A c2t training run (or merged model) folder.")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Output .h5ad of the generated cells.")],
    labels: Annotated[str | None, typer.Option(help="Conditional generation: 'CD14+ Mono:500,B:200'.")] = None,
    prompt: Annotated[str | None, typer.Option(help="Your own prompt instead (--n-cells samples).")] = None,
    n_cells: Annotated[int, typer.Option("--n-cells", help="Cells for --prompt or unconditional generation.")] = 1,
    backend: Backend = "transformers",
    base_url: BaseUrl = None,
    served_model: Served = None,
    sampling: SamplingFile = None,
    temperature: Annotated[float | None, typer.Option(help="Overrides the sampling file.")] = None,
    max_new_tokens: Annotated[int | None, typer.Option("--max-new-tokens")] = None,
    seed: Annotated[int | None, typer.Option()] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size")] = None,
    device: Device = None,
) -> None:
    """Generate cells from prompts and decode them into expression (an AnnData beside real cells)."""
    import warnings

    from rich.console import Console

    from c2t.generate import generate_cells
    from c2t.io import write_h5ad

    console = Console()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            cells = generate_cells(model, labels=labels, prompt=prompt, n_cells=n_cells, backend=backend,
                                   base_url=base_url, served_model=served_model,
                                   sampling=_sampling(sampling, temperature=temperature, max_new_tokens=max_new_tokens,
                                                      seed=seed, batch_size=batch_size),
                                   backend_options=_backend_options(backend, device))
        for w in caught:
            console.print(f"[yellow]warning:[/] {w.message}", highlight=False)
        write_h5ad(cells, out)
    except (C2TInputError, ConnectionError, ImportError) as err:
        _fail(str(err))
        return
    g = cells.uns["c2t_generate"]
    console.print(f"[green]wrote[/] {out}: {g['n_cells']} cells ({g['backend']}); valid genes {g['valid_gene_rate']:.1%}, "
                  f"unique genes per cell {g['mean_unique_genes']:.1f}, duplicates {g['duplicate_rate']:.1%}, "
                  f"empty outputs {g['n_empty']}", highlight=False)


def predict_command(
    model: Annotated[Path, typer.Option(help="A c2t training run (or merged model) folder.")],
    data: Annotated[Path, typer.Argument(help="Input .h5ad.")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Output .h5ad with the predicted labels in obs.")],
    task: Annotated[str, typer.Option(help="cell_type, drug_response or metadata.")] = "cell_type",
    label_key: Annotated[str | None, typer.Option("--label-key", help="obs column with the truth (default: the run's).")] = None,
    key_added: Annotated[str | None, typer.Option("--key-added", help="obs column for the labels (default c2t_<task>).")] = None,
    backend: Backend = "transformers",
    base_url: BaseUrl = None,
    served_model: Served = None,
    sampling: SamplingFile = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size")] = None,
    device: Device = None,
    report: Annotated[Path | None, typer.Option(help="Also write the metrics as JSON here.")] = None,
    scoring: Annotated[str, typer.Option(help="generate (a greedy answer mapped onto the run's labels) or "
                                              "likelihood (every label scored as the prompt's completion).")] = "generate",
    score_by: Annotated[str, typer.Option("--score-by", help="Likelihood: rank labels by the sum or the per-token "
                                                              "mean of their log-probabilities.")] = "sum",
    unknown_threshold: Annotated[float | None, typer.Option(
        "--unknown-threshold", help="Likelihood: 'unknown' when the best label's probability is below this.")] = None,
) -> None:
    """Annotate cells with a tuned model, by generation or by likelihood (accuracy and macro-F1 when labels exist),
    or predict perturbed cells from control cells (--task perturbation: the output holds the predicted cells)."""
    from rich.console import Console

    from c2t._atomic import write_text_atomic
    from c2t.generate import CELL_TASKS, predict, predict_cells
    from c2t.io import read_h5ad, write_h5ad

    try:
        adata = read_h5ad(data)
        settings = _sampling(sampling, batch_size=batch_size)
        options = {"backend": backend, "base_url": base_url, "served_model": served_model, "sampling": settings,
                   "backend_options": _backend_options(backend, device)}
        if task in CELL_TASKS:
            cells = predict_cells(model, adata, task=task, **options)
            write_h5ad(cells, out)
            result = {k: v for k, v in cells.uns["c2t_predict"].items() if k != "decode"}
            if report is not None:
                write_text_atomic(report, json.dumps(result, indent=2) + "\n")
            Console().print(f"[green]wrote[/] {out}: {result['n_cells']} predicted cells; gene overlap with the real "
                            f"perturbed cells {result['mean_overlap']:.3f} (unchanged control: "
                            f"{result['mean_control_overlap']:.3f})", highlight=False)
            return
        result = predict(model, adata, task=task, label_key=label_key, key_added=key_added, scoring=scoring,
                         score_by=score_by, unknown_threshold=unknown_threshold, **options)
        write_h5ad(adata, out)
        if report is not None:
            write_text_atomic(report, json.dumps(result, indent=2) + "\n")
    except (C2TInputError, ConnectionError, ImportError) as err:
        _fail(str(err))
        return
    line = f"[green]wrote[/] {out}: {result['n_cells']} cells ({result['scoring']}), {result['n_unknown']} unknown"
    if "accuracy" in result:
        line += f"; accuracy {result['accuracy']:.3f}, macro-F1 {result['macro_f1']:.3f} (n={result['n_scored']})"
    Console().print(line, highlight=False)


def embed_llm_command(
    model: Annotated[Path, typer.Option(help="A c2t run / merged model folder or a Hugging Face model folder.")],
    data: Annotated[Path, typer.Argument(help="Input .h5ad.")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Output .h5ad with the embedding in obsm.")],
    key_added: Annotated[str, typer.Option("--key-added")] = "X_c2t_llm",
    layer: Annotated[int, typer.Option(help="Hidden state to pool (-1: last layer).")] = -1,
    top_k: Annotated[int | None, typer.Option("--top-k", help="Genes per sentence (default: the run's).")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size")] = 16,
    device: Device = None,
) -> None:
    """Cell embeddings from a language model's hidden states (masked mean over each cell sentence's tokens)."""
    from rich.console import Console

    from c2t.generate import embed_hidden
    from c2t.io import read_h5ad, write_h5ad

    try:
        adata = read_h5ad(data)
        embed_hidden(model, adata, key_added=key_added, layer=layer, top_k=top_k, batch_size=batch_size, device=device)
        write_h5ad(adata, out)
    except C2TInputError as err:
        _fail(str(err))
        return
    Console().print(f"[green]wrote[/] {out}: obsm[{key_added!r}] {adata.obsm[key_added].shape}", highlight=False)


def annotate_clusters_command(
    data: Annotated[Path, typer.Argument(help="Input .h5ad.")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Output .h5ad with clusters and their labels in obs.")],
    base_url: Annotated[str, typer.Option("--base-url", help="OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1.")],
    served_model: Annotated[str, typer.Option("--served-model", help="Chat model name on the server.")],
    labels: Annotated[str | None, typer.Option(help="Candidate cell types, comma-separated (else free answers).")] = None,
    tissue: Annotated[str | None, typer.Option(help="Tissue named in the question, e.g. 'human blood'.")] = None,
    cluster_key: Annotated[str, typer.Option("--cluster-key", help="obs column of clusters (made by Leiden when absent).")] = "leiden",
    resolution: Annotated[float, typer.Option(help="Leiden resolution.")] = 1.0,
    n_markers: Annotated[int, typer.Option("--n-markers")] = 10,
    key_added: Annotated[str, typer.Option("--key-added")] = "c2t_scchat",
    log: Annotated[Path | None, typer.Option(help="JSON-lines log of every exchange (default: OUT with .scchat.jsonl).")] = None,
) -> None:
    """Name clusters from their marker genes with a chat model (scChat-style, no tuning)."""
    from rich.console import Console

    from c2t.generate import annotate_clusters
    from c2t.io import read_h5ad, write_h5ad

    log = log or out.with_suffix(".scchat.jsonl")
    try:
        adata = read_h5ad(data)
        result = annotate_clusters(adata, base_url=base_url, served_model=served_model, tissue=tissue,
                                   labels=[x.strip() for x in labels.split(",") if x.strip()] if labels else None,
                                   cluster_key=cluster_key, resolution=resolution, n_markers=n_markers,
                                   key_added=key_added, log=log)
        write_h5ad(adata, out)
    except (C2TInputError, ConnectionError) as err:
        _fail(str(err))
        return
    console = Console()
    for cluster, label in result.items():
        console.print(f"  cluster {cluster}: {label}", highlight=False)
    console.print(f"[green]wrote[/] {out} and the exchange log {log}", highlight=False)


def register(app: typer.Typer) -> None:
    """Attach these verbs to the main ``c2t`` app (``embed llm`` joins the ``embed`` group)."""
    from c2t._cli_embed import embed_app

    app.add_typer(generate_app, name="generate")
    app.command("predict")(predict_command)
    app.command("annotate-clusters")(annotate_clusters_command)
    embed_app.command("llm")(embed_llm_command)

"""CLI verbs around training: ``c2t merge`` (a LoRA run merged into a full model) and ``c2t projector fit`` /
``c2t projector predict`` (scInterpreter-style projector into a frozen LLM, see :mod:`c2t.train._projector`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from c2t._errors import C2TInputError


def _fail(message: str) -> None:
    from c2t.cli import _fail as fail

    fail(message)


def merge_command(
    run: Annotated[Path, typer.Argument(help="A finished LoRA training run folder (from `c2t train`).")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Output folder of the merged full model (new or empty, "
                                                           "or a merged model to replace).")],
) -> None:
    """Merge a training run's LoRA adapter into its base model and save a full model (with tokenizer and manifest)."""
    from rich.console import Console

    try:
        from c2t.train import merge, read_run

        folder = merge(run, out)
        manifest = read_run(folder)
    except C2TInputError as err:
        _fail(str(err))
        return
    except ImportError as err:
        _fail(str(err))
        return
    Console().print(f"[green]wrote[/] {folder}: {manifest.get('model_type')} model merged from {run} "
                    f"(base {manifest.get('base_model')})", highlight=False)


projector_app = typer.Typer(help="Gene text embeddings projected into a frozen LLM + a classification head "
                                 "(scInterpreter-style).", no_args_is_help=True)


@projector_app.command("fit")
def projector_fit_command(
    data: Annotated[Path, typer.Argument(help="Training cells (.h5ad; counts or log1p) with a label column in obs.")],
    gene_embeddings: Annotated[Path, typer.Option("--gene-embeddings", help="Gene embeddings folder (`c2t embed genes`).")],
    label_key: Annotated[str, typer.Option("--label-key", help="obs column with the labels (cell types).")],
    base_model: Annotated[Path, typer.Option("--base-model", help="Local decoder LLM folder (frozen; LLaMA family, GPT-2).")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Output folder (weights, gene vectors, classes, manifest).")],
    top_k: Annotated[int, typer.Option("--top-k", help="Genes per cell (soft tokens).")] = 32,
    pooling: Annotated[str, typer.Option(help="mean (over the cell's tokens) or last (the read-out token).")] = "mean",
    scale_by_expression: Annotated[bool, typer.Option("--scale-by-expression", help="Scale each gene token by its expression.")] = False,  # noqa: FBT002
    llm_layers: Annotated[int | None, typer.Option("--llm-layers", help="Use only the first N decoder layers.")] = None,
    hidden_dim: Annotated[int, typer.Option("--hidden-dim", help="Projector MLP hidden width.")] = 256,
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = 3,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Cells per step.")] = 32,
    learning_rate: Annotated[float, typer.Option("--learning-rate", help="AdamW learning rate.")] = 1e-3,
    seed: Annotated[int, typer.Option(help="Seed of the initialisation and the order.")] = 0,
) -> None:
    """Train a projector + head on labelled cells over a frozen LLM and save it."""
    from rich.console import Console

    try:
        from c2t.genes import GeneEmbeddings
        from c2t.io import read_h5ad
        from c2t.train import fit_projector

        if not data.is_file():
            _fail(f"{data}: no such file")
        genes = GeneEmbeddings.load(gene_embeddings)
        adata = read_h5ad(data)
        clf = fit_projector(adata, genes, label_key=label_key, base_model=base_model, top_k=top_k, pooling=pooling,
                            scale_by_expression=scale_by_expression, llm_layers=llm_layers, hidden_dim=hidden_dim,
                            epochs=epochs, batch_size=batch_size, learning_rate=learning_rate, seed=seed)
        clf.save(out)
    except (C2TInputError, ImportError) as err:
        _fail(str(err))
        return
    t = clf.manifest["training"]
    Console().print(f"[green]wrote[/] {out}: {len(clf.classes)} classes, {t['cells']} cells, {t['steps']} steps, "
                    f"loss {t['first_loss']:.4f} -> {t['last_loss']:.4f} ({t['seconds']:.0f} s)", highlight=False)


@projector_app.command("predict")
def projector_predict_command(
    data: Annotated[Path, typer.Argument(help="Cells to annotate (.h5ad).")],
    model: Annotated[Path, typer.Option("--model", help="Folder written by `c2t projector fit`.")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Output .h5ad (the input with the predictions added).")],
    key_added: Annotated[str, typer.Option("--key-added", help="obs key of the predicted label.")] = "c2t_projector",
    embed: Annotated[bool, typer.Option("--embed", help="Also write the pooled LLM states to obsm['X_<key-added>'].")] = False,  # noqa: FBT002
    base_model: Annotated[Path | None, typer.Option("--base-model", help="The frozen LLM, if it moved since training.")] = None,
) -> None:
    """Annotate cells with a trained projector: obs[KEY], obs[KEY_confidence], obsm[KEY_proba]."""
    from rich.console import Console

    try:
        from c2t.io import read_h5ad, write_h5ad
        from c2t.train import load_projector

        if not data.is_file():
            _fail(f"{data}: no such file")
        clf = load_projector(model, base_model=base_model)
        adata = read_h5ad(data)
        clf.predict(adata, key_added=key_added)
        if embed:
            clf.embed(adata, key_added=f"X_{key_added}")
        write_h5ad(adata, out)
    except (C2TInputError, ImportError) as err:
        _fail(str(err))
        return
    counts = adata.obs[key_added].value_counts()
    Console().print(f"[green]wrote[/] {out}: {adata.n_obs} cells; "
                    + ", ".join(f"{label} {n}" for label, n in counts.items() if n), highlight=False)


def register(app: typer.Typer) -> None:
    """Attach these verbs to the main ``c2t`` app."""
    app.command("merge")(merge_command)
    app.add_typer(projector_app, name="projector")

"""``c2t <verb>``: one library call per verb.

Heavy modules are imported inside the commands so that ``c2t --help`` stays instant.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from c2t._errors import C2TInputError

app = typer.Typer(
    help="c2t: let language models read and write single cells (cell sentences, instruction data, embeddings).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _fail(message: str) -> None:
    from rich.console import Console

    Console(stderr=True).print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=2)


def _parse_top_k(value: str) -> int | None:
    if value.strip().lower() in {"all", "full", "none"}:
        return None
    try:
        return int(value)
    except ValueError:
        _fail(f"--top-k must be a positive integer or 'all', not {value!r}")
    return None  # unreachable


def _split_keys(value: str | None) -> list[str]:
    return [k.strip() for k in value.split(",") if k.strip()] if value else []


def _progress(total: int, label: str):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TextColumn("cells"), TimeRemainingColumn(),
                   transient=True)
    task = bar.add_task(label, total=total)
    return bar, lambda done: bar.update(task, completed=done)


@app.command()
def version() -> None:
    """Print the c2t version."""
    from c2t._version import __version__

    typer.echo(__version__)


@app.command()
def sentences(
    input: Annotated[Path, typer.Argument(help="An .h5ad file (raw counts or log-normalised).")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Output folder (Parquet shards + manifest).")],
    top_k: Annotated[str, typer.Option("--top-k", help="Genes per cell, or 'all' for full sentences.")] = "100",
    layer: Annotated[str | None, typer.Option(help="Use this layer instead of X.")] = None,
    use_raw: Annotated[bool, typer.Option("--use-raw", help="Use raw.X instead of X.")] = False,
    gene_key: Annotated[str | None, typer.Option("--gene-key", help="var column with the gene names.")] = None,
    gene_map: Annotated[Path | None, typer.Option("--gene-map", help="CSV/TSV id,symbol table (e.g. Ensembl -> symbol).")] = None,
    on_duplicate: Annotated[str, typer.Option("--on-duplicate", help="Duplicated gene names: error, first or sum.")] = "error",
    obs_keys: Annotated[str | None, typer.Option("--obs-keys", help="Comma-separated obs columns to keep.")] = None,
    normalize: Annotated[str, typer.Option(help="auto (detect), counts or log1p.")] = "auto",
    seed: Annotated[int, typer.Option(help="Seed of the tie-break between equal values.")] = 0,
    chunk_size: Annotated[int, typer.Option("--chunk-size", help="Cells per chunk and per shard.")] = 10_000,
    workers: Annotated[int, typer.Option(help="Worker processes.")] = 1,
) -> None:
    """Convert an .h5ad file to cell sentences (streaming, resumable)."""
    import c2t.io
    from c2t.sentences import convert, load

    try:
        with c2t.io.open_source(input, layer=layer, use_raw=use_raw) as source:
            n_obs = source.n_obs
        bar, update = _progress(n_obs, "ranking")
        with bar:
            convert(
                input, out, top_k=_parse_top_k(top_k), layer=layer, use_raw=use_raw, gene_key=gene_key,
                gene_map=gene_map, on_duplicate=on_duplicate, obs_keys=_split_keys(obs_keys), normalize=normalize,
                seed=seed, chunk_size=chunk_size, workers=workers, progress=update,
            )
        manifest = load(out).manifest if n_obs <= 200_000 else None
    except C2TInputError as err:
        _fail(str(err))
        return
    _summary_sentences(out, manifest)


def _summary_sentences(out: Path, manifest: dict | None) -> None:
    import json

    from rich.console import Console

    if manifest is None:
        manifest = json.loads((out / "manifest.json").read_text())
    report, inverse = manifest["report"], manifest["inverse_model"]
    console = Console()
    console.print(
        f"[green]wrote[/] {out}: {manifest['n_cells']} cells, {manifest['n_genes']} genes, top_k={manifest['top_k']}, "
        f"input {manifest['normalization']['input']} ({manifest['normalization']['decided_by']})",
        highlight=False,
    )
    genes = report["genes"]
    console.print(
        f"  empty cells {report['n_empty_cells']}, mean expressed genes {report['mean_expressed_genes']}, "
        f"unmapped genes {genes['n_unmapped']}, duplicated gene columns {genes['n_duplicate_columns']}",
        highlight=False,
    )
    console.print(
        f"  inverse model R²: monotone {inverse['r2_monotone']:.3f}, log-linear (Cell2Sentence) {inverse['r2_linear']:.3f}",
        highlight=False,
    )


def _read_sentence_file(path: Path, column: str | None):
    """Texts (or a CellSentences-like table) from a .txt (one sentence per line) or .parquet file."""
    import pandas as pd

    if not path.is_file():
        _fail(f"{path}: no such file")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        names = table.column_names
        col = column or next((c for c in ("cell_sentence", "sentence", "text", "completion") if c in names), None)
        if col is None or col not in names:
            _fail(f"{path}: no text column {column or 'cell_sentence'!r}; columns are: {', '.join(names)}; pass --column")
        obs = table.drop_columns([c for c in names if c == col or c == "genes"]).to_pandas()
        if "cell_id" in obs:
            obs = obs.set_index("cell_id")
        return table[col], obs
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        _fail(f"{path}: not a UTF-8 text file; give a .txt (one sentence per line) or a .parquet file")
    return lines, pd.DataFrame(index=[f"cell_{i}" for i in range(len(lines))])


@app.command()
def decode(
    sentences_file: Annotated[Path, typer.Argument(help="Sentences: .txt (one per line) or .parquet (a text column).")],
    model: Annotated[Path, typer.Option("--model", help="A cell-sentences folder (its vocabulary and inverse model).")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Output .h5ad of decoded expression.")],
    column: Annotated[str | None, typer.Option(help="Text column of a .parquet input.")] = None,
    delimiter: Annotated[str, typer.Option(help="Gene separator; 'whitespace' for any whitespace.")] = " ",
) -> None:
    """Decode cell sentences (e.g. generated ones) into an expression AnnData."""
    from rich.console import Console

    from c2t.io import write_h5ad
    from c2t.sentences import decode as decode_sentences
    from c2t.sentences._decode import load_model

    try:
        load_model(model)  # check the model before reading the sentences
        texts, obs = _read_sentence_file(sentences_file, column)
        adata = decode_sentences(texts, model=model, obs=obs, delimiter=None if delimiter == "whitespace" else delimiter)
        write_h5ad(adata, out)
    except C2TInputError as err:
        _fail(str(err))
        return
    r = adata.uns["c2t_decode"]
    Console().print(
        f"[green]wrote[/] {out}: {r['n_cells']} cells x {adata.n_vars} genes; {r['n_genes_decoded']} genes decoded, "
        f"{r['n_unknown']} unknown and {r['n_duplicate']} duplicated tokens dropped, {r['n_empty_cells']} empty cells",
        highlight=False,
    )


@app.command()
def pretrain(
    config: Annotated[Path, typer.Argument(help="YAML file of settings (see c2t.plm.PretrainConfig): data, out, tokenizer, ...")],
    out: Annotated[Path | None, typer.Option("-o", "--out", help="Output folder (overrides out: in the YAML).")] = None,
) -> None:
    """Pre-train a small transformer encoder on your cells with one of the PLM tokenisations."""
    from rich.console import Console

    try:
        from c2t.plm import PretrainConfig
        from c2t.plm import pretrain as run_pretrain

        settings = PretrainConfig.from_yaml(config)
        if out is not None:
            settings.out = str(out)
        if not settings.out:
            _fail(f"{config}: no output folder; set out: in the YAML or pass -o")
        encoder = run_pretrain(config=settings)
    except C2TInputError as err:
        _fail(str(err))
        return
    except ImportError as err:
        _fail(f"{err}; install the PLM extra: pip install 'c2t[plm]' (and torch==2.13.0)")
        return
    r = encoder.report
    console = Console()
    console.print(f"[green]wrote[/] {settings.out}: {encoder!r}", highlight=False)
    genes = r.get("genes") or {}
    console.print(
        f"  {r['cells']} cells ({r['validation_rows']} held out), {r['steps']} steps in {r['train_s']} s; genes matched "
        f"{genes.get('n_matched')} of {genes.get('n_data_genes')}",
        highlight=False,
    )
    val = r.get("validation") or {}
    if "accuracy" in val:
        console.print(
            f"  {val['metric']}: {val['accuracy']:.3f} (most frequent token: {val['most_frequent_token_accuracy']:.3f})",
            highlight=False,
        )
    elif "r2" in val:
        console.print(f"  {val['metric']}: {val['r2']}", highlight=False)


@app.command()
def demo(
    out: Annotated[Path, typer.Option("-o", "--out", help="Folder for the demo outputs.")] = Path("demo_out"),
) -> None:
    """Run the main job on the bundled demo data (scanpy's pbmc68k_reduced, shipped offline)."""
    from c2t._demo import run_demo

    try:
        run_demo(out)
    except C2TInputError as err:
        _fail(str(err))


@app.command()
def instruct(
    source: Annotated[Path, typer.Argument(help="A config (.yaml) or an .h5ad file.")],
    out: Annotated[Path | None, typer.Option("-o", "--out", help="Output folder (default: the config's out).")] = None,
    tasks: Annotated[str | None, typer.Option(help="Comma-separated tasks, each optionally name:weight.")] = None,
    label_key: Annotated[str | None, typer.Option("--label-key", help="obs column of cell types.")] = None,
    top_k: Annotated[str | None, typer.Option("--top-k", help="Genes per cell, or 'all'.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of splits, templates, options and order.")] = None,
    split: Annotated[str | None, typer.Option(help="Train,validation,test fractions, e.g. 0.8,0.1,0.1.")] = None,
    stratify: Annotated[str | None, typer.Option(help="obs column to stratify by ('none': no stratification).")] = None,
    group: Annotated[str | None, typer.Option(help="obs column whose groups never straddle two splits.")] = None,
    where: Annotated[list[str] | None, typer.Option(help="Keep cells with obs COLUMN=VALUE (repeatable).")] = None,
    organism: Annotated[str | None, typer.Option(help="Organism named in the prompts.")] = None,
    drop_missing: Annotated[bool, typer.Option("--drop-missing", help="Leave out cells with missing labels or empty sentences.")] = False,
    formats: Annotated[str | None, typer.Option(help="prompt_completion and/or messages, comma-separated.")] = None,
    prompts_dir: Annotated[Path | None, typer.Option("--prompts-dir", help="Folder of prompt files.")] = None,
) -> None:
    """Build an instruction dataset (train/validation/test, prompt/completion and messages) with a manifest."""
    from rich.console import Console

    from c2t.instruct._build import build_with

    overrides: dict = {}
    if out is not None:
        overrides["out"] = out
    if tasks is not None:
        specs = []
        for item in _split_keys(tasks):
            name, _, weight = item.partition(":")
            try:
                specs.append({"task": name, "weight": float(weight)} if weight else name)
            except ValueError:
                _fail(f"--tasks: weight of {name!r} must be a number, not {weight!r}")
        overrides["tasks"] = specs
    if top_k is not None:
        overrides["top_k"] = _parse_top_k(top_k)
    if split is not None:
        try:
            overrides["split"] = [float(v) for v in split.split(",")]
        except ValueError:
            _fail(f"--split must be three comma-separated fractions, not {split!r}")
    if where:
        import yaml

        conditions = {}
        for item in where:
            column, sep, value = item.partition("=")
            if not sep or not column:
                _fail(f"--where must look like COLUMN=VALUE, not {item!r}")
            conditions[column] = yaml.safe_load(value) if value else value
        overrides["where"] = conditions
    if stratify is not None:
        overrides["stratify"] = None if stratify.lower() in ("none", "null") else stratify
    if formats is not None:
        overrides["formats"] = _split_keys(formats)
    if drop_missing:
        overrides["drop_missing"] = True
    for key, value in (("label_key", label_key), ("seed", seed), ("group", group), ("organism", organism),
                       ("prompts_dir", prompts_dir)):
        if value is not None:
            overrides[key] = value
    if source.suffix not in (".yaml", ".yml") and "tasks" not in overrides:
        _fail("give --tasks (e.g. --tasks cell_type,generation:0.5) or a config file")
    state: dict = {}

    def progress(done: int, total: int) -> None:
        if "bar" not in state:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            state["bar"] = Progress(TextColumn("writing"), BarColumn(), MofNCompleteColumn(), TextColumn("examples"),
                                    TimeRemainingColumn(), transient=True)
            state["task"] = state["bar"].add_task("writing", total=total)
            state["bar"].start()
        state["bar"].update(state["task"], completed=done)

    try:
        dsd = build_with(str(source), overrides, progress=progress)
    except C2TInputError as err:
        _fail(str(err))
        return
    finally:
        if "bar" in state:
            state["bar"].stop()
    from c2t.instruct import read_info

    target = Path(dsd["train"].cache_files[0]["filename"]).parents[1]
    manifest = read_info(target)
    sizes = " / ".join(f"{name} {n}" for name, n in manifest["splits"].items())
    Console().print(f"[green]wrote[/] {target}: {sum(manifest['splits'].values())} examples ({sizes}); "
                    f"{manifest['n_cells']} cells, top_k={manifest['top_k']}", highlight=False)
    for task in manifest["tasks"]:
        Console().print(f"  {task['task']}: {sum(task['examples'].values())} examples, "
                        f"{len(task['templates']['template_ids'])} templates", highlight=False)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def train(
    ctx: typer.Context,
    config: Annotated[Path | None, typer.Argument(help="Training config (.yaml); any field can be overridden: --lora-r 8.")] = None,
    fields: Annotated[bool, typer.Option("--fields", help="List the config fields (the flags) and exit.")] = False,
) -> None:
    """Instruction-tune a model on a c2t dataset (LoRA or full; GPT-2, LLaMA family, T5); resumes when rerun."""
    from c2t.train._config import TrainConfig, fields_help

    if fields:
        typer.echo(fields_help())
        return
    if config is None:
        _fail("give a training config (.yaml); `c2t train --fields` lists its fields")
        return
    try:
        cfg = TrainConfig.from_yaml(config, ctx.args)
        from c2t.train import read_run
        from c2t.train import train as run_training

        out = run_training(cfg)
        manifest = read_run(out)
    except C2TInputError as err:
        _fail(str(err))
        return
    from rich.console import Console

    t = manifest["training"]
    console = Console()
    console.print(f"[green]wrote[/] {out}: {manifest['artifact']} of {manifest['model_type']} ({manifest['trainer']}), "
                  f"{t['global_step']} steps, loss {t['first_loss']:.4f} -> {t['last_loss']:.4f}"
                  + (f", eval loss {t['eval_loss']:.4f}" if t["eval_loss"] is not None else ""), highlight=False)
    if manifest.get("gene_tokens"):
        g = manifest["gene_tokens"]
        console.print(f"  gene tokens: {g['added']} added; tokens per cell sentence {g['tokens_per_sentence']['without']:.1f}"
                      f" -> {g['tokens_per_sentence']['with']:.1f}", highlight=False)


from c2t._cli_embed import register as _register_embed  # noqa: E402 - verbs defined in their own module

_register_embed(app)
from c2t._cli_generate import register as _register_generate  # noqa: E402 - verbs defined in their own module

_register_generate(app)
from c2t._cli_train import register as _register_train  # noqa: E402 - verbs defined in their own module

_register_train(app)
from c2t._cli_bench import register as _register_bench  # noqa: E402 - verbs defined in their own module

_register_bench(app)


def main() -> None:
    """Entry point of the ``c2t`` console script."""
    try:
        app()
    except KeyboardInterrupt:
        sys.stderr.write("interrupted; rerun the same command to resume\n")
        sys.exit(130)


if __name__ == "__main__":
    main()

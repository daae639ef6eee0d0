"""CLI verb ``c2t bench``: every method side by side on the same datasets, splits, tasks and seeds."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from c2t._errors import C2TInputError


def bench_command(
    config: Annotated[Path, typer.Argument(help="Benchmark config (.yaml): datasets, methods, tasks, seeds.")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Output folder (results, summary, report.html, cache).")],
    quick: Annotated[bool, typer.Option("--quick", help="Subsample each dataset to quick_cells cells (default 1000).")] = False,  # noqa: FBT002
    seeds: Annotated[str | None, typer.Option(help="Comma-separated seeds (overrides the config).")] = None,
    no_report: Annotated[bool, typer.Option("--no-report", help="Write the tables only, no plots.")] = False,  # noqa: FBT002
) -> None:
    """Run a benchmark (resumes from OUT/cache when rerun) and write its tables and report."""
    from rich.console import Console

    from c2t.cli import _fail
    from c2t.eval import load_config, run_benchmark
    from c2t.eval._bench import summarize, summary_table

    console = Console(stderr=True)
    try:
        seed_list = [int(s) for s in seeds.split(",") if s.strip()] if seeds else None
    except ValueError:
        _fail(f"--seeds must be comma-separated integers, not {seeds!r}")
        return
    start = time.perf_counter()
    try:
        cfg = load_config(config)
        results = run_benchmark(cfg, out, quick=quick, seeds=seed_list, report=not no_report,
                                progress=lambda line: console.print(f"  {line}", highlight=False))
    except C2TInputError as err:
        _fail(str(err))
        return
    summary = summarize(results)
    printer = Console()
    for dataset in summary["dataset"].drop_duplicates():
        table = summary_table(summary, dataset)
        keep = [c for c in table.columns if c.startswith(("annotation:accuracy", "annotation:macro_f1", "novel_type",
                                                          "clustering:ari", "batch_mixing", "drug_response",
                                                          "generation")) or c == "mean rank"]
        typer.echo(f"{dataset}\n{table[keep].to_string()}")
    failed = results[results["status"] == "failed"]
    for row in failed.itertuples():
        printer.print(f"[red]failed[/] {row.dataset} / {row.method}: {str(row.error).splitlines()[-1]}", highlight=False)
    printer.print(f"[green]wrote[/] {out} ({len(results)} rows, {time.perf_counter() - start:.0f} s)", highlight=False)


def register(app: typer.Typer) -> None:
    """Attach ``c2t bench`` to the main ``c2t`` app."""
    app.command("bench")(bench_command)

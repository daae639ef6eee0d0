"""CLI verbs around training runs: ``c2t merge`` (a LoRA run merged into a full model)."""

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


def register(app: typer.Typer) -> None:
    """Attach these verbs to the main ``c2t`` app."""
    app.command("merge")(merge_command)

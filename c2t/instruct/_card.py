"""The dataset card (``README.md``) every build writes beside its data: what it holds and how to rebuild it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from c2t._atomic import write_text_atomic
from c2t._version import __version__


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _labels(counts: dict[str, int], limit: int = 12) -> str:
    shown = ", ".join(f"{k} {v}" for k, v in list(counts.items())[:limit])
    return shown + (f", ... ({len(counts)} labels)" if len(counts) > limit else "")


def card_text(manifest: dict[str, Any], out: Path) -> str:
    """Markdown for the dataset card of a build with this manifest, written to ``out``."""
    source = manifest.get("source") or {}
    splits = manifest["splits"]
    parts = [f"# {manifest['name']}", ""]
    if manifest.get("description"):
        parts += [manifest["description"].strip(), ""]
    parts += [
        "An instruction dataset of cell sentences built by `c2t instruct` (c2t "
        f"{__version__}). Full builds are outputs, not committed: this folder keeps this card, "
        "`config.yaml` and a few records per task in `examples.jsonl`.",
        "",
        "## Rebuild",
        "",
        "```bash",
        f"c2t instruct {out.as_posix()}/config.yaml -o {out.as_posix()}",
        "```",
        "",
        *([] if source.get("path") else ["Built from an in-memory object: set `data:` in `config.yaml` to an `.h5ad` path first.", ""]),
        "## Source",
        "",
        f"- data: `{source.get('path') or 'in-memory AnnData'}` ({source.get('n_obs', '?')} cells x "
        f"{source.get('n_vars', '?')} genes), sha256 `{source.get('sha256') or '-'}`",
        f"- cells used: {manifest['n_cells']}" + (f" (where {manifest['where']}; {manifest['n_cells_filtered_out']} "
                                                  "left out)" if manifest.get("where") else ""),
        f"- cell sentences: top {manifest['top_k']} genes, {manifest['n_genes']} genes in the vocabulary "
        f"(`vocabulary.txt`, hash `{manifest['vocabulary_hash']}`), seed {manifest['seed']}",
    ]
    if manifest.get("license"):
        parts.append(f"- licence: {manifest['license']}")
    parts += ["", "## Splits", ""]
    split = manifest["split"]
    how = f"stratified by `{split['stratify']}`" if split["stratify"] else "not stratified"
    if split["group"]:
        how += f", grouped by `{split['group']}` (no group in two splits)"
    parts += [
        f"Cells are split ({how}); every example of a cell lies in that cell's split.",
        "",
        _table(["split", "cells", "examples"],
               [[name, split["n_cells"][name], splits[name]] for name in ("train", "validation", "test")]),
        "",
        "## Tasks",
        "",
        _table(
            ["task", "what", "templates", "examples (train / validation / test)", "parameters"],
            [[t["task"], t["summary"], len(t["templates"]["template_ids"]),
              " / ".join(str(t["examples"][s]) for s in ("train", "validation", "test")),
              ", ".join(f"{k}={v}" for k, v in t["params"].items() if v is not None)] for t in manifest["tasks"]],
        ),
        "",
    ]
    for t in manifest["tasks"]:
        if "label_counts" in t:
            parts.append(f"- {t['task']} labels (train): {_labels(t['label_counts']['train'])}")
    parts += [
        "",
        "## Records",
        "",
        "Each record has both standard formats TRL reads: `prompt` / `completion` (strings) and `messages` "
        "(a user and an assistant turn with the same texts); keep one before training "
        "(`c2t.instruct.select_format(dsd, \"messages\")`), as TRL picks its format from the columns present. "
        "Also: `task`, `template_id` (prompt file and template in `manifest.json`), `cell_id`, `label`, "
        "`label_key`, `control_cell_id` (perturbation). Score answers with `c2t.instruct.score`.",
        "",
        "```python",
        "import c2t.instruct",
        f"dsd = c2t.instruct.load(\"{out.as_posix()}\")",
        "```",
        "",
    ]
    return "\n".join(parts)


def write_card(folder: Path, manifest: dict[str, Any], out: Path) -> None:
    write_text_atomic(Path(folder) / "README.md", card_text(manifest, out))

"""Manifests: the small JSON file every c2t output folder carries.

A manifest records what produced an artifact (c2t version, source file hash, gene vocabulary hash,
normalisation, parameters) so that loading can refuse a mismatch and say what differs.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from c2t._atomic import write_text_atomic
from c2t._errors import C2TInputError
from c2t._version import __version__

MANIFEST_NAME = "manifest.json"


def vocabulary_hash(vocabulary: Sequence[str]) -> str:
    """Return a short, order-sensitive hash of a gene vocabulary.

    Examples
    --------
    >>> vocabulary_hash(["CD3D", "MS4A1"]) == vocabulary_hash(["CD3D", "MS4A1"])
    True
    >>> vocabulary_hash(["CD3D", "MS4A1"]) == vocabulary_hash(["MS4A1", "CD3D"])
    False
    """
    # one update of the joined names, each ending in a newline: the same bytes (so the same digest) as one
    # update per name, several times faster
    text = "\n".join(map(str, vocabulary)) + "\n" if len(vocabulary) else ""
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def file_hash(path: str | os.PathLike, chunk_bytes: int = 1 << 22) -> str:
    """Return the sha256 of a file's bytes (streamed, constant memory)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk_bytes):
            h.update(block)
    return "sha256:" + h.hexdigest()


def write_manifest(folder: str | os.PathLike, manifest: dict[str, Any]) -> None:
    """Write ``manifest.json`` in ``folder`` atomically, stamping the c2t version."""
    manifest = {"c2t_version": __version__, **manifest}
    write_text_atomic(Path(folder) / MANIFEST_NAME, json.dumps(manifest, indent=2, sort_keys=False) + "\n")


def read_manifest(folder: str | os.PathLike, *, kind: str) -> dict[str, Any]:
    """Read and check the manifest of a c2t output folder of the given ``kind``."""
    path = Path(folder) / MANIFEST_NAME
    if not Path(folder).is_dir():
        msg = f"{folder}: no such folder"
        raise C2TInputError(msg)
    if not path.is_file():
        msg = f"{folder}: no {MANIFEST_NAME}; not a finished c2t output (an interrupted run resumes when rerun)"
        raise C2TInputError(msg)
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        msg = f"{path}: not valid JSON ({err})"
        raise C2TInputError(msg) from None
    if manifest.get("kind") != kind:
        msg = f"{folder}: holds a {manifest.get('kind')!r} artifact, expected {kind!r}"
        raise C2TInputError(msg)
    return manifest


def diff_fields(expected: dict[str, Any], found: dict[str, Any], fields: Sequence[str]) -> list[str]:
    """Describe each of ``fields`` whose value differs between two manifests.

    Examples
    --------
    >>> diff_fields({"top_k": 100, "seed": 0}, {"top_k": 50, "seed": 0}, ["top_k", "seed"])
    ['top_k: expected 100, found 50']
    """
    return [
        f"{field}: expected {expected.get(field)!r}, found {found.get(field)!r}"
        for field in fields
        if expected.get(field) != found.get(field)
    ]

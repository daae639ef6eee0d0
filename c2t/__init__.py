"""c2t: let language models read and write single cells.

Submodules load on first use so that ``import c2t`` stays light (no numba, torch or transformers).

>>> import c2t
>>> c2t.__version__ == c2t._version.__version__
True
"""

from __future__ import annotations

import importlib

from c2t._errors import C2TInputError
from c2t._version import __version__

_SUBMODULES = {"embed", "eval", "generate", "genes", "heads", "instruct", "io", "models", "plm", "sentences", "servers", "train"}

__all__ = ["C2TInputError", "__version__", *sorted(_SUBMODULES)]


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f"c2t.{name}")
    msg = f"module 'c2t' has no attribute {name!r}"
    raise AttributeError(msg)

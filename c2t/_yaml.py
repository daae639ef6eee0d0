"""Reading a YAML file that must hold a mapping (every config file c2t reads), with errors naming the file."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from c2t._errors import C2TInputError


def read_yaml_mapping(path: str | os.PathLike, *, missing: str = "config file",
                      shape: str = "a config must be a mapping") -> dict[str, Any]:
    """The mapping in YAML file ``path`` (an empty file reads as ``{}``).

    Parameters
    ----------
    path
        The file.
    missing
        What the file is, for the error when it does not exist: ``"<path>: no such <missing>"``.
    shape
        The error when the file holds something else than a mapping: ``"<path>: <shape>"``.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> f = pathlib.Path(tempfile.mkdtemp()) / "c.yaml"
    >>> _ = f.write_text("seed: 3\\n")
    >>> read_yaml_mapping(f)
    {'seed': 3}
    >>> _ = f.write_text("- 1\\n")
    >>> read_yaml_mapping(f, shape="a sampling config is a mapping of settings")
    Traceback (most recent call last):
    ...
    c2t._errors.C2TInputError: .../c.yaml: a sampling config is a mapping of settings
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        msg = f"{path}: no such {missing}"
        raise C2TInputError(msg)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        msg = f"{path}: not valid YAML ({' '.join(str(err).split())})"
        raise C2TInputError(msg) from None
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        msg = f"{path}: {shape}"
        raise C2TInputError(msg)
    return dict(data)

"""Atomic writes: a crash leaves the old output or nothing, never half a file."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> with atomic_path(d / "a.txt") as tmp:
    ...     _ = tmp.write_text("hello")
    >>> (d / "a.txt").read_text()
    'hello'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; outputs should follow the umask like any other
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def replace_dir(staging: Path, target: Path) -> None:
    """Move a finished ``staging`` folder onto ``target``, replacing an old ``target`` only at the end."""
    target = Path(target)
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
    os.replace(staging, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def staged_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty hidden folder beside ``path`` to write a whole output folder into.

    When the block succeeds the folder replaces ``path`` (:func:`replace_dir`); when it raises, the folder
    is removed and ``path`` is left as it was.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> with staged_dir(d / "out") as staging:
    ...     _ = (staging / "a.txt").write_text("hello")
    >>> sorted(p.name for p in d.iterdir()), (d / "out" / "a.txt").read_text()
    (['out'], 'hello')

    A crash inside the block leaves the old folder untouched and no staging folder behind:

    >>> try:
    ...     with staged_dir(d / "out") as staging:
    ...         _ = (staging / "b.txt").write_text("half")
    ...         raise RuntimeError("crash")
    ... except RuntimeError:
    ...     pass
    >>> sorted(p.name for p in d.iterdir()), sorted(p.name for p in (d / "out").iterdir())
    (['out'], ['a.txt'])
    """
    path = Path(path)
    staging = path.with_name(f".{path.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    replace_dir(staging, path)

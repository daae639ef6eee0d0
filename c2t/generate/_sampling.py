"""Sampling settings shared by every backend, loadable from YAML, and the per-request seeds derived from them.

Examples
--------
>>> s = Sampling.from_mapping({"temperature": 0.7, "max_new_tokens": 64})
>>> s.greedy, s.max_new_tokens
(False, 64)
>>> Sampling(temperature=0).greedy
True
>>> request_seed(0, 1) != request_seed(0, 2)
True
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from c2t._errors import C2TInputError
from c2t._yaml import read_yaml_mapping


@dataclass(frozen=True)
class Sampling:
    """How to sample completions. The same settings and seed give the same outputs within a backend.

    Parameters
    ----------
    temperature
        Softmax temperature; ``0`` means greedy decoding (used for annotation).
    top_p
        Nucleus sampling mass (``1.0``: off).
    top_k
        Sample among the ``top_k`` most likely tokens (``0``: off).
    max_new_tokens
        Tokens generated at most per completion.
    repetition_penalty
        ``1.0``: off; above 1 discourages repeating a token (genes in a cell sentence should not repeat).
    seed
        Seeds every request (each request gets its own seed derived from this one and its position).
    batch_size
        Prompts per forward batch (transformers) or requests in flight (OpenAI-compatible server).
    """

    temperature: float = field(default=1.0, metadata={"help": "softmax temperature; 0 = greedy"})
    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling mass (1.0 = off)"})
    top_k: int = field(default=0, metadata={"help": "sample among the top-k tokens (0 = off)"})
    max_new_tokens: int = field(default=256, metadata={"help": "tokens generated at most per completion"})
    repetition_penalty: float = field(default=1.0, metadata={"help": "1.0 = off"})
    seed: int = field(default=0, metadata={"help": "seed of every request"})
    batch_size: int = field(default=32, metadata={"help": "prompts per batch / requests in flight"})

    def __post_init__(self) -> None:
        checks = [
            (self.temperature >= 0, "temperature must be >= 0"),
            (0 < self.top_p <= 1, "top_p must be in (0, 1]"),
            (isinstance(self.top_k, int) and self.top_k >= 0, "top_k must be an integer >= 0"),
            (isinstance(self.max_new_tokens, int) and self.max_new_tokens >= 1, "max_new_tokens must be an integer >= 1"),
            (self.repetition_penalty > 0, "repetition_penalty must be > 0"),
            (isinstance(self.seed, int) and self.seed >= 0, "seed must be an integer >= 0"),
            (isinstance(self.batch_size, int) and self.batch_size >= 1, "batch_size must be an integer >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise C2TInputError(message)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def replace(self, **changes: Any) -> Sampling:
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> Sampling:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            msg = f"unknown sampling setting(s) {', '.join(unknown)}; settings are: {', '.join(sorted(known))}"
            raise C2TInputError(msg)
        return cls(**dict(values))

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> Sampling:
        """Read settings from a YAML file (a mapping, or a mapping with a ``sampling:`` section)."""
        data = read_yaml_mapping(path, missing="sampling config file", shape="a sampling config is a mapping of settings")
        return cls.from_mapping(data.get("sampling", data))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def as_sampling(sampling: Sampling | Mapping[str, Any] | None, **defaults: Any) -> Sampling:
    """``sampling`` as :class:`Sampling`: a mapping fills in over ``defaults`` (a task's own defaults, e.g. greedy
    for annotation); a :class:`Sampling` is taken as it is.

    Examples
    --------
    >>> as_sampling({"batch_size": 8}, temperature=0.0).greedy, as_sampling(None, temperature=0.0).batch_size
    (True, 32)
    """
    if isinstance(sampling, Sampling):
        return sampling
    return Sampling.from_mapping({**defaults, **dict(sampling or {})})


def request_seed(seed: int, index: int) -> int:
    """A 31-bit seed for request ``index`` of a run seeded with ``seed`` (independent of batching)."""
    digest = hashlib.blake2b(f"{seed}:{index}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "little") & 0x7FFFFFFF

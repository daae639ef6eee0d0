"""Gene descriptions written by a language model through any OpenAI-compatible chat endpoint (scELMo's recipe).

Answers are cached on disk, one JSON line per gene, keyed by (model, prompt hash): a rerun asks only for the
genes still missing, and a line cut short by a crash is ignored on reading.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd

from c2t._errors import C2TInputError, call_openai
from c2t.genes._encoders import openai_client

__all__ = ["DEFAULT_GENE_PROMPT", "describe_genes_with_llm"]

DEFAULT_GENE_PROMPT = (
    "In one paragraph, describe the human gene {gene}: the main function of the protein or RNA it encodes, "
    "the pathways and cellular processes it takes part in, and the cell types where it is characteristically "
    "expressed. Do not use lists."
)


def _cache_file(cache_dir: Path, model: str, prompt: str, base_url: str | None) -> Path:
    key = hashlib.sha256(json.dumps([model, prompt]).encode()).hexdigest()[:16]
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", model)[:40]
    return cache_dir / f"llm-descriptions-{slug}-{key}.jsonl"


def _read_cache(file: Path) -> dict[str, str]:
    answers: dict[str, str] = {}
    if file.is_file():
        for line in file.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a crash
            answers[record["gene"]] = record["text"]
    return answers


def describe_genes_with_llm(
    genes: Sequence[str],
    *,
    model: str,
    base_url: str | None = None,
    api_key_env: str = "OPENAI_API_KEY",
    cache_dir: str | os.PathLike = ".c2t_cache",
    prompt: str = DEFAULT_GENE_PROMPT,
    concurrency: int = 4,
    max_retries: int = 3,
    max_tokens: int = 256,
    temperature: float = 0.0,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
) -> pd.DataFrame:
    """Ask a chat model for one paragraph per gene; cached, resumable, with retries and a concurrency limit.

    Parameters
    ----------
    genes
        Gene symbols.
    model, base_url, api_key_env
        The chat model, the server (e.g. ``http://127.0.0.1:8000/v1`` for vLLM) and the variable holding
        the key (never logged).
    cache_dir
        Folder of the answer cache (one file per model and prompt).
    prompt
        Must contain ``{gene}``.
    concurrency
        Requests in flight at once.

    Returns
    -------
    pandas.DataFrame
        Columns ``gene`` and ``text``; ``attrs`` records model, prompt hash and cache file.
    """
    if "{gene}" not in prompt:
        msg = "the gene prompt must contain the placeholder {gene}"
        raise C2TInputError(msg)
    if concurrency < 1:
        msg = f"concurrency must be at least 1, not {concurrency}"
        raise C2TInputError(msg)
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    file = _cache_file(cache_dir, model, prompt, base_url)
    answers = _read_cache(file)
    todo = [g for g in dict.fromkeys(map(str, genes)) if g not in answers]
    if todo:
        client = openai_client(base_url=base_url, api_key_env=api_key_env, max_retries=max_retries)

        def ask(gene: str) -> tuple[str, str]:
            response = call_openai(
                lambda: client.chat.completions.create(
                    model=model, messages=[{"role": "user", "content": prompt.format(gene=gene)}],
                    max_tokens=max_tokens, temperature=temperature, seed=seed,
                ),
                base_url=base_url, max_retries=max_retries, model=model,
            )
            return gene, (response.choices[0].message.content or "").strip()

        with ThreadPoolExecutor(concurrency) as pool, open(file, "a", encoding="utf-8") as cache:
            for done, (gene, text) in enumerate(pool.map(ask, todo), start=1):
                answers[gene] = text
                cache.write(json.dumps({"gene": gene, "text": text}) + "\n")
                cache.flush()
                if progress:
                    progress(done)
    out = pd.DataFrame({"gene": list(map(str, genes))})
    out["text"] = out["gene"].map(answers).fillna("")
    out.attrs.update({"model": model, "prompt_sha256": hashlib.sha256(prompt.encode()).hexdigest()[:16],
                      "cache": str(file), "source": f"llm:{model}"})
    return out

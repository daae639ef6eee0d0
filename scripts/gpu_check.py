"""The language-model path on one GPU, in one run: padding-free attention, training throughput, the recipe sweep
(held-out annotation by likelihood and generation vs PCA + kNN), generation throughput, and FSDP / DDP launches.

Every step runs in its own process under its own time limit (and within the whole run's ``--budget``), so one slow
or failing step cannot take the others with it. The figures go to ``OUT/gpu_check.json`` after every step and the
steps' output to ``OUT/gpu_check.log`` (two files: the device machine returns at most eight). ``--cpu`` runs the
same steps with tiny models on a few hundred cells (a smoke test the test suite runs; FSDP is skipped there, since
accelerate refuses it without an accelerator).

    bash scripts/gpu_check.sh                 # on the GPU machine, after ../shared/gpu/ set it up (~9 min)
    bash scripts/gpu_check.sh --cpu           # anywhere, ~3 min on 2 cores
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"
LORA_CONFIG = SCRIPTS / "configs" / "smollm2_lora.yaml"


def data_dir() -> Path:
    return Path(os.environ.get("C2T_DATA", ROOT.parent / "shared" / "data"))


# ----------------------------------------------------------------------------------------------- in-process steps
def step_env(ctx: dict) -> dict:
    """The machine, and its measured dense matrix-multiply rate (bf16 on a GPU, float32 on the CPU)."""
    import platform

    import torch

    gpu = torch.cuda.is_available()
    device, dtype, n = ("cuda", torch.bfloat16, 8192) if gpu else ("cpu", torch.float32, 1024)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(6):
        if gpu:
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(10):
            a @ b
        if gpu:
            torch.cuda.synchronize()
        best = min(best, (time.perf_counter() - start) / 10)
    import transformers
    import trl

    return {"device": torch.cuda.get_device_name() if gpu else f"cpu x{torch.get_num_threads()}",
            "python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "transformers": transformers.__version__, "trl": trl.__version__,
            "matmul_tflops": round(2 * n**3 / best / 1e12, 2), "matmul_dtype": str(dtype).replace("torch.", "")}


def step_data(ctx: dict) -> dict:
    """The instruction datasets the later steps share, and (``--cpu``) a tiny LLaMA standing in for SmolLM2."""
    from c2t.instruct import build, load
    from c2t.io import read_h5ad

    adata = read_h5ad(data_dir() / "pbmc3k_raw_seurat_labels.h5ad")
    adata = adata[adata.obs["seurat_celltype"].notna().to_numpy()].copy()
    if ctx["cpu"]:
        adata = adata[::4].copy()
    work = Path(ctx["work"])
    ds = work / "pbmc3k_top20_gen"
    if not (ds / "manifest.json").is_file():
        build(adata, out=ds, tasks=["cell_type", "generation"], top_k=20, label_key="seurat_celltype",
              drop_missing=True, seed=0)
    out = {"dataset": str(ds), "records": {k: v.num_rows for k, v in load(ds).items()}}
    if ctx["cpu"]:
        out["model"] = str(_tiny_llama(work / "tiny_llama", ds))
    return out


def _tiny_llama(folder: Path, dataset: Path) -> Path:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from c2t.instruct import load
    from c2t.models import smollm2_hf

    if (folder / "config.json").is_file():
        return folder
    dsd = load(dataset)
    texts = [t for r in dsd["train"] for t in (r["prompt"], r["completion"])]
    tok = AutoTokenizer.from_pretrained(smollm2_hf()).train_new_from_iterator(texts, vocab_size=1024)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=1024, tie_word_embeddings=True,
        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id))
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def step_varlen(ctx: dict) -> dict:
    """Padding-free attention on this device: the packed row's logits against each record alone, and the time of a
    forward + backward pass over the same records packed (varlen) and padded (sdpa)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from c2t.instruct import load
    from c2t.train._varlen import cuda_varlen_available, register

    model_path = ctx["model"]
    gpu = torch.cuda.is_available()
    device, dtype = ("cuda", torch.bfloat16) if gpu else ("cpu", torch.float32)
    tok = AutoTokenizer.from_pretrained(model_path)
    prompts = load(ctx["dataset"])["train"]["prompt"][:16 if ctx["cpu"] else 64]
    ids = [tok(p)["input_ids"] for p in prompts]
    packed = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype, attn_implementation=register()).to(device)
    plain = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype, attn_implementation="sdpa").to(device)
    row = torch.tensor([[t for x in ids[:8] for t in x]], device=device)
    positions = torch.cat([torch.arange(len(x)) for x in ids[:8]])[None].to(device)
    bounds = torch.tensor([0, *torch.tensor([len(x) for x in ids[:8]]).cumsum(0).tolist()], dtype=torch.int32)
    with torch.inference_mode():
        logits = packed(input_ids=row, position_ids=positions, cu_seq_lens_q=bounds.to(device),
                        cu_seq_lens_k=bounds.to(device), max_length_q=int(bounds.diff().max()),
                        max_length_k=int(bounds.diff().max())).logits[0].float()
        worst = 0.0
        for i in range(8):
            own = plain(input_ids=torch.tensor([ids[i]], device=device)).logits[0].float()
            worst = max(worst, float((logits[bounds[i]:bounds[i + 1]] - own).abs().max()))
    scale = float(logits.abs().max())

    def timed(fn, repeats=5):
        fn()
        if gpu:
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        if gpu:
            torch.cuda.synchronize()
        return (time.perf_counter() - start) / repeats

    n_tokens = sum(len(x) for x in ids)
    all_pos = torch.cat([torch.arange(len(x)) for x in ids])[None].to(device)
    all_bounds = torch.tensor([0, *torch.tensor([len(x) for x in ids]).cumsum(0).tolist()], dtype=torch.int32,
                              device=device)
    longest = max(len(x) for x in ids)
    padded = torch.full((len(ids), longest), tok.pad_token_id or 0, device=device)
    mask = torch.zeros_like(padded)
    for i, x in enumerate(ids):
        padded[i, :len(x)] = torch.tensor(x)
        mask[i, :len(x)] = 1
    flat = torch.tensor([[t for x in ids for t in x]], device=device)

    def packed_step():
        packed(input_ids=flat, position_ids=all_pos, cu_seq_lens_q=all_bounds, cu_seq_lens_k=all_bounds,
               max_length_q=longest, max_length_k=longest).logits.float().mean().backward()

    def padded_step():
        plain(input_ids=padded, attention_mask=mask).logits.float().mean().backward()

    return {"cuda_varlen_kernel": cuda_varlen_available(), "records": len(ids), "tokens": n_tokens,
            "max_abs_logit_difference": round(worst, 5), "max_abs_logit": round(scale, 2),
            "packed_varlen_fwd_bwd_ms": round(1000 * timed(packed_step), 2),
            "padded_sdpa_fwd_bwd_ms": round(1000 * timed(padded_step), 2)}


def step_gen_run(ctx: dict) -> dict:
    """A run that can generate cells (top-20 sentences, annotation + generation), for the generation benchmark."""
    import c2t.train

    run = Path(ctx["work"]) / "gen_run"
    cfg = {"dataset": ctx["dataset"], "base_model": ctx["model"], "output_dir": str(run), "format": "messages",
           "method": "lora", "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                "down_proj"],
           "learning_rate": 1e-3, "num_train_epochs": 1 if not ctx["cpu"] else 0.5, "max_tokens_per_batch": 16384,
           "per_device_train_batch_size": 256, "eval_split": None, "save_steps": 100_000,
           "logging_steps": 2 if ctx["cpu"] else 10,
           "lr_scheduler_type": "cosine", "warmup_steps": 0.05}
    start = time.perf_counter()
    c2t.train.train(cfg)
    manifest = c2t.train.read_run(run)
    return {"run": str(run), "seconds": round(time.perf_counter() - start, 1),
            "steps": manifest["training"]["global_step"], "last_loss": manifest["training"]["last_loss"],
            "runtime": manifest["runtime"]}


def step_pack(ctx: dict) -> dict:
    """The sweep's best LoRA run, its adapter in bfloat16, as ``OUT/best_run.tar.gz`` (at most 15 MiB): the device
    machine keeps nothing, and the run is re-scored and benchmarked on the CPU from this."""
    import tarfile

    import torch
    from safetensors.torch import load_file, save_file

    sweep = json.loads((Path(ctx["work"]) / "sweep.json").read_text())
    runs = Path(ctx["work"]) / "sweep"
    scored = {name: max(v.get("likelihood", {}).get("accuracy", 0), v.get("generate", {}).get("accuracy", 0))
              for name, v in sweep["variants"].items()
              if "error" not in v and "skipped" not in v and (runs / f"run_{name}" / "adapter_model.safetensors").is_file()}
    if not scored:
        return {"packed": None, "reason": "no LoRA variant finished"}
    best = max(scored, key=scored.get)
    run = runs / f"run_{best}"
    staging = Path(ctx["work"]) / "pack" / best
    staging.mkdir(parents=True, exist_ok=True)
    for file in run.iterdir():
        keep = file.suffix in (".json", ".yaml", ".txt", ".jinja", ".csv", ".png") or file.name.startswith("tokenizer")
        if file.is_file() and keep:
            (staging / file.name).write_bytes(file.read_bytes())
    weights = load_file(run / "adapter_model.safetensors")
    save_file({k: v.to(torch.bfloat16) for k, v in weights.items()}, staging / "adapter_model.safetensors")
    archive = Path(ctx["out"]) / "best_run.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(staging, arcname=best)
    size = archive.stat().st_size
    if size > 15 * 2**20:
        archive.unlink()
        return {"packed": None, "variant": best, "reason": f"{size / 2**20:.1f} MiB is over the 15 MiB a file may bring back"}
    return {"packed": archive.name, "variant": best, "accuracy": scored[best], "mib": round(size / 2**20, 2)}


STEP_FUNCTIONS = {"env": step_env, "data": step_data, "varlen": step_varlen, "gen_run": step_gen_run,
                  "pack": step_pack}


# ----------------------------------------------------------------------------------------------- the driver
def _read_run(folder: Path) -> dict:
    """What a launched training run left: its manifest's step count, losses and runtime, or that it has none."""
    manifest = folder / "manifest.json"
    if not manifest.is_file():
        return {"finished": False}
    data = json.loads(manifest.read_text())
    return {"finished": True, "global_step": data["training"]["global_step"], "first_loss": data["training"]["first_loss"],
            "last_loss": data["training"]["last_loss"], "runtime": data.get("runtime")}


class Driver:
    def __init__(self, args) -> None:
        self.args = args
        self.out = args.out
        self.out.mkdir(parents=True, exist_ok=True)
        self.log = self.out / "gpu_check.log"
        self.log.write_text("")
        self.work = args.work
        self.work.mkdir(parents=True, exist_ok=True)
        self.deadline = time.monotonic() + args.budget
        self.results = {"mode": "cpu" if args.cpu else "gpu", "budget_s": args.budget, "steps": {}}
        self.ctx = {"cpu": args.cpu, "work": str(self.work), "out": str(self.out)}

    def save(self) -> None:
        tmp = self.out / ".gpu_check.json.tmp"
        tmp.write_text(json.dumps(self.results, indent=2) + "\n")
        tmp.replace(self.out / "gpu_check.json")

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def _command(self, name: str, cmd: list[str] | None) -> list[str]:
        if cmd is not None:
            return cmd
        return [sys.executable, __file__, "--step", name, "--ctx", json.dumps(self.ctx),
                "--step-out", str(self.work / f"{name}.json")]

    def start(self, name: str, cmd: list[str] | None = None, *, env: dict | None = None):
        handle = open(self.log, "a")  # noqa: SIM115 (closed in finish)
        handle.write(f"\n===== {name}: {' '.join(self._command(name, cmd))}\n")
        handle.flush()
        process = subprocess.Popen(self._command(name, cmd), stdout=handle, stderr=subprocess.STDOUT, cwd=ROOT,
                                   env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}, start_new_session=True)
        return process, handle, time.monotonic()

    def finish(self, name: str, started, limit: float, result_file: Path | None = None, post=None) -> dict:
        process, handle, t0 = started
        try:
            rc = process.wait(timeout=max(1.0, limit - (time.monotonic() - t0)))
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)
            process.wait()
            rc = "timeout"
        handle.close()
        entry = {"rc": rc, "seconds": round(time.monotonic() - t0, 1)}
        file = result_file or self.work / f"{name}.json"
        if file.is_file():
            entry["result"] = json.loads(file.read_text())
        if post is not None:
            entry["result"] = {**entry.get("result", {}), **post()}
        self.results["steps"][name] = entry
        self.save()
        print(f"{name}: {json.dumps({k: v for k, v in entry.items() if k != 'result'})}", flush=True)
        return entry

    def run(self, name: str, cap: float, cmd: list[str] | None = None, **kw) -> dict | None:
        limit = min(cap, self.left())
        if limit < 15:
            self.results["steps"][name] = {"skipped": "no time left in the budget"}
            self.save()
            return None
        return self.finish(name, self.start(name, cmd), limit, **kw)


def drive(args) -> None:
    d = Driver(args)
    py = sys.executable
    cpu = args.cpu
    d.run("env", 60)
    data = d.run("data", 120)
    if not data or data["rc"] != 0:
        print(f"the data step failed; see {d.log}")
        return
    d.ctx.update(dataset=data["result"]["dataset"])
    if cpu:
        d.ctx["model"] = data["result"]["model"]
    else:
        from c2t.models import smollm2_hf

        d.ctx["model"] = str(smollm2_hf())
    d.run("varlen", 90)
    train_cmd = [py, str(SCRIPTS / "bench_train.py"), "--out", str(d.work / "train_speed.json")]
    train_cmd += ["--steps", "4", "--cells", "300", "--batch", "4", "--batch-tokens", "512", "--variants",
                  "c2t_lora,c2t_lora_token_budget"] if cpu else [
        "--base", d.ctx["model"], "--steps", "40", "--batch", "16", "--cells", "800", "--top-k", "100",
        "--batch-tokens", "32768", "--variants", "c2t_lora_float32_padded,c2t_lora_token_budget,c2t_full_token_budget"]
    d.run("train_speed", 180, train_cmd, result_file=d.work / "train_speed.json")
    # FSDP and DDP launches only need to show that they train: they share the GPU with the sweep
    launches = {}
    base_flags = ["--dataset", d.ctx["dataset"], "--base-model", d.ctx["model"], "--max-steps", "10", "--eval-split",
                  "null", "--save-steps", "1000", "--logging-steps", "2", "--max-length", "1024"]
    accelerate = [py, "-m", "accelerate.commands.launch", "--num_processes", "1", "--config_file"]
    for name, config in (("fsdp", "fsdp.yaml"), ("ddp", "ddp.yaml")):
        folder = d.work / f"{name}_run"
        if cpu and name == "fsdp":
            d.results["steps"][name] = {"skipped": "accelerate refuses FSDP without an accelerator"}
            continue
        if cpu:  # two CPU processes (gloo) through torchrun: accelerate's GPU configs need GPUs
            cmd = [py, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531", "-m",
                   "c2t.cli", "train", str(LORA_CONFIG), *base_flags, "--output-dir", str(folder)]
        else:
            cmd = [*accelerate, str(SCRIPTS / "configs" / "accelerate" / config), "-m", "c2t.cli", "train",
                   str(LORA_CONFIG), *base_flags, "--output-dir", str(folder)]
        launches[name] = (d.start(name, cmd, env={"OMP_NUM_THREADS": "1"} if cpu else None), folder)
    sweep_cmd = [py, str(SCRIPTS / "sweep_pbmc3k.py"), "--work", str(d.work / "sweep"), "--out",
                 str(d.work / "sweep.json")]
    reserve = 20 if cpu else 130  # for the steps after the sweep (pack, the generation run and benchmark)
    sweep_cmd += ["--model", "tiny", "--grid", str(SCRIPTS / "configs" / "sweep_tiny.yaml"), "--only", "top20",
                  "--cells", "800", "--epochs", "1"] if cpu else [
        "--model", "smollm2", "--grid", str(SCRIPTS / "configs" / "sweep_smollm2.yaml"),
        "--budget", str(max(30, int(d.left() - reserve - 60)))]
    d.run("sweep", max(30.0, d.left() - reserve), sweep_cmd, result_file=d.work / "sweep.json")
    if (d.work / "sweep.json").is_file():
        d.run("pack", 60)
    for name, (started, folder) in launches.items():
        d.finish(name, started, 120, post=lambda f=folder: _read_run(f))
    gen = d.run("gen_run", 120)
    if gen and gen["rc"] == 0:
        run = gen["result"]["run"]
        cmd = [py, str(SCRIPTS / "bench_generate.py"), run, "--backends", "transformers", "--out",
               str(d.work / "generate.json")]
        cmd += ["--cells", "40", "--annotate", "40"] if cpu else ["--cells", "2000", "--annotate", "1000"]
        d.run("generate", 150, cmd, result_file=d.work / "generate.json")
    d.results["seconds"] = round(args.budget - d.left(), 1)
    d.save()
    print(f"wrote {d.out / 'gpu_check.json'} and {d.log}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu", action="store_true", help="tiny models on a few hundred cells (a smoke test)")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "bench_out/gpu_check"))
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default /tmp/c2t_gpu_check)")
    parser.add_argument("--budget", type=float, default=None, help="seconds for the whole check (GPU 530, CPU 900)")
    parser.add_argument("--step", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--ctx", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--step-out", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step:  # one in-process step, run by the driver in its own process
        result = STEP_FUNCTIONS[args.step](json.loads(args.ctx))
        args.step_out.write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result), flush=True)
        return
    args.work = args.work or Path(os.environ.get("TMPDIR", "/tmp")) / "c2t_gpu_check"
    args.budget = args.budget or (900.0 if args.cpu else 530.0)
    drive(args)


if __name__ == "__main__":
    main()

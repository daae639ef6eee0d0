"""The `accelerate launch` configs in scripts/configs/accelerate/ parse with accelerate's own config loader and
launch-argument validation (DDP, CPU processes, FSDP2, DeepSpeed ZeRO-2); nothing is launched (FSDP needs a GPU; the
two-CPU-process launch of cpu2.yaml runs in tests/test_train_ddp.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip("accelerate")

from accelerate.commands.config.config_args import load_config_from_file
from accelerate.commands.launch import _validate_launch_command, launch_command_parser

CONFIGS = Path(__file__).resolve().parents[1] / "scripts" / "configs" / "accelerate"


@pytest.mark.parametrize(("name", "kind"), [("ddp", "MULTI_GPU"), ("cpu2", "MULTI_GPU"), ("fsdp", "FSDP"),
                                           ("deepspeed_zero2", "DEEPSPEED")])
def test_config_parses_and_validates(name, kind):
    path = CONFIGS / f"{name}.yaml"
    config = load_config_from_file(str(path))  # unknown top-level keys raise here
    assert config.distributed_type.value == kind and config.num_machines == 1
    parser = launch_command_parser()
    args = parser.parse_args(["--config_file", str(path), "--num_processes", "4", "-m", "c2t.cli", "train", "run.yaml"])
    args, defaults, _ = _validate_launch_command(args)
    assert args.num_processes == 4  # the command line overrides the file
    flags = (args.multi_gpu, args.use_fsdp, args.use_deepspeed)
    assert flags == (kind == "MULTI_GPU", kind == "FSDP", kind == "DEEPSPEED")
    options = {action.dest for action in parser._actions}
    for key in {**defaults.fsdp_config, **defaults.deepspeed_config}:
        assert key in options, f"{name}: {key} is not an accelerate launch option"
    assert args.training_script == "c2t.cli" and args.module


def test_cpu2_starts_torchrun_processes_and_cpu_flag_one(tmp_path):
    """Why cpu2.yaml is MULTI_GPU: accelerate starts several processes only through torchrun (multi_gpu_launcher);
    ``--cpu`` (or ``distributed_type: MULTI_CPU``) goes to simple_launcher, one ``python`` process without an MPI
    hostfile."""
    from accelerate.utils.launch import prepare_multi_gpu_env, prepare_simple_launcher_cmd_env

    parser = launch_command_parser()
    args, _, _ = _validate_launch_command(parser.parse_args(["--config_file", str(CONFIGS / "cpu2.yaml"), "train.py"]))
    assert args.multi_gpu and not args.cpu and args.num_processes == 2  # launch_command -> multi_gpu_launcher
    prepare_multi_gpu_env(args)
    assert args.nproc_per_node == "2"  # torchrun's process count
    multi_cpu = tmp_path / "multi_cpu.yaml"
    multi_cpu.write_text("compute_environment: LOCAL_MACHINE\ndistributed_type: MULTI_CPU\nnum_machines: 1\n"
                         "num_processes: 2\nmixed_precision: 'no'\nuse_cpu: true\n")
    for argv in (["--config_file", str(CONFIGS / "ddp.yaml"), "--cpu", "--num_processes", "2", "train.py"],
                 ["--config_file", str(multi_cpu), "train.py"]):
        args, _, _ = _validate_launch_command(parser.parse_args(argv))
        assert not (args.multi_gpu and not args.cpu) and not args.use_fsdp and not args.use_deepspeed
        cmd, _ = prepare_simple_launcher_cmd_env(args)  # what launch_command runs then
        assert args.num_processes == 2 and cmd[0] == sys.executable and cmd[1:] == ["train.py"]


def _fsdp_env() -> dict[str, str]:
    """The environment `accelerate launch --config_file fsdp.yaml` gives each process."""
    from accelerate.utils.launch import prepare_multi_gpu_env

    parser = launch_command_parser()
    args = parser.parse_args(["--config_file", str(CONFIGS / "fsdp.yaml"), "-m", "c2t.cli", "train", "run.yaml"])
    args, _, _ = _validate_launch_command(args)
    return prepare_multi_gpu_env(args)


def test_fsdp_is_fsdp2_with_full_state_dicts():
    env = _fsdp_env()
    assert env["ACCELERATE_USE_FSDP"] == "true" and env["FSDP_VERSION"] == "2"
    assert env["FSDP_STATE_DICT_TYPE"] == "FULL_STATE_DICT"
    assert env["FSDP_AUTO_WRAP_POLICY"] == "TRANSFORMER_BASED_WRAP" and "FSDP_TRANSFORMER_CLS_TO_WRAP" not in env
    assert env["FSDP_RESHARD_AFTER_FORWARD"] == "true" and env["FSDP_OFFLOAD_PARAMS"] == "false"
    assert env["FSDP_CPU_RAM_EFFICIENT_LOADING"] == "false" and env["FSDP_ACTIVATION_CHECKPOINTING"] == "false"
    keys = set(load_config_from_file(str(CONFIGS / "fsdp.yaml")).fsdp_config)
    fsdp1_only = {"fsdp_sharding_strategy", "fsdp_backward_prefetch", "fsdp_forward_prefetch", "fsdp_use_orig_params",
                  "fsdp_sync_module_states"}
    assert not keys & fsdp1_only, f"FSDP1-only keys in fsdp.yaml: {sorted(keys & fsdp1_only)}"


def test_fsdp_env_builds_an_fsdp2_plugin(monkeypatch):
    """The plugin each process builds from that environment (what the Trainer's Accelerator does)."""
    from accelerate.utils import FullyShardedDataParallelPlugin
    from torch.distributed.fsdp import OffloadPolicy, StateDictType
    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy

    for key, value in _fsdp_env().items():
        if key.startswith(("FSDP_", "ACCELERATE_")):
            monkeypatch.setenv(key, value)
    plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is True
    assert plugin.state_dict_type == StateDictType.FULL_STATE_DICT
    assert plugin.state_dict_config.rank0_only and plugin.state_dict_config.offload_to_cpu
    assert plugin.auto_wrap_policy is transformer_auto_wrap_policy and plugin.transformer_cls_names_to_wrap is None
    assert type(plugin.cpu_offload) is OffloadPolicy and plugin.cpu_ram_efficient_loading is False
    # FSDP1-only settings are dropped, not carried into fully_shard
    assert (plugin.use_orig_params, plugin.sync_module_states, plugin.backward_prefetch) == (None, None, None)
    assert not plugin.forward_prefetch and not plugin.activation_checkpointing


def _base(kind: str):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    if kind == "gpt2":
        return GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=32, n_embd=16, n_layer=2, n_head=2))
    return LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                        num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True))


def _lora_model(kind: str):
    from peft import LoraConfig, get_peft_model

    if kind == "gpt2":
        lora = LoraConfig(r=2, target_modules=["c_attn"], fan_in_fan_out=True, task_type="CAUSAL_LM")
    else:
        lora = LoraConfig(r=2, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    return get_peft_model(_base(kind), lora)


@pytest.mark.parametrize(("kind", "layer"), [("gpt2", "GPT2Block"), ("llama", "LlamaDecoderLayer")])
def test_fsdp2_wraps_each_decoder_layer_of_a_lora_model(monkeypatch, kind, layer):
    """Transformer-based wrap, resolved through the PEFT wrapper: each decoder layer is one unit, and every LoRA
    parameter lies inside one (frozen and trainable parameters share the unit, which FSDP2 allows)."""
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.fsdp_utils import fsdp2_prepare_auto_wrap_policy

    for key, value in _fsdp_env().items():
        if key.startswith(("FSDP_", "ACCELERATE_")):
            monkeypatch.setenv(key, value)
    plugin = FullyShardedDataParallelPlugin()
    model = _lora_model(kind)
    plugin.set_auto_wrap_policy(model)
    assert plugin.transformer_cls_names_to_wrap == [layer]
    policy = fsdp2_prepare_auto_wrap_policy(plugin, model)
    units = [name for name, module in model.named_modules() if policy(module)]
    assert len(units) == 2 and all(type(model.get_submodule(u)).__name__ == layer for u in units)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n and any(n.startswith(u + ".") for u in units) for n in trainable)
    assert {p.dtype for n, p in model.named_parameters() if p.requires_grad} == {model.dtype}


def test_full_state_dict_saves_an_ordinary_adapter(tmp_path):
    """What Trainer.save_model does with FULL_STATE_DICT on rank 0: PeftModel.save_pretrained(state_dict=<every
    parameter of the model>) keeps only the adapter, which PEFT loads onto a fresh base without FSDP."""
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file

    model = _lora_model("llama")
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_()
    full = {k: v.detach().clone() for k, v in model.state_dict().items()}
    assert any("embed_tokens" in k for k in full)
    model.save_pretrained(tmp_path, state_dict=full)
    saved = load_file(tmp_path / "adapter_model.safetensors")
    assert saved and all("lora_" in k for k in saved)
    fresh = PeftModel.from_pretrained(_base("llama"), tmp_path)
    for name, param in model.named_parameters():
        if "lora_" in name:
            assert torch.equal(fresh.get_parameter(name), param), name


def test_deepspeed_is_zero_stage_2():
    config = load_config_from_file(str(CONFIGS / "deepspeed_zero2.yaml"))
    assert config.deepspeed_config["zero_stage"] == 2
    assert config.deepspeed_config["offload_optimizer_device"] == "none"

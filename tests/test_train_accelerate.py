"""The `accelerate launch` configs in scripts/configs/accelerate/ parse with accelerate's own config loader and
launch-argument validation (DDP, FSDP, DeepSpeed ZeRO-2); nothing is launched."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("accelerate")

from accelerate.commands.config.config_args import load_config_from_file
from accelerate.commands.launch import _validate_launch_command, launch_command_parser

CONFIGS = Path(__file__).resolve().parents[1] / "scripts" / "configs" / "accelerate"


@pytest.mark.parametrize(("name", "kind"), [("ddp", "MULTI_GPU"), ("fsdp", "FSDP"), ("deepspeed_zero2", "DEEPSPEED")])
def test_config_parses_and_validates(name, kind):
    path = CONFIGS / f"{name}.yaml"
    config = load_config_from_file(str(path))  # unknown top-level keys raise here
    assert config.distributed_type.value == kind and config.num_machines == 1
    parser = launch_command_parser()
    args = parser.parse_args(["--config_file", str(path), "--num_processes", "4", "-m", "c2t.cli", "train", "run.yaml"])
    args, defaults, _ = _validate_launch_command(args)
    assert args.num_processes == 4  # the command line overrides the file
    assert (args.multi_gpu, args.use_fsdp, args.use_deepspeed) == (kind == "MULTI_GPU", kind == "FSDP", kind == "DEEPSPEED")
    options = {action.dest for action in parser._actions}
    for key in {**defaults.fsdp_config, **defaults.deepspeed_config}:
        assert key in options, f"{name}: {key} is not an accelerate launch option"
    assert args.training_script == "c2t.cli" and args.module


def test_fsdp_saves_full_state_dicts():
    from accelerate.utils.launch import prepare_multi_gpu_env

    parser = launch_command_parser()
    args = parser.parse_args(["--config_file", str(CONFIGS / "fsdp.yaml"), "-m", "c2t.cli", "train", "run.yaml"])
    args, _, _ = _validate_launch_command(args)
    env = prepare_multi_gpu_env(args)
    assert env["ACCELERATE_USE_FSDP"] == "true" and env["FSDP_STATE_DICT_TYPE"] == "FULL_STATE_DICT"
    assert env["FSDP_AUTO_WRAP_POLICY"] == "TRANSFORMER_BASED_WRAP" and env["FSDP_USE_ORIG_PARAMS"] == "true"


def test_deepspeed_is_zero_stage_2():
    config = load_config_from_file(str(CONFIGS / "deepspeed_zero2.yaml"))
    assert config.deepspeed_config["zero_stage"] == 2
    assert config.deepspeed_config["offload_optimizer_device"] == "none"

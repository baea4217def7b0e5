"""The architecture registry and the `arch` setting: run ids, refusals, config.json, the command line."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from dynhp_bench.cli.commands import main
from dynhp_bench.data.datasets import input_shape
from dynhp_bench.errors import SettingsError
from dynhp_bench.models.network import GatedNetwork
from dynhp_bench.models.registry import ARCHITECTURES
from dynhp_bench.models.resnet import GatedResNet
from dynhp_bench.settings.config import TrainConfig, resolve_config
from dynhp_bench.sweep.spec import command_line_spec


@pytest.mark.parametrize("key", list(ARCHITECTURES))
def test_every_architecture_builds_its_class_at_its_counted_size(key: str) -> None:
    architecture = ARCHITECTURES[key]
    for strategy in ("dense", "sp"):
        config = TrainConfig(arch=key, strategy=strategy)
        net = architecture.build(config, input_shape("mnist"), torch.Generator().manual_seed(0))
        assert isinstance(net, GatedNetwork) and type(net) is architecture.network
        assert net.gated == (strategy == "sp") and (net.n_gates > 0) == net.gated
        assert net.model_bytes() == architecture.model_bytes(config.hidden, input_shape("mnist"))
        assert config.full_model_bytes == net.model_bytes()
        assert len(net.unit_counts()) == len(net.split(net.sample(None, None))) or not net.gated
        logits = net(torch.rand(3, math.prod(input_shape("mnist"))), net.deterministic_gates())
        assert logits.shape == (3, 10)


@pytest.mark.parametrize("depth", [20, 32, 44, 56])
def test_resnet_keys_name_their_depth(depth: int) -> None:
    net = ARCHITECTURES[f"resnet{depth}"].build(TrainConfig(arch=f"resnet{depth}"), (1, 28, 28), None)
    assert isinstance(net, GatedResNet)
    weighted_layers = 1 + 2 * len(net.blocks) + 1  # stem, two convolutions per block, the Linear layer
    assert weighted_layers == depth


def test_arch_enters_the_run_id_only_away_from_the_mlp() -> None:
    mlp = resolve_config({"strategy": "hp"})
    assert resolve_config({"strategy": "hp", "arch": "mlp"}).run_id == mlp.run_id
    resnet = resolve_config({"strategy": "hp", "arch": "resnet20"})
    assert resnet.run_id.startswith("mnist-resnet20-hp-b100-e20-s0-") and resnet.run_id != mlp.run_id
    assert resolve_config({"strategy": "hp", "arch": "resnet32"}).run_id != resnet.run_id
    assert TrainConfig.from_dict(resnet.to_dict()) == resnet


def test_dynhp_budget_defaults_to_the_architectures_full_size() -> None:
    config = resolve_config({"strategy": "dynhp", "arch": "resnet20"})
    assert config.budget_bytes == config.full_model_bytes + 512 * 4 * 784


@pytest.mark.parametrize(
    ("given", "fragment"),
    [
        ({"arch": "vgg"}, "--arch='vgg' is not known; expected one of mlp, resnet20"),
        ({"arch": "resnet20", "strategy": "dyprune"}, "prunes single weights, which --arch='resnet20' does not"),
        ({"arch": "resnet20", "hidden": "30,10"}, "--hidden does not apply to --arch='resnet20'"),
    ],
)
def test_settings_that_do_not_fit_the_architecture_are_refused(given: dict[str, object], fragment: str) -> None:
    with pytest.raises(SettingsError, match=fragment.replace("(", r"\(")):
        resolve_config(given)


def test_a_command_line_sweep_names_its_group_after_the_architecture() -> None:
    spec = command_line_spec("gamma", range_text=None, values="0.5", settings={"arch": "resnet20", "strategy": "hp"})
    assert spec.groups[0].name == "mnist-resnet20-hp"
    spec = command_line_spec("gamma", range_text=None, values="0.5", settings={"strategy": "hp"})
    assert spec.groups[0].name == "mnist-hp"


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(argv)
    captured = capsys.readouterr()
    return int(info.value.code or 0), captured.out, captured.err


def test_train_arch_resnet20_from_a_settings_file_saves_arch(
    synthetic_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings_file = tmp_path / "run.toml"
    settings_file.write_text('[train]\narch = "resnet20"\nstrategy = "hp"\nepochs = 1\nsubset = 64\nbatch_size = 32\n')
    code, _, err = _run(
        ["train", "--config", str(settings_file), "--data-dir", str(synthetic_root), "--out", str(tmp_path / "r"),
         "--threads", "1"],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    (run,) = (tmp_path / "r" / "runs").iterdir()
    assert run.name.startswith("mnist-resnet20-hp-b32-e1-s0-")
    assert json.loads((run / "config.json").read_text())["settings"]["arch"] == "resnet20"
    code, _, err = _run(["train", "--arch", "resnet20", "--strategy", "dyprune"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "expected --arch mlp" in err
    code, _, err = _run(["export", str(run), "--out", str(tmp_path / "net.safetensors")], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "expected a run of --arch mlp" in err

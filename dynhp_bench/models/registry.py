"""The architectures a run can train (the setting ``arch``), and the one registry of them.

`mlp` is the paper's 784-300-100-10 MLP (hidden widths the setting ``hidden``; its input width is the
dataset's C·H·W). `resnet20`, `resnet32`, `resnet44` and `resnet56` are He et al.'s CIFAR ResNet
(`resnet.GatedResNet`) at depth 20, 32, 44 and 56: one builder, the depth read from the key.
Adding an architecture is a `GatedNetwork` subclass and one line in `ARCHITECTURES`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

import torch

from dynhp_bench.memory import BYTES_PER_FLOAT, layer_shapes, weight_count
from dynhp_bench.models.mlp import GatedMLP
from dynhp_bench.models.network import GatedNetwork
from dynhp_bench.models.resnet import DEPTHS, GatedResNet, resnet_weight_count

if TYPE_CHECKING:
    from dynhp_bench.settings.config import TrainConfig

DEFAULT_ARCH = "mlp"
N_CLASSES = 10
Shape = tuple[int, int, int]  # channels, rows, columns of one image


@dataclass(frozen=True)
class Architecture:
    """One entry of the registry.

    `build(config, input_shape, generator)` makes the network a run trains, gated when the strategy uses
    gates; `weight_count(hidden, input_shape)` counts the full network's parameters without gates (its
    model bytes / 4, for DynHP's default budget) without building it. `network` is the class built.
    """

    key: str
    description: str
    network: type[GatedNetwork]
    build: Callable[[TrainConfig, Shape, torch.Generator | None], GatedNetwork]
    weight_count: Callable[[tuple[int, ...], Shape], int]

    def model_bytes(self, hidden: tuple[int, ...], input_shape: Shape) -> int:
        """The full network's model bytes: 4 · `weight_count`."""
        return BYTES_PER_FLOAT * self.weight_count(hidden, input_shape)


def _mlp_sizes(hidden: tuple[int, ...], input_shape: Shape) -> list[int]:
    return [math.prod(input_shape), *hidden, N_CLASSES]


def _build_mlp(config: TrainConfig, input_shape: Shape, generator: torch.Generator | None) -> GatedNetwork:
    sizes = _mlp_sizes(config.hidden, input_shape)
    return GatedMLP(
        sizes,
        gated=config.gated,
        drop_rates=[config.drop_rate_input] + [config.drop_rate_hidden] * (len(sizes) - 2),
        generator=generator,
        zero_biases=config.bias_init == "zeros",
    )


def _mlp_weight_count(hidden: tuple[int, ...], input_shape: Shape) -> int:
    return weight_count(layer_shapes(_mlp_sizes(hidden, input_shape)))


def _build_resnet(
    depth: int, config: TrainConfig, input_shape: Shape, generator: torch.Generator | None
) -> GatedNetwork:
    return GatedResNet(
        depth, input_shape, N_CLASSES, gated=config.gated, drop_rate=config.drop_rate_hidden, generator=generator
    )


def _resnet_weight_count(depth: int, hidden: tuple[int, ...], input_shape: Shape) -> int:
    return resnet_weight_count(depth, input_shape[0], N_CLASSES)


ARCHITECTURES: dict[str, Architecture] = {
    "mlp": Architecture("mlp", "the paper's MLP (input, --hidden widths, 10), gates on every layer's inputs",
                        GatedMLP, _build_mlp, _mlp_weight_count),
    **{
        f"resnet{depth}": Architecture(
            f"resnet{depth}",
            f"He et al.'s CIFAR ResNet-{depth}, gates on every basic block's inner channels",
            GatedResNet,
            partial(_build_resnet, depth),
            partial(_resnet_weight_count, depth),
        )
        for depth in DEPTHS
    },
}  # fmt: skip

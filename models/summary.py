"""Parameter and FLOP counts of the registry's models.

FLOPs are computed from layer shapes and count one multiply-add as 2 operations. Only
convolutions (plain, depthwise, separable) and dense layers are counted; batch norm,
activations, pooling, LRN and the L2 normalisation are left out, as in the FaceNet and
GoogLeNet tables, whose "FLOPS" are multiply-adds (NN2 at 224 px counts 1.60 G multiply-adds
here, 1.6 B in FaceNet's table 2). A layer with trainable weights of any other kind raises,
so a count is never silently short. A layer called more than once is counted once.

    python -m models.summary [--input-size 96] [--models ang nn2 ...]
"""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from typing import Iterator, Sequence

import keras
from keras import layers

import models

_CONVS = (layers.Conv1D, layers.Conv2D, layers.Conv3D, layers.DepthwiseConv1D, layers.DepthwiseConv2D)
_SEPARABLE_CONVS = (layers.SeparableConv1D, layers.SeparableConv2D)
_NORMALISATIONS = (layers.BatchNormalization, layers.LayerNormalization, layers.GroupNormalization)


@dataclass(frozen=True)
class ModelSize:
    """Size of one model at one input size."""

    name: str
    parameters: int
    trainable_parameters: int
    flops: int


def _leaf_layers(model: keras.Model) -> Iterator[keras.layers.Layer]:
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _leaf_layers(layer)
        else:
            yield layer


def layer_flops(layer: keras.layers.Layer) -> int:
    """FLOPs (2 x multiply-adds) of one forward pass of ``layer`` for one sample."""
    if isinstance(layer, _SEPARABLE_CONVS):
        kernel_size = math.prod(layer.depthwise_kernel.shape) + math.prod(layer.pointwise_kernel.shape)
    elif isinstance(layer, _CONVS + (layers.Dense,)):
        # Conv: kernel (k..., C_in / groups, C_out); depthwise: (k..., C_in, multiplier); dense: (C_in, C_out).
        kernel_size = math.prod(layer.kernel.shape)
    elif layer.trainable_weights and not isinstance(layer, _NORMALISATIONS):
        raise NotImplementedError(f"no FLOP rule for layer {layer.name!r} of type {type(layer).__name__}")
    else:
        return 0
    # The kernel is applied once per output position (every output axis but batch and channels).
    spatial = layer.output.shape[1:-1]
    if None in spatial:
        raise ValueError(f"layer {layer.name!r} has an unknown output size {layer.output.shape}; "
                         "build the model with a fixed input size")
    return 2 * math.prod(spatial) * kernel_size


def count_flops(model: keras.Model) -> int:
    """FLOPs (2 x multiply-adds) of one forward pass for one sample at the model's input size."""
    return sum(layer_flops(layer) for layer in _leaf_layers(model))


def model_size(name: str, input_size: int = 96) -> ModelSize:
    """Build the registry model ``name`` at ``input_size`` and measure it."""
    model = models.get_model(name, input_size=input_size)
    trainable = sum(math.prod(weight.shape) for weight in model.trainable_weights)
    return ModelSize(name, model.count_params(), trainable, count_flops(model))


def markdown_table(names: Sequence[str], input_size: int = 96) -> str:
    """One Markdown row per model; a model whose module cannot be imported gets a message row."""
    rows = [f"| model | parameters | trainable | GFLOPs at {input_size} px |", "|---|---:|---:|---:|"]
    for name in names:
        try:
            size = model_size(name, input_size)
        except ImportError as err:
            rows.append(f"| {name} | not available: {err} | | |")
            continue
        rows.append(f"| {name} | {size.parameters:,} | {size.trainable_parameters:,} | {size.flops / 1e9:.3f} |")
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m models.summary",
        description="Print a Markdown table of parameter counts and FLOPs (2 x multiply-adds of "
                    "convolutions and dense layers, one image) for the registry's models.")
    parser.add_argument("--input-size", type=int, default=96,
                        help="square input side in pixels (>= 96; default 96)")
    parser.add_argument("--models", nargs="+", choices=models.MODEL_NAMES, default=list(models.MODEL_NAMES),
                        metavar="NAME",
                        help=f"models to measure (default: all of {', '.join(models.MODEL_NAMES)})")
    args = parser.parse_args(argv)
    if args.input_size < 96:
        parser.error(f"--input-size must be >= 96, got {args.input_size}")
    print(markdown_table(args.models, args.input_size))


if __name__ == "__main__":
    main()

"""OpenFace nn4.small2.v1 (Amos et al., 2016) as a Keras functional model.

A layer-for-layer port of OpenFace's ``models/openface/nn4.small2.def.lua`` with Torch's exact
semantics, so that the pretrained ``nn4.small2.v1.t7`` weights reproduce the original
embeddings (see ``models.openface_weights``). Layer names follow Keras-OpenFace: ``conv1``,
``bn1``, ..., ``inception_3a_3x3_conv1``, ``inception_3a_3x3_bn1``, ``inception_3a_3x3_conv2``,
``inception_3a_3x3_bn2``, ``inception_3a_5x5_...``, ``inception_3a_pool_conv``/``_bn``,
``inception_3a_1x1_conv``/``_bn``, ..., ``dense_layer``.

Torch details reproduced:
- padded convolutions and max pools pad symmetrically (explicit ``ZeroPadding2D``; zero padding
  equals Torch's -inf padding for the max pools because their inputs are ReLU/LRN outputs >= 0);
- inside an Inception block (dpnn ``nn.Inception``) every kernel tower is 1x1 reduce + BN + ReLU,
  then kxk convolution (padding k//2, the block's stride) + BN + ReLU; the pool tower is the pool
  (3x3 max with stride 2, or 3x3 L2 pooling with stride 3, both unpadded) and an optional 1x1
  convolution + BN + ReLU; an optional 1x1 tower follows;
- ``nn.DepthConcat`` zero-pads each smaller tower output to the largest spatial size, placing it
  at offset floor((largest - size) / 2), then concatenates channels in tower order.
"""
from __future__ import annotations

from dataclasses import dataclass

import keras
from keras import layers

from models.blocks import face_input
from models.layers import L2Normalize, L2Pooling2D, LocalResponseNorm

BN_EPSILON = 1e-5  # Torch's SpatialBatchNormalization default
FINAL_CHANNELS = 736


@dataclass(frozen=True)
class OpenFaceBlock:
    """One dpnn ``nn.Inception`` block of nn4.small2 (the def file's arguments)."""

    name: str
    kernel_towers: tuple[tuple[int, int, int], ...]  # (kernel size, reduce filters, output filters)
    stride: int
    pool: str  # "max": 3x3 stride 2; "l2": 3x3 L2 pooling, stride 3
    pool_filters: int | None  # 1x1 convolution after the pool, if any
    filters_1x1: int | None  # the separate 1x1 tower, if any


INCEPTION_BLOCKS = (
    OpenFaceBlock("3a", ((3, 96, 128), (5, 16, 32)), 1, "max", 32, 64),
    OpenFaceBlock("3b", ((3, 96, 128), (5, 32, 64)), 1, "l2", 64, 64),
    OpenFaceBlock("3c", ((3, 128, 256), (5, 32, 64)), 2, "max", None, None),
    OpenFaceBlock("4a", ((3, 96, 192), (5, 32, 64)), 1, "l2", 128, 256),
    OpenFaceBlock("4e", ((3, 160, 256), (5, 64, 128)), 2, "max", None, None),
    OpenFaceBlock("5a", ((3, 96, 384),), 1, "l2", 96, 256),
    OpenFaceBlock("5b", ((3, 96, 384),), 1, "max", 96, 256),
)

STEM = (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3"))
DENSE = "dense_layer"


def _conv_bn_relu(x: keras.KerasTensor, filters: int, kernel: int, stride: int, conv_name: str,
                  bn_name: str) -> keras.KerasTensor:
    """Torch-style conv (symmetric padding kernel//2) + batch norm + ReLU."""
    pad = kernel // 2
    padding = "same" if stride == 1 else "valid"  # stride 1, odd kernel: "same" is symmetric
    if pad and stride != 1:
        x = layers.ZeroPadding2D(pad, name=f"{conv_name}_pad")(x)
    x = layers.Conv2D(filters, kernel, strides=stride, padding=padding, name=conv_name)(x)
    x = layers.BatchNormalization(epsilon=BN_EPSILON, name=bn_name)(x)
    return layers.ReLU(name=f"{bn_name}_relu")(x)


def _max_pool_padded(x: keras.KerasTensor, name: str) -> keras.KerasTensor:
    """Torch SpatialMaxPooling(3, 3, 2, 2, 1, 1) on non-negative input."""
    x = layers.ZeroPadding2D(1, name=f"{name}_pad")(x)
    return layers.MaxPooling2D(3, strides=2, name=name)(x)


def _depth_concat(towers: list[keras.KerasTensor], name: str) -> keras.KerasTensor:
    """``nn.DepthConcat``: centre smaller maps in zeros at the largest size, then concatenate."""
    height = max(t.shape[1] for t in towers)
    width = max(t.shape[2] for t in towers)
    aligned = []
    for i, tower in enumerate(towers):
        dh, dw = height - tower.shape[1], width - tower.shape[2]
        if dh or dw:
            tower = layers.ZeroPadding2D(((dh // 2, dh - dh // 2), (dw // 2, dw - dw // 2)),
                                         name=f"{name}_pad{i}")(tower)
        aligned.append(tower)
    return layers.Concatenate(axis=-1, name=name)(aligned)


def _inception(x: keras.KerasTensor, spec: OpenFaceBlock) -> keras.KerasTensor:
    prefix = f"inception_{spec.name}"
    towers = []
    for kernel, reduce_filters, out_filters in spec.kernel_towers:
        tower = f"{prefix}_{kernel}x{kernel}"
        t = _conv_bn_relu(x, reduce_filters, 1, 1, f"{tower}_conv1", f"{tower}_bn1")
        towers.append(_conv_bn_relu(t, out_filters, kernel, spec.stride, f"{tower}_conv2", f"{tower}_bn2"))
    if spec.pool == "max":
        pool = layers.MaxPooling2D(3, strides=2, name=f"{prefix}_pool")(x)
    else:
        pool = L2Pooling2D(3, strides=3, padding="valid", name=f"{prefix}_pool")(x)
    if spec.pool_filters:
        pool = _conv_bn_relu(pool, spec.pool_filters, 1, 1, f"{prefix}_pool_conv", f"{prefix}_pool_bn")
    towers.append(pool)
    if spec.filters_1x1:
        towers.append(_conv_bn_relu(x, spec.filters_1x1, 1, 1, f"{prefix}_1x1_conv", f"{prefix}_1x1_bn"))
    return _depth_concat(towers, f"{prefix}_concat")


def weight_layer_names() -> list[str]:
    """Every layer holding weights, in the order the Torch model stores its modules."""
    names = [name for pair in STEM for name in pair]
    for spec in INCEPTION_BLOCKS:
        prefix = f"inception_{spec.name}"
        for kernel, _, _ in spec.kernel_towers:
            tower = f"{prefix}_{kernel}x{kernel}"
            names += [f"{tower}_conv1", f"{tower}_bn1", f"{tower}_conv2", f"{tower}_bn2"]
        if spec.pool_filters:
            names += [f"{prefix}_pool_conv", f"{prefix}_pool_bn"]
        if spec.filters_1x1:
            names += [f"{prefix}_1x1_conv", f"{prefix}_1x1_bn"]
    return names + [DENSE]


def build(input_size: int = 96, embedding_size: int = 128) -> keras.Model:
    """OpenFace nn4.small2: RGB face in [0, 1] (input_size >= 96) -> L2-normalised embedding."""
    inputs = face_input(input_size)
    x = layers.ZeroPadding2D(3, name="conv1_pad")(inputs)
    x = layers.Conv2D(64, 7, strides=2, name="conv1")(x)
    x = layers.BatchNormalization(epsilon=BN_EPSILON, name="bn1")(x)
    x = layers.ReLU(name="bn1_relu")(x)
    x = _max_pool_padded(x, "pool1")
    x = LocalResponseNorm(5, 1e-4, 0.75, 1.0, name="lrn1")(x)
    x = _conv_bn_relu(x, 64, 1, 1, "conv2", "bn2")
    x = _conv_bn_relu(x, 192, 3, 1, "conv3", "bn3")
    x = LocalResponseNorm(5, 1e-4, 0.75, 1.0, name="lrn2")(x)
    x = _max_pool_padded(x, "pool2")
    for spec in INCEPTION_BLOCKS:
        x = _inception(x, spec)
    # Torch: SpatialAveragePooling(3, 3) over the final 3x3 map; global pooling equals it at 96
    # and keeps larger inputs buildable.
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    x = layers.Dense(embedding_size, name=DENSE)(x)
    outputs = L2Normalize(name="l2_normalize")(x)
    return keras.Model(inputs, outputs, name="openface_nn4_small2")

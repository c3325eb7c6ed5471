"""GoogLeNet / FaceNet-style inception modules, built from one row of a parameter table.

The table columns follow FaceNet's table 2 (Schroff et al. 2015) and GoogLeNet's table 1
(Szegedy et al. 2014): ``#1x1``, ``#3x3 reduce``, ``#3x3``, ``#5x5 reduce``, ``#5x5``,
pool type and ``pool proj``. A zero count drops that tower. With ``strides=2`` the 3x3, 5x5
and pool towers down-sample (FaceNet's 3c and 4e); FaceNet's tables then give no 1x1 tower
and no pool projection. Every convolution is followed by batch normalisation and a ReLU,
and every convolution and pool uses "same" padding, so the towers always agree in size.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import keras
from keras import layers

from models.blocks import conv_bn_relu
from models.layers import L2Pooling2D, LocalResponseNorm


@dataclass(frozen=True)
class InceptionSpec:
    """One row of an inception table; 0 means the tower (or the projection) is absent."""

    name: str
    conv1x1: int = 0
    reduce3x3: int = 0
    conv3x3: int = 0
    reduce5x5: int = 0
    conv5x5: int = 0
    pool: Literal["max", "l2"] = "max"
    pool_proj: int = 0
    strides: int = 1

    def __post_init__(self):
        if self.pool not in ("max", "l2"):
            raise ValueError(f"{self.name}: pool must be 'max' or 'l2', got {self.pool!r}")
        if bool(self.reduce3x3) != bool(self.conv3x3) or bool(self.reduce5x5) != bool(self.conv5x5):
            raise ValueError(f"{self.name}: a 3x3 or 5x5 tower needs both its reduce and its conv count")
        if self.strides != 1 and self.conv1x1:
            raise ValueError(f"{self.name}: a down-sampling module has no 1x1 tower")


def inception_module(x: keras.KerasTensor, spec: InceptionSpec) -> keras.KerasTensor:
    """Concatenate the towers of ``spec``; layers are named ``inception_<name>_<tower>``."""
    prefix = f"inception_{spec.name}"
    towers = []
    if spec.conv1x1:
        towers.append(conv_bn_relu(x, spec.conv1x1, 1, name=f"{prefix}_1x1"))
    for size, reduce, filters in ((3, spec.reduce3x3, spec.conv3x3), (5, spec.reduce5x5, spec.conv5x5)):
        if filters:
            tower = conv_bn_relu(x, reduce, 1, name=f"{prefix}_{size}x{size}_reduce")
            towers.append(conv_bn_relu(tower, filters, size, strides=spec.strides,
                                       name=f"{prefix}_{size}x{size}"))
    pool_layer = layers.MaxPooling2D if spec.pool == "max" else L2Pooling2D
    pooled = pool_layer(3, strides=spec.strides, padding="same", name=f"{prefix}_{spec.pool}_pool")(x)
    if spec.pool_proj:
        pooled = conv_bn_relu(pooled, spec.pool_proj, 1, name=f"{prefix}_pool_proj")
    towers.append(pooled)
    return layers.Concatenate(name=f"{prefix}_concat")(towers)


def inception_stack(x: keras.KerasTensor, specs: Sequence[InceptionSpec]) -> keras.KerasTensor:
    """Apply the modules of a table in order."""
    for spec in specs:
        x = inception_module(x, spec)
    return x


def googlenet_stem(x: keras.KerasTensor, lrn: bool = False) -> keras.KerasTensor:
    """GoogLeNet's first layers: conv1 7x7/2 64, max pool 3x3/2, conv2 1x1 64 then 3x3 192, max pool 3x3/2.

    With ``lrn`` a local response normalisation follows the first pool and precedes the second,
    as in GoogLeNet and FaceNet's NN2 ("max pool + norm", "norm + max pool").
    """
    x = conv_bn_relu(x, 64, 7, strides=2, name="conv1")
    x = layers.MaxPooling2D(3, strides=2, padding="same", name="pool1")(x)
    if lrn:
        x = LocalResponseNorm(name="norm1")(x)
    x = conv_bn_relu(x, 64, 1, name="conv2_reduce")
    x = conv_bn_relu(x, 192, 3, name="conv2")
    if lrn:
        x = LocalResponseNorm(name="norm2")(x)
    return layers.MaxPooling2D(3, strides=2, padding="same", name="pool2")(x)

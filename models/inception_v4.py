"""Inception-v4 (Szegedy et al. 2016) cut down for 96 px faces: stem, 2 x Inception-A,
Reduction-A, Inception-B, Reduction-B, then global average pool, dropout 0.2, dense, L2.

Each block below is the paper's figure written as a table: a block is a set of towers run
side by side and concatenated, a tower is a chain of layers, ``(filters, kernel[, stride])``
is a convolution + BN + ReLU, ``AVG_POOL`` a 3x3/1 average pool and ``MAX_POOL_2`` a 3x3/2
max pool. The stem is four such blocks (fig. 3); then come Inception-A (fig. 4),
Reduction-A with k, l, m, n = 192, 224, 256, 384 (fig. 7), Inception-B (fig. 5) and
Reduction-B (fig. 8). Inception-C and the repeats (4 x A, 7 x B, 3 x C) are left out: at
96 px Reduction-B already leaves a 3x3 grid.

Deviations from the paper, all for small faces and CPU training:
- every convolution and pool uses "same" padding (the paper's "V" layers are valid), so a
  96 px face gives grids 48 -> 24 -> 12 (stem) -> 6 (Reduction-A) -> 3 (Reduction-B),
  where valid padding would leave 1x1 after Reduction-B; any input_size >= 96 works;
- all filter counts are multiplied by ``WIDTH`` = 0.5, which gives 2.42 M parameters
  (9.45 M at full width; ``python -m models.summary`` prints exact counts and FLOPs).
"""
from __future__ import annotations

import keras
from keras import layers

from models.blocks import conv_bn_relu, embedding_head, face_input

AVG_POOL = "avg_pool"
MAX_POOL_2 = "max_pool_2"

# Stem, fig. 3: 3 convolutions, then three mixed blocks.
STEM_CONVS = {"conv": [(32, 3, 2), (32, 3), (64, 3)]}
STEM_MIXED_1 = {"pool": [MAX_POOL_2], "conv": [(96, 3, 2)]}
STEM_MIXED_2 = {
    "3x3": [(64, 1), (96, 3)],
    "7x7_3x3": [(64, 1), (64, (7, 1)), (64, (1, 7)), (96, 3)],
}
STEM_MIXED_3 = {"conv": [(192, 3, 2)], "pool": [MAX_POOL_2]}

INCEPTION_A = {
    "pool": [AVG_POOL, (96, 1)],
    "1x1": [(96, 1)],
    "3x3": [(64, 1), (96, 3)],
    "3x3_3x3": [(64, 1), (96, 3), (96, 3)],
}
REDUCTION_A = {
    "pool": [MAX_POOL_2],
    "3x3": [(384, 3, 2)],
    "3x3_3x3": [(192, 1), (224, 3), (256, 3, 2)],
}
INCEPTION_B = {
    "pool": [AVG_POOL, (128, 1)],
    "1x1": [(384, 1)],
    "7x7": [(192, 1), (224, (1, 7)), (256, (7, 1))],
    "7x7_7x7": [(192, 1), (192, (1, 7)), (224, (7, 1)), (224, (1, 7)), (256, (7, 1))],
}
REDUCTION_B = {
    "pool": [MAX_POOL_2],
    "3x3": [(192, 1), (192, 3, 2)],
    "7x7_3x3": [(256, 1), (256, (1, 7)), (320, (7, 1)), (320, 3, 2)],
}

ARCHITECTURE = (
    ("stem_convs", STEM_CONVS),
    ("stem_mixed_1", STEM_MIXED_1),
    ("stem_mixed_2", STEM_MIXED_2),
    ("stem_mixed_3", STEM_MIXED_3),
    ("inception_a1", INCEPTION_A),
    ("inception_a2", INCEPTION_A),
    ("reduction_a", REDUCTION_A),
    ("inception_b1", INCEPTION_B),
    ("reduction_b", REDUCTION_B),
)
WIDTH = 0.5
DROPOUT = 0.2


def _tower(x: keras.KerasTensor, steps, name: str, width: float) -> keras.KerasTensor:
    """Run one tower's chain of pools and convolutions; layers are named ``<name>_<index>``."""
    for index, step in enumerate(steps):
        layer_name = f"{name}_{index}"
        if step == AVG_POOL:
            x = layers.AveragePooling2D(3, strides=1, padding="same", name=layer_name)(x)
        elif step == MAX_POOL_2:
            x = layers.MaxPooling2D(3, strides=2, padding="same", name=layer_name)(x)
        else:
            filters, kernel, *strides = step
            x = conv_bn_relu(x, max(1, round(filters * width)), kernel, strides=strides[0] if strides else 1,
                             name=layer_name)
    return x


def _block(x: keras.KerasTensor, towers: dict, name: str, width: float) -> keras.KerasTensor:
    """Run the towers side by side and concatenate them (a single tower is returned as is)."""
    outputs = [_tower(x, steps, f"{name}_{tower}", width) for tower, steps in towers.items()]
    return outputs[0] if len(outputs) == 1 else layers.Concatenate(name=name)(outputs)


def build(input_size: int = 96, embedding_size: int = 128, width: float = WIDTH) -> keras.Model:
    """Inception-v4 (trimmed, filter counts times ``width``) mapping an RGB face in [0, 1] to an embedding."""
    inputs = face_input(input_size)
    x = inputs
    for name, towers in ARCHITECTURE:
        x = _block(x, towers, name, width)
    return keras.Model(inputs, embedding_head(x, embedding_size, DROPOUT), name="inception_v4")

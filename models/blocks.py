"""Building blocks shared by the architectures."""
from __future__ import annotations

import keras
from keras import layers

from models.layers import L2Normalize

# Running statistics follow the last ~10 batches (Torch's default, 0.1 in its convention) rather
# than Keras' 0.99: with the few thousand steps a CPU budget allows, 0.99 leaves the statistics
# used at validation lagging far behind the weights.
BN_MOMENTUM = 0.9


def conv_bn_relu(x: keras.KerasTensor, filters: int, kernel_size: int | tuple[int, int], strides: int = 1,
                 padding: str = "same", name: str = "conv", bn_epsilon: float = 1e-5) -> keras.KerasTensor:
    """Convolution, batch normalisation, ReLU; layers named ``name``, ``name_bn``, ``name_relu``."""
    x = layers.Conv2D(filters, kernel_size, strides=strides, padding=padding, name=name)(x)
    x = layers.BatchNormalization(momentum=BN_MOMENTUM, epsilon=bn_epsilon, name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def embedding_head(x: keras.KerasTensor, embedding_size: int, dropout: float,
                   name_prefix: str = "") -> keras.KerasTensor:
    """Global average pool, dropout, dense projection, L2 normalisation (nothing in between)."""
    x = layers.GlobalAveragePooling2D(name=f"{name_prefix}avg_pool")(x)
    if dropout:
        x = layers.Dropout(dropout, name=f"{name_prefix}dropout")(x)
    x = layers.Dense(embedding_size, name=f"{name_prefix}embedding")(x)
    return L2Normalize(name=f"{name_prefix}l2_normalize")(x)


def face_input(input_size: int) -> keras.KerasTensor:
    """An aligned RGB face, float values in [0, 1]."""
    if input_size < 96:
        raise ValueError(f"input_size must be >= 96, got {input_size}")
    return keras.Input(shape=(input_size, input_size, 3), name="face")

"""ANG: a small GoogLeNet for faces, stem plus three inception modules.

    layer                  output at 96 px   #1x1  #3x3r  #3x3  #5x5r  #5x5  pool proj
    conv1 7x7/2 + pool 3x3/2   24x24x64
    conv2 1x1, 3x3 + pool/2    12x12x192
    inception 3a               12x12x256      64     96   128     16    32   max   32
    inception 3b               12x12x480     128    128   192     32    96   max   64
    max pool 3x3/2              6x6x480
    inception 4a                6x6x512      192     96   208     16    48   max   64
    global average pool, dropout 0.2, dense 128, L2 normalisation

The three modules are GoogLeNet's 3a, 3b and 4a (Szegedy et al. 2014, table 1) with the
stride-2 pool that separates GoogLeNet's stages 3 and 4: the smallest network that keeps
both the 12x12 and the 6x6 scale of a 96 px face. Every convolution has BN and a ReLU.
"""
from __future__ import annotations

import keras
from keras import layers

from models.blocks import embedding_head, face_input
from models.inception import InceptionSpec, googlenet_stem, inception_stack

STAGE3 = (
    InceptionSpec("3a", conv1x1=64, reduce3x3=96, conv3x3=128, reduce5x5=16, conv5x5=32, pool_proj=32),
    InceptionSpec("3b", conv1x1=128, reduce3x3=128, conv3x3=192, reduce5x5=32, conv5x5=96, pool_proj=64),
)
STAGE4 = (
    InceptionSpec("4a", conv1x1=192, reduce3x3=96, conv3x3=208, reduce5x5=16, conv5x5=48, pool_proj=64),
)
DROPOUT = 0.2


def build(input_size: int = 96, embedding_size: int = 128) -> keras.Model:
    """ANG mapping an RGB face in [0, 1] to an L2-normalised embedding."""
    inputs = face_input(input_size)
    x = googlenet_stem(inputs)
    x = inception_stack(x, STAGE3)
    x = layers.MaxPooling2D(3, strides=2, padding="same", name="pool3")(x)
    x = inception_stack(x, STAGE4)
    return keras.Model(inputs, embedding_head(x, embedding_size, DROPOUT), name="ang")

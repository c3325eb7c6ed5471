"""ANG2: the ANG stem and seven inception modules shaped like OpenFace's nn4.small2.

    layer                  output at 96 px   #1x1  #3x3r  #3x3  #5x5r  #5x5  pool proj
    conv1 7x7/2 + pool 3x3/2   24x24x64
    conv2 1x1, 3x3 + pool/2    12x12x192
    inception 3a               12x12x256      64     96   128     16    32   max   32
    inception 3b               12x12x320      64     96   128     32    64   L2    64
    inception 3c (stride 2)     6x6x640       -     128  256/2    32  64/2   max/2  -
    inception 4a                6x6x640      256     96   192     32    64   L2   128
    inception 4e (stride 2)     3x3x1024      -     160  256/2    64 128/2   max/2  -
    inception 5a                3x3x736      256     96   384      -     -   L2    96
    inception 5b                3x3x736      256     96   384      -     -   max   96
    global average pool, dropout 0.2, dense 128, L2 normalisation

Filter counts are those of OpenFace's nn4.small2.def.lua (FaceNet's NN4 without 4b-4d and
with smaller 5a/5b). Unlike OpenFace there is no LRN in the stem and every convolution and
pool uses "same" padding (stride-1 pools keep the grid), so it is not weight-compatible with
OpenFace; models/openface.py is the exact port. The trainable parameter count, 3,733,968,
equals the one OpenFace states for nn4.small2 (Keras adds the BN moving statistics on top).
"""
from __future__ import annotations

import keras

from models.blocks import embedding_head, face_input
from models.inception import InceptionSpec, googlenet_stem, inception_stack

BLOCKS = (
    InceptionSpec("3a", conv1x1=64, reduce3x3=96, conv3x3=128, reduce5x5=16, conv5x5=32,
                  pool="max", pool_proj=32),
    InceptionSpec("3b", conv1x1=64, reduce3x3=96, conv3x3=128, reduce5x5=32, conv5x5=64,
                  pool="l2", pool_proj=64),
    InceptionSpec("3c", reduce3x3=128, conv3x3=256, reduce5x5=32, conv5x5=64, pool="max", strides=2),
    InceptionSpec("4a", conv1x1=256, reduce3x3=96, conv3x3=192, reduce5x5=32, conv5x5=64,
                  pool="l2", pool_proj=128),
    InceptionSpec("4e", reduce3x3=160, conv3x3=256, reduce5x5=64, conv5x5=128, pool="max", strides=2),
    InceptionSpec("5a", conv1x1=256, reduce3x3=96, conv3x3=384, pool="l2", pool_proj=96),
    InceptionSpec("5b", conv1x1=256, reduce3x3=96, conv3x3=384, pool="max", pool_proj=96),
)
DROPOUT = 0.2


def build(input_size: int = 96, embedding_size: int = 128) -> keras.Model:
    """ANG2 mapping an RGB face in [0, 1] to an L2-normalised embedding."""
    inputs = face_input(input_size)
    x = inception_stack(googlenet_stem(inputs), BLOCKS)
    return keras.Model(inputs, embedding_head(x, embedding_size, DROPOUT), name="ang2")

"""FaceNet's NN2 (Schroff et al. 2015, table 2), an inception network with L2 pooling.

    layer                  output at 96 px   #1x1  #3x3r  #3x3  #5x5r  #5x5  pool proj
    conv1 7x7/2, max pool 3x3/2 + norm  24x24x64
    inception (2): 1x1 64, 3x3 192      24x24x192
    norm + max pool 3x3/2               12x12x192
    inception 3a               12x12x256      64     96   128     16    32   max   32
    inception 3b               12x12x320      64     96   128     32    64   L2    64
    inception 3c (stride 2)     6x6x640       -     128  256/2    32  64/2   max/2  -
    inception 4a                6x6x640      256     96   192     32    64   L2   128
    inception 4b                6x6x640      224    112   224     32    64   L2   128
    inception 4c                6x6x640      192    128   256     32    64   L2   128
    inception 4d                6x6x640      160    144   288     32    64   L2   128
    inception 4e (stride 2)     3x3x1024      -     160  256/2    64 128/2   max/2  -
    inception 5a                3x3x1024     384    192   384     48   128   L2   128
    inception 5b                3x3x1024     384    192   384     48   128   max  128
    global average pool, dense 128, L2 normalisation

"norm" is a cross-channel local response normalisation (size 5, alpha 1e-4, beta 0.75), as
in GoogLeNet. The paper does not say where batch normalisation goes; here every convolution
has BN and a ReLU. The table has no dropout, so neither has this model. The paper's input is
224 px (final grid 7x7); at 96 px the final grid is 3x3.
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
    InceptionSpec("4b", conv1x1=224, reduce3x3=112, conv3x3=224, reduce5x5=32, conv5x5=64,
                  pool="l2", pool_proj=128),
    InceptionSpec("4c", conv1x1=192, reduce3x3=128, conv3x3=256, reduce5x5=32, conv5x5=64,
                  pool="l2", pool_proj=128),
    InceptionSpec("4d", conv1x1=160, reduce3x3=144, conv3x3=288, reduce5x5=32, conv5x5=64,
                  pool="l2", pool_proj=128),
    InceptionSpec("4e", reduce3x3=160, conv3x3=256, reduce5x5=64, conv5x5=128, pool="max", strides=2),
    InceptionSpec("5a", conv1x1=384, reduce3x3=192, conv3x3=384, reduce5x5=48, conv5x5=128,
                  pool="l2", pool_proj=128),
    InceptionSpec("5b", conv1x1=384, reduce3x3=192, conv3x3=384, reduce5x5=48, conv5x5=128,
                  pool="max", pool_proj=128),
)


def build(input_size: int = 96, embedding_size: int = 128) -> keras.Model:
    """NN2 mapping an RGB face in [0, 1] to an L2-normalised embedding."""
    inputs = face_input(input_size)
    x = inception_stack(googlenet_stem(inputs, lrn=True), BLOCKS)
    return keras.Model(inputs, embedding_head(x, embedding_size, dropout=0.0), name="nn2")

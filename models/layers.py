"""Small registered Keras layers the architectures share.

They replace Lambda layers so that every model saves and reloads with
``safe_mode`` on.
"""
from __future__ import annotations

import keras
from keras import ops

PACKAGE = "facetk"


@keras.saving.register_keras_serializable(package=PACKAGE)
class L2Normalize(keras.layers.Layer):
    """Scale each embedding to unit L2 norm (always the model's last operation)."""

    def __init__(self, epsilon: float = 1e-10, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = epsilon

    def call(self, x):
        norm = ops.sqrt(ops.maximum(ops.sum(ops.square(x), axis=-1, keepdims=True), self.epsilon**2))
        return x / norm

    def get_config(self):
        return {**super().get_config(), "epsilon": self.epsilon}


@keras.saving.register_keras_serializable(package=PACKAGE)
class L2Pooling2D(keras.layers.Layer):
    """L2 pooling: sqrt of the sum of squares in each window (FaceNet, OpenFace).

    With "same" padding the border windows sum over zero padding, as a true
    L2 pool does (Keras' average pooling would leave the padding out of the count).
    """

    def __init__(self, pool_size: int = 3, strides: int = 1, padding: str = "valid", **kwargs):
        super().__init__(**kwargs)
        if padding not in ("valid", "same"):
            raise ValueError(f"padding must be 'valid' or 'same', got {padding!r}")
        self.pool_size = pool_size
        self.strides = strides
        self.padding = padding
        self._avg = keras.layers.AveragePooling2D(pool_size, strides, padding="valid")

    def _same_padding(self, size: int) -> tuple[int, int]:
        out = -(-size // self.strides)
        total = max((out - 1) * self.strides + self.pool_size - size, 0)
        return total // 2, total - total // 2

    def call(self, x):
        squares = ops.square(x)
        if self.padding == "same":
            rows, cols = self._same_padding(x.shape[1]), self._same_padding(x.shape[2])
            squares = ops.pad(squares, [(0, 0), rows, cols, (0, 0)])
        window_sum = self._avg(squares) * float(self.pool_size * self.pool_size)
        # The floor keeps the gradient finite where a whole window is zero (after a ReLU).
        return ops.sqrt(ops.maximum(window_sum, 1e-12))

    def compute_output_shape(self, input_shape):
        batch, height, width, channels = input_shape
        if self.padding == "same":
            return batch, -(-height // self.strides), -(-width // self.strides), channels
        return self._avg.compute_output_shape(input_shape)

    def get_config(self):
        return {**super().get_config(), "pool_size": self.pool_size, "strides": self.strides,
                "padding": self.padding}


@keras.saving.register_keras_serializable(package=PACKAGE)
class LocalResponseNorm(keras.layers.Layer):
    """Cross-channel local response normalisation, Torch's SpatialCrossMapLRN convention.

    y = x / (k + alpha / size * sum_{size neighbouring channels} x^2) ** beta

    Computed in float32 whatever the input's type (TensorFlow's CPU kernel has no bfloat16).
    """

    def __init__(self, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.size, self.alpha, self.beta, self.k = size, alpha, beta, k

    def call(self, x):
        import tensorflow as tf

        y = tf.nn.local_response_normalization(
            tf.cast(x, "float32"), depth_radius=self.size // 2, bias=self.k, alpha=self.alpha / self.size,
            beta=self.beta)
        return tf.cast(y, x.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "size": self.size, "alpha": self.alpha, "beta": self.beta, "k": self.k}

"""LeNet-5 (LeCun, Bottou, Bengio & Haffner 1998), the course's first architecture.

    32x32xC -> conv1 6@5x5 -> 28x28x6 -> pool 2x2/2 -> 14x14x6
            -> conv2 16@5x5 -> 10x10x16 -> pool 2x2/2 -> 5x5x16
            -> conv3 120@5x5 -> 1x1x120 -> fc4 84 -> fc5 num_classes

The paper calls these layers C1, S2, C3, S4, C5, F6 and OUTPUT. C5 is a convolution
whose 5x5 window covers its whole 5x5 input, so it is the same as a fully connected
layer on 32x32 input; keeping it a convolution lets larger inputs through (their
feature maps are flattened before fc4). With one input channel and 10 classes the
network has 61,706 parameters (the course's "60k").

Two registered variants:

- ``lenet5``: the modern form the course recommends, ReLU and 2x2/2 max pooling.
- ``lenet5_classic``: tanh and 2x2/2 average pooling, as LeCun used. Simplified in
  four ways that keep every shape and change only the detail: plain tanh instead of
  1.7159 tanh(2a/3); plain average pooling instead of the paper's subsampling with a
  trainable coefficient and bias per map (S2 and S4 had 12 and 32 parameters); C3
  connected to all six S2 maps instead of the paper's table of 60 connections; and a
  linear output layer (softmax cross-entropy) instead of Euclidean RBF units. The paper's
  own count is therefore 60,840, ours 61,706 like the modern variant.

28x28 input (MNIST) is zero-padded by 2 pixels on each side in conv1 (``conv1_padding``
"auto"), which is exactly LeCun's placing of the 28x28 digit in a 32x32 field and the
same as the 'SAME' first convolution common in modern re-implementations: every later
shape and the parameter count are those of the 32x32 network. Any channel count works
(conv1 then has 6 * (25 C + 1) parameters).
"""
from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnn import layers
from cnn.errors import unknown_choice
from cnn.models import register

POOLINGS = ("max", "avg")
# The 28x28 MNIST digit sits in LeCun's 32x32 field with 2 pixels of margin.
MNIST_SIZE, LENET_SIZE = 28, 32


class LeNet5(nn.Module):
  """LeNet-5: three 5x5 convolutions, two 2x2/2 poolings, two dense layers.

  Attributes:
    num_classes: outputs of the last layer (10 digits).
    activation: name of the nonlinearity in cnn.layers.ACTIVATIONS ('relu', 'tanh',
      'sigmoid').
    pooling: 'max' or 'avg' (2x2, stride 2).
    conv1_padding: "auto" (2 for a 28x28 input, else 0) or an int P for conv1.
    dropout: rate before fc4 and fc5; 0 (the paper has none) disables it.
    conv_impl: convolution implementation (cnn.conv).
    dtype: compute dtype; parameters stay float32.
  """
  num_classes: int = 10
  activation: str = "relu"
  pooling: str = "max"
  conv1_padding: int | str = "auto"
  dropout: float = 0.0
  conv_impl: str = "auto"
  dtype: Optional[Any] = None

  def _pad1(self, x: jax.Array) -> int:
    """conv1's padding: LeCun's 32x32 field for 28x28 digits, else as given."""
    if self.conv1_padding != "auto":
      return int(self.conv1_padding)
    is_mnist = x.ndim == 4 and x.shape[1] == x.shape[2] == MNIST_SIZE
    return (LENET_SIZE - MNIST_SIZE) // 2 if is_mnist else 0

  def _pool(self, x: jax.Array, name: str) -> jax.Array:
    if self.pooling not in POOLINGS:
      raise unknown_choice("pooling", self.pooling, POOLINGS)
    pool = layers.max_pool if self.pooling == "max" else layers.avg_pool
    return pool(x, 2, 2, layer=name)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    act = layers.activation(self.activation)
    # LeCun's initialisation suits tanh/sigmoid, He's suits ReLU.
    init = layers.he_normal if self.activation == "relu" else nn.initializers.lecun_normal()
    conv = layers.conv_factory(self.conv_impl, self.dtype, kernel_init=init)
    x = act(conv(6, 5, padding=self._pad1(x), name="conv1")(x))
    x = self._pool(x, "pool1")
    x = act(conv(16, 5, padding="VALID", name="conv2")(x))
    x = self._pool(x, "pool2")
    x = act(conv(120, 5, padding="VALID", name="conv3")(x))
    x = layers.flatten(x)
    if self.dropout:
      x = layers.Dropout(self.dropout, name="drop3")(x, train)
    x = act(layers.Dense(84, dtype=self.dtype, kernel_init=init, name="fc4")(x))
    if self.dropout:
      x = layers.Dropout(self.dropout, name="drop4")(x, train)
    x = layers.Dense(self.num_classes, dtype=self.dtype, name="fc5")(x)
    return x.astype(jnp.float32)


@register("lenet5", input_shape=(32, 32, 1), family="lenet")
def lenet5(**kwargs: Any) -> LeNet5:
  """LeNet-5 as used today: ReLU and max pooling (61,706 parameters on 32x32x1)."""
  return LeNet5(**{"activation": "relu", "pooling": "max", **kwargs})


@register("lenet5_classic", input_shape=(32, 32, 1), family="lenet")
def lenet5_classic(**kwargs: Any) -> LeNet5:
  """LeNet-5 as LeCun built it: tanh and average pooling (simplified, see module doc)."""
  return LeNet5(**{"activation": "tanh", "pooling": "avg", **kwargs})

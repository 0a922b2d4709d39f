"""Xception (Chollet 2017, "Xception: Deep Learning with Depthwise Separable
Convolutions"), Figure 5: the "extreme Inception" built from depthwise-separable
convolutions with residual connections.

- Entry flow: conv 32 3x3/2, conv 64 3x3, then three blocks of two separable convs
  (128, 256, 728) + 3x3/2 max pool, each with a 1x1/2 convolution on the shortcut.
- Middle flow: 8 blocks of three separable convs 728 with an identity shortcut.
- Exit flow: separable 728, 1024 + 3x3/2 max pool with a 1x1/2 shortcut, then
  separable 1536, 2048, global average pool, dropout 0.5 (section 4.3), FC.

Batch norm follows every convolution; separable convolutions have no bias and no
non-linearity between their depthwise and pointwise parts (section 4.7). Inside the
blocks ReLU comes before each separable conv (Figure 5); the first block of the entry
flow starts without one, its input having just passed a ReLU. The layer list is that
of the Keras reference implementation (keras.applications.Xception), whose
trainable parameters are the paper's 22,855,952 (Table 3).

Padding: the first (strided) convolution pads 'SAME' (299 -> 150, where Keras's VALID
gives 149), the second is VALID (150 -> 148) as in Keras; separable convs and pools
pad 'SAME'. From 148 on the sizes are Keras's: 74, 37, 19, then 10x10x2048 before
the average pool, and the network accepts any input of at least 5x5 (VALID 3x3 after
a stride 2), not only odd sizes. ``width`` multiplies every filter count (1.0 is the
paper's network) and ``middle_blocks`` sets the length of the middle flow (8).

Parameter names: ``conv1``/``conv1_bn``, ``conv2``/``conv2_bn``, ``entry1`` ..
``entry3`` and ``exit1`` (inside: ``sep1``, ``sep2``, ``shortcut``/``shortcut_bn``),
``middle1`` .. ``middle8`` (``sep1`` .. ``sep3``), ``exit_sepconv1``,
``exit_sepconv2``, ``fc``; every ``sep*`` holds ``sepconv`` (``depthwise``,
``pointwise``) and ``bn``.
"""
from __future__ import annotations

import functools
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnn import layers
from cnn.models import register, scaled

Array = jax.Array
Dtype = Any

ENTRY_FILTERS = (128, 256, 728)
MIDDLE_FILTERS = 728
EXIT_BLOCK_FILTERS = (728, 1024)
EXIT_FILTERS = (1536, 2048)


class SepConvBN(nn.Module):
  """[ReLU] -> separable 3x3 conv (no bias) -> BN."""
  features: int
  relu_first: bool = True
  conv_impl: str = "auto"
  dtype: Optional[Dtype] = None

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    if self.relu_first:
      x = nn.relu(x)
    x = layers.SeparableConv(self.features, 3, padding="SAME", use_bias=False,
                             impl=self.conv_impl, dtype=self.dtype,
                             kernel_init=layers.he_normal, name="sepconv")(x)
    return layers.BatchNorm(dtype=self.dtype, name="bn")(x, train)


class DownsampleBlock(nn.Module):
  """Entry/exit-flow block: [ReLU] sepconv f1 BN, ReLU sepconv f2 BN, 3x3/2 max pool,
  plus a 1x1/2 convolution + BN on the shortcut."""
  features: Sequence[int]
  relu_first: bool = True
  conv_impl: str = "auto"
  dtype: Optional[Dtype] = None

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    conv = layers.conv_factory(self.conv_impl, self.dtype)
    shortcut = conv(self.features[-1], 1, 2, "SAME", use_bias=False, name="shortcut")(x)
    shortcut = layers.BatchNorm(dtype=self.dtype, name="shortcut_bn")(shortcut, train)
    for i, features in enumerate(self.features):
      x = SepConvBN(features, relu_first=self.relu_first or i > 0,
                    conv_impl=self.conv_impl, dtype=self.dtype, name=f"sep{i + 1}")(x, train)
    x = layers.MaxPool(3, 2, "SAME", name="pool")(x)
    return x + shortcut


class MiddleBlock(nn.Module):
  """Middle-flow block: three [ReLU, sepconv, BN] with an identity shortcut."""
  features: int
  conv_impl: str = "auto"
  dtype: Optional[Dtype] = None

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    y = x
    for i in range(3):
      y = SepConvBN(self.features, conv_impl=self.conv_impl, dtype=self.dtype,
                    name=f"sep{i + 1}")(y, train)
    return x + y


class Xception(nn.Module):
  """Xception (Chollet 2017, Figure 5) for 299x299x3 inputs."""
  num_classes: int = 1000
  width: float = 1.0
  middle_blocks: int = 8
  dropout: float = 0.5
  conv_impl: str = "auto"
  dtype: Optional[Dtype] = None

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    ch = functools.partial(scaled, width=self.width)
    conv = layers.conv_factory(self.conv_impl, self.dtype)
    kw = dict(conv_impl=self.conv_impl, dtype=self.dtype)
    # Entry flow.
    x = conv(ch(32), 3, 2, "SAME", use_bias=False, name="conv1")(x)
    x = nn.relu(layers.BatchNorm(dtype=self.dtype, name="conv1_bn")(x, train))
    x = conv(ch(64), 3, 1, "VALID", use_bias=False, name="conv2")(x)
    x = nn.relu(layers.BatchNorm(dtype=self.dtype, name="conv2_bn")(x, train))
    for i, features in enumerate(ENTRY_FILTERS):
      x = DownsampleBlock((ch(features),) * 2, relu_first=i > 0, **kw,
                          name=f"entry{i + 1}")(x, train)
    # Middle flow.
    for i in range(self.middle_blocks):
      x = MiddleBlock(ch(MIDDLE_FILTERS), **kw, name=f"middle{i + 1}")(x, train)
    # Exit flow.
    x = DownsampleBlock(tuple(ch(f) for f in EXIT_BLOCK_FILTERS), **kw,
                        name="exit1")(x, train)
    for i, features in enumerate(EXIT_FILTERS):
      x = SepConvBN(ch(features), relu_first=False, **kw,
                    name=f"exit_sepconv{i + 1}")(x, train)
      x = nn.relu(x)
    x = layers.global_avg_pool(x)
    x = layers.Dropout(self.dropout)(x, train)
    logits = layers.Dense(self.num_classes, dtype=self.dtype, name="fc")(x)
    return logits.astype(jnp.float32)


@register("xception", input_shape=(299, 299, 3), family="xception")
def xception(num_classes: int = 1000, width: float = 1.0, middle_blocks: int = 8,
             dropout: float = 0.5, conv_impl: str = "auto",
             dtype: Optional[Dtype] = None) -> Xception:
  """Xception (Chollet 2017, Figure 5): 22,855,952 parameters (Table 3)."""
  return Xception(num_classes=num_classes, width=width, middle_blocks=middle_blocks,
                  dropout=dropout, conv_impl=conv_impl, dtype=dtype)

"""AlexNet (Krizhevsky, Sutskever & Hinton 2012) and ZFNet (Zeiler & Fergus 2014).

AlexNet follows the course's table ("Full (simplified) AlexNet architecture"):

    [227x227x3]  INPUT
    [55x55x96]   CONV1 96 11x11 stride 4 pad 0     (227 - 11) / 4 + 1 = 55
    [27x27x96]   MAX POOL1 3x3 stride 2            (55 - 3) / 2 + 1 = 27
    [27x27x96]   NORM1
    [27x27x256]  CONV2 256 5x5 stride 1 pad 2
    [13x13x256]  MAX POOL2 3x3 stride 2            (27 - 3) / 2 + 1 = 13
    [13x13x256]  NORM2
    [13x13x384]  CONV3 384 3x3 pad 1
    [13x13x384]  CONV4 384 3x3 pad 1
    [13x13x256]  CONV5 256 3x3 pad 1
    [6x6x256]    MAX POOL3 3x3 stride 2            (13 - 3) / 2 + 1 = 6
    [4096] FC6, [4096] FC7, [1000] FC8

with ReLU after every convolution and hidden FC layer, dropout 0.5 on the inputs of
FC6 and FC7 (as the course and torchvision place it), and NORM being local response
normalisation (k=2, n=5, alpha=1e-4, beta=0.75; the course puts it after the pooling,
the paper before). ``groups=2`` restores the paper's two-GPU split of CONV2, CONV4 and
CONV5, each of which sees only the maps of its own GPU: 60,965,224 parameters (the
paper's "60 million") against 62,378,344 for the one-tower network. Weights use He
initialisation and zero biases rather than the paper's N(0, 0.01) and ones.

The input must fit the course's rule exactly at every layer: 227x227 as in the course
(the paper's "224" does not divide), and the smallest that fits is 67x67
(67 -> 15 -> 7 -> 3 -> 1x1x256, FC6 then has 256 inputs). Anything else raises the
layer's ConfigError, e.g. a 64x64 input at conv1: (64 - 11) / 4 + 1 = 14.25.

ZFNet is the course's "AlexNet but": CONV1 7x7 stride 2 and CONV3, 4, 5 with 512,
1024, 512 filters (the larger model of Zeiler & Fergus, Table 2), with the rest of
the paper's Fig. 3, whose CONV2 has stride 2 (the course's summary leaves that out:
with stride 1 FC6 would see 14x14 maps and have 205M weights). On the paper's 224x224
input its Fig. 3 sizes follow exactly when conv1 pads one row and column at the bottom
and right, and the first two pools round up (as cuda-convnet and Caffe pooling did,
padded here with one row and column of -inf at the bottom and right):

    224 -conv1 7x7/2-> 110 -pool 3x3/2-> 55 -conv2 5x5/2-> 26 -pool-> 13
        -conv3,4,5 3x3 pad 1-> 13 -pool 3x3/2-> 6 -> 6x6x512 -> FC6 4096, FC7, FC8

107,627,624 parameters. ZFNet was trained on one GPU, so it has no groups.

``alexnet_torchvision`` is the AlexNet torchvision builds (and ships ImageNet weights
for, see `cnn.pretrained`): the one-tower variant of Krizhevsky's "One weird trick for
parallelizing convolutional neural networks" (2014), not the course's table. It has
64, 192, 384, 256, 256 filters, conv1 11x11/4 with padding 2, no LRN, and an adaptive
average pool to 6x6 before FC6 (so FC6 has 9,216 inputs at any input size), and it
floors fractional output sizes as PyTorch does (at 224x224 conv1 gives
floor((224 + 4 - 11) / 4) + 1 = 55): 61,100,840 parameters. The smallest input is
63x63 (63 -> 15 -> 7 -> 7 -> 3 -> 3 -> 1, then pooled up to 6x6).
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnn import layers
from cnn.conv import Padding
from cnn.models import register

# One row/column at the bottom and right: "round up" for a stride-2 window.
PAD_END: Padding = ((0, 1), (0, 1))


class AlexNet(nn.Module):
  """Five convolutions (two followed by pool + LRN), a third pool, three FC layers.

  Attributes:
    num_classes: outputs of fc8.
    filters: filters of conv1..conv5.
    conv1_kernel, conv1_stride, conv1_padding: the first convolution.
    conv2_stride, conv2_padding: the second convolution (5x5).
    pool_paddings: padding of pool1, pool2, pool3 (3x3, stride 2).
    groups: 2 splits conv2, conv4 and conv5 into the paper's two GPU towers.
    lrn: local response normalisation after pool1 and pool2.
    strict: False floors fractional output sizes (PyTorch's rule) instead of rejecting.
    pool_to: average-pool the last map adaptively to pool_to x pool_to before FC6
      (torchvision's AdaptiveAvgPool2d); None flattens it as it is.
    fc_width: units of fc6 and fc7.
    dropout: rate on the inputs of fc6 and fc7.
    conv_impl: convolution implementation (cnn.conv).
    dtype: compute dtype; parameters stay float32.
  """
  num_classes: int = 1000
  filters: Sequence[int] = (96, 256, 384, 384, 256)
  conv1_kernel: int = 11
  conv1_stride: int = 4
  conv1_padding: Padding = 0
  conv2_stride: int = 1
  conv2_padding: Padding = 2
  pool_paddings: Sequence[Padding] = ("VALID", "VALID", "VALID")
  groups: int = 1
  lrn: bool = True
  strict: bool = True
  pool_to: Optional[int] = None
  fc_width: int = 4096
  dropout: float = 0.5
  conv_impl: str = "auto"
  dtype: Optional[Any] = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    conv = layers.conv_factory(self.conv_impl, self.dtype)
    f1, f2, f3, f4, f5 = self.filters
    p1, p2, p3 = self.pool_paddings
    strict = self.strict
    x = nn.relu(conv(f1, self.conv1_kernel, self.conv1_stride, self.conv1_padding,
                     strict=strict, name="conv1")(x))
    x = layers.MaxPool(3, 2, p1, strict=strict, name="pool1")(x)
    if self.lrn:
      x = layers.LocalResponseNorm(name="norm1")(x)
    x = nn.relu(conv(f2, 5, self.conv2_stride, self.conv2_padding, groups=self.groups,
                     strict=strict, name="conv2")(x))
    x = layers.MaxPool(3, 2, p2, strict=strict, name="pool2")(x)
    if self.lrn:
      x = layers.LocalResponseNorm(name="norm2")(x)
    # conv3 reads both towers in the paper; conv4 and conv5 only their own.
    x = nn.relu(conv(f3, 3, 1, 1, strict=strict, name="conv3")(x))
    x = nn.relu(conv(f4, 3, 1, 1, groups=self.groups, strict=strict, name="conv4")(x))
    x = nn.relu(conv(f5, 3, 1, 1, groups=self.groups, strict=strict, name="conv5")(x))
    x = layers.MaxPool(3, 2, p3, strict=strict, name="pool3")(x)
    if self.pool_to is not None:
      x = layers.adaptive_avg_pool(x, self.pool_to)
    x = layers.flatten(x)
    x = layers.Dropout(self.dropout, name="drop6")(x, train)
    x = nn.relu(layers.Dense(self.fc_width, dtype=self.dtype, name="fc6")(x))
    x = layers.Dropout(self.dropout, name="drop7")(x, train)
    x = nn.relu(layers.Dense(self.fc_width, dtype=self.dtype, name="fc7")(x))
    x = layers.Dense(self.num_classes, dtype=self.dtype, name="fc8")(x)
    return x.astype(jnp.float32)


@register("alexnet", input_shape=(227, 227, 3), family="alexnet")
def alexnet(**kwargs: Any) -> AlexNet:
  """AlexNet as in the course's table (227x227x3; groups=2 for the two-GPU split)."""
  return AlexNet(**kwargs)


ZFNET = dict(filters=(96, 256, 512, 1024, 512), conv1_kernel=7, conv1_stride=2,
             conv1_padding=PAD_END, conv2_stride=2, conv2_padding="VALID",
             pool_paddings=(PAD_END, PAD_END, "VALID"))


@register("zfnet", input_shape=(224, 224, 3), family="alexnet")
def zfnet(**kwargs: Any) -> AlexNet:
  """ZFNet: AlexNet with conv1 7x7/2, conv2 stride 2 and 512/1024/512 filters in conv3-5."""
  return AlexNet(**{**ZFNET, **kwargs})


# torchvision's AlexNet (torchvision/models/alexnet.py): see the module docstring.
TORCHVISION = dict(filters=(64, 192, 384, 256, 256), conv1_padding=2, lrn=False,
                   strict=False, pool_to=6)


@register("alexnet_torchvision", input_shape=(224, 224, 3), family="alexnet")
def alexnet_torchvision(**kwargs: Any) -> AlexNet:
  """AlexNet as torchvision builds it: 64/192/384/256/256 filters, no LRN, 6x6 pool."""
  return AlexNet(**{**TORCHVISION, **kwargs})

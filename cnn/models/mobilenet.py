"""MobileNet v1 (Howard et al. 2017, "MobileNets: Efficient Convolutional Neural
Networks for Mobile Vision Applications").

A 3x3/2 convolution with 32 filters, then 13 depthwise-separable blocks (Table 1):
a 3x3 depthwise convolution + BN + ReLU (one filter per channel) followed by a 1x1
pointwise convolution + BN + ReLU (Figure 3), global average pool, FC.

The width multiplier alpha (``width``) thins every layer to alpha times its channels
(section 3.3); the registered ``mobilenet_v1_075``, ``_050`` and ``_025`` are the
paper's 0.75, 0.5 and 0.25 MobileNet-224 of Table 6. Cost of a block with M input and
N output channels on a D_F x D_F map: D_K^2 M D_F^2 + M N D_F^2 mult-adds (equation 5).

Table 1 lists the last depthwise layer as "Conv dw / s2" on a 7x7 input with a 7x7
output; that stride is a typo (the output and the counts of Table 6 need stride 1).

Parameter names: ``conv1`` (``conv``, ``bn``), ``block1`` .. ``block13`` (inside:
``depthwise``, ``depthwise_bn``, ``pointwise``, ``pointwise_bn``), ``fc``. All
convolutions pad 'SAME' (224 -> 112 -> 56 -> 28 -> 14 -> 7).
"""
from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnn import layers
from cnn.models import register

Array = jax.Array
Dtype = Any

# Table 1 of Howard et al.: (pointwise filters, depthwise stride) of the 13 blocks.
MOBILENET_V1_BLOCKS = (
    (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
    (512, 1), (512, 1), (512, 1), (512, 1), (512, 1),
    (1024, 2), (1024, 1),
)
STEM_FILTERS = 32


def thin(channels: int, width: float) -> int:
  """alpha * channels (section 3.3), at least 1."""
  return max(1, int(round(channels * width)))


class DepthwiseSeparableBlock(nn.Module):
  """3x3 depthwise conv + BN + ReLU, then 1x1 pointwise conv to `features` + BN + ReLU
  (Howard et al. Figure 3). The depthwise stride does the downsampling."""
  features: int
  strides: int = 1
  conv_impl: str = "auto"
  dtype: Optional[Dtype] = None

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    conv = layers.conv_factory(self.conv_impl, self.dtype)
    channels = x.shape[-1]
    x = conv(channels, 3, self.strides, "SAME", groups=channels, use_bias=False,
             name="depthwise")(x)
    x = nn.relu(layers.BatchNorm(dtype=self.dtype, name="depthwise_bn")(x, train))
    x = conv(self.features, 1, use_bias=False, name="pointwise")(x)
    return nn.relu(layers.BatchNorm(dtype=self.dtype, name="pointwise_bn")(x, train))


class MobileNetV1(nn.Module):
  """MobileNet v1 with width multiplier `width` (alpha)."""
  num_classes: int = 1000
  width: float = 1.0
  conv_impl: str = "auto"
  dtype: Optional[Dtype] = None

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    conv = layers.conv_factory(self.conv_impl, self.dtype)
    x = conv(thin(STEM_FILTERS, self.width), 3, 2, "SAME", use_bias=False,
             name="conv1")(x)
    x = nn.relu(layers.BatchNorm(dtype=self.dtype, name="conv1_bn")(x, train))
    for i, (features, strides) in enumerate(MOBILENET_V1_BLOCKS, start=1):
      x = DepthwiseSeparableBlock(thin(features, self.width), strides, self.conv_impl,
                                  self.dtype, name=f"block{i}")(x, train)
    x = layers.global_avg_pool(x)
    logits = layers.Dense(self.num_classes, dtype=self.dtype, name="fc")(x)
    return logits.astype(jnp.float32)


# Howard et al. Table 6: mult-adds and parameters of each width at 224x224.
@register("mobilenet_v1", input_shape=(224, 224, 3), family="mobilenet",
          description="MobileNet v1 (Howard et al. 2017), width multiplier `width`; "
                      "1.0: 569M mult-adds, 4.2M parameters")
@register("mobilenet_v1_075", input_shape=(224, 224, 3), family="mobilenet", width=0.75,
          description="0.75 MobileNet-224 v1: 325M mult-adds, 2.6M parameters")
@register("mobilenet_v1_050", input_shape=(224, 224, 3), family="mobilenet", width=0.5,
          description="0.5 MobileNet-224 v1: 149M mult-adds, 1.3M parameters")
@register("mobilenet_v1_025", input_shape=(224, 224, 3), family="mobilenet", width=0.25,
          description="0.25 MobileNet-224 v1: 41M mult-adds, 0.5M parameters")
def mobilenet_v1(num_classes: int = 1000, width: float = 1.0, conv_impl: str = "auto",
                 dtype: Optional[Dtype] = None) -> MobileNetV1:
  """MobileNet v1 (Howard et al. 2017, Table 1) with width multiplier alpha = `width`."""
  return MobileNetV1(num_classes=num_classes, width=width, conv_impl=conv_impl,
                     dtype=dtype)

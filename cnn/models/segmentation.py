"""Segmentation networks: FCN (Long et al. 2015, "Fully Convolutional Networks for
Semantic Segmentation"), U-Net (Ronneberger et al. 2015, "U-Net: Convolutional
Networks for Biomedical Image Segmentation") and SegNet (Badrinarayanan, Kendall &
Cipolla 2017, "SegNet: A Deep Convolutional Encoder-Decoder Architecture for Image
Segmentation").

All output per-pixel logits (N, H, W, num_classes) in float32.

FCN
---
A VGG-16-style backbone (13 3x3 convs in 5 stages of 2, 2, 3, 3, 3, each closed by a
2x2/2 max pool) made fully convolutional: fc6 is a 7x7 convolution and fc7 a 1x1 with
64 * width channels (4096 at the default width 64, VGG-16's), ``score_fr`` a 1x1 to
the classes. The backbone lives here rather than in vgg.py so the two stay
independent; ``width`` is the first stage's channel count (64, 128, 256, 512, 512 at
64), small widths give tiny test variants.

Upsampling is a transposed convolution with kernel 2f and stride f, initialised to
bilinear interpolation (each class upsampled on its own, as the paper's
``surgery.interp``). As in the paper (section 4.3) the 2x upsamplings inside the skip
nets are learned and the final one (32x, 16x or 8x) is fixed bilinear, unless
``learn_final_upsample=True``. Skip scores (``score_pool4``, ``score_pool3``) and
``score_fr`` are zero-initialised (sections 4.1-4.2), so each net starts from its
coarser parent's prediction.

- ``fcn32s``: score_fr upsampled 32x.
- ``fcn16s``: 2x(score_fr) + score_pool4, upsampled 16x.
- ``fcn8s``: 2x(2x(score_fr) + score_pool4) + score_pool3, upsampled 8x.

The paper pads the input by 100 pixels and uses a VALID 7x7 fc6, then crops; here
convolutions pad 'SAME' and pools round up ('SAME', Caffe's ceil mode), so any input
size works: pool_k has ceil(H / 2^k) rows, and every upsampled map (N + 1) f rows is
cropped from row f / 2 (where its bilinear kernel is centred on the input pixels) to
the size of the map it is added to, and finally to the input's H x W.

U-Net
-----
Contracting path: [two 3x3 conv + ReLU] + 2x2/2 max pool, channels doubling from
``width`` (64, 128, 256, 512, then 1024 at the bottom in the paper); expanding path:
2x2/2 up-convolution halving the channels, concatenation with the (cropped) skip
features, two 3x3 conv + ReLU; a final 1x1 conv to the classes. Optional batch norm
after each 3x3 conv (``batch_norm=True``; not in the paper). The paper's dropout at
the end of the contracting path is left out.

The paper uses unpadded (VALID) convolutions, 572x572 in -> 388x388 out, and crops
the skip features to the centre: ``padding="VALID"`` (registered as ``unet_valid``)
does that. The default ``padding="SAME"`` keeps the size, so the output is the input's
H x W, which must then be a multiple of 2^depth (16).

SegNet
------
The course's third kind of upsampling (deck 2, "Types of Upsampling": unpooling). The
encoder is VGG-16's 13 convolutions (stages of 2, 2, 3, 3, 3 convs with width x 1, 2,
4, 8, 8 channels), each 3x3 + batch norm + ReLU, every stage closed by a 2x2/2 max
pool that remembers its switches (the argmax of each window,
``cnn.layers.max_pool(..., return_indices=True)``). The decoder mirrors it: each stage
max-unpools with the switches of its encoder stage (``cnn.layers.max_unpool``: every
value back where its maximum was, zeros elsewhere; nothing learned, and unlike
U-Net no encoder features are copied across), then convolves the sparse map dense;
the last convolution of a decoder stage has the channels of the stage above, and
the very last one (``conv1_1_D``) is the per-pixel classifier, with no BN or ReLU,
as in the authors' Caffe model. Parameter names follow that model (``conv5_3_D`` ..
``conv1_1_D``). ``depth`` keeps the first stages only (small inputs); pools pad
'SAME' and every unpooling restores its encoder stage's size exactly, so any input
size works.
"""
from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from cnn import layers
from cnn.errors import ConfigError, unknown_choice
from cnn.models import register

Array = jax.Array
Dtype = Any

# VGG-16 (Simonyan & Zisserman 2014, Table 1 column D): convs per stage, channels as
# multiples of the first stage's.
VGG16_STAGES = ((2, 1), (2, 2), (3, 4), (3, 8), (3, 8))
FCN_STRIDES = (32, 16, 8)


# ----------------------------------------------------------------------------------
# Bilinear upsampling and cropping
# ----------------------------------------------------------------------------------

def bilinear_kernel_1d(size: int) -> np.ndarray:
  """The 1-D bilinear interpolation kernel of FCN's ``upsample_filt``: a triangle of
  half-width ceil(size / 2) centred on the kernel (e.g. size 4: .25 .75 .75 .25)."""
  factor = (size + 1) // 2
  center = factor - 1 if size % 2 == 1 else factor - 0.5
  return (1 - np.abs(np.arange(size) - center) / factor).astype(np.float32)


def bilinear_init(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> Array:
  """Kernel init (kh, kw, C, C) for a transposed convolution: bilinear interpolation of
  each channel on its own (zero between different channels)."""
  del key
  kh, kw, cin, cout = shape
  if cin != cout:
    raise ConfigError(
        f"Bilinear upsampling maps each channel to itself, so it needs as many input "
        f"as output channels, got {cin} and {cout}.")
  kernel = np.outer(bilinear_kernel_1d(kh), bilinear_kernel_1d(kw))
  return jnp.asarray(kernel[:, :, None, None] * np.eye(cin, dtype=np.float32), dtype)


def bilinear_upsample(x: Array, factor: int) -> Array:
  """A fixed transposed convolution with FCN's bilinear 2f x 2f kernel and stride f,
  per channel: (N - 1) f + 2f rows out (crop from row f / 2 to align).

  The kernel is an outer product, so it runs as two 1-D passes (2f taps each instead
  of 4 f^2: 128 instead of 4,096 for FCN-32s).
  """
  size = 2 * factor
  channels = x.shape[-1]
  taps = jnp.asarray(bilinear_kernel_1d(size), x.dtype)
  for axis in range(2):
    shape = [1, 1, 1, channels]
    shape[axis] = size
    kernel = jnp.broadcast_to(taps.reshape([size if a == axis else 1 for a in range(4)]),
                              shape)
    dilation, padding = [1, 1], [(0, 0), (0, 0)]
    dilation[axis], padding[axis] = factor, (size - 1, size - 1)
    # A transposed convolution is a convolution over the input dilated by the
    # stride and padded by size - 1 (the kernel is symmetric: no flip needed).
    x = lax.conv_general_dilated(
        x, kernel, window_strides=(1, 1), padding=padding, lhs_dilation=dilation,
        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=channels)
  return x


def crop(x: Array, size: tuple[int, int], offset: tuple[int, int], *,
         layer: str = "crop") -> Array:
  """x[:, oy:oy + h, ox:ox + w]; ConfigError if x does not cover that window."""
  (h, w), (oy, ox) = size, offset
  if oy < 0 or ox < 0 or x.shape[1] < oy + h or x.shape[2] < ox + w:
    raise ConfigError(
        f"{layer}: cannot crop {h}x{w} at offset ({oy}, {ox}) from a "
        f"{x.shape[1]}x{x.shape[2]} map; the input size does not fit this network.")
  return x[:, oy:oy + h, ox:ox + w]


def center_crop(x: Array, size: tuple[int, int], *, layer: str = "crop") -> Array:
  """The central h x w window of x (U-Net's "copy and crop")."""
  offset = ((x.shape[1] - size[0]) // 2, (x.shape[2] - size[1]) // 2)
  return crop(x, size, offset, layer=layer)


# ----------------------------------------------------------------------------------
# FCN
# ----------------------------------------------------------------------------------

class FCN(nn.Module):
  """FCN-32s / 16s / 8s (`stride`) on a VGG-16-style backbone."""
  num_classes: int = 21
  stride: int = 32
  width: int = 64
  dropout: float = 0.5
  learn_final_upsample: bool = False
  conv_impl: str = "auto"
  dtype: Optional[Dtype] = None

  def upsample(self, x: Array, factor: int, size: tuple[int, int], learned: bool,
               name: str) -> Array:
    """x`factor` transposed convolution (2f kernel, bilinear init), cropped to `size`."""
    if learned:
      x = layers.ConvTranspose(self.num_classes, 2 * factor, factor, "VALID",
                               use_bias=False, dtype=self.dtype,
                               kernel_init=bilinear_init, name=name)(x)
    else:
      x = bilinear_upsample(x, factor)
    return crop(x, size, (factor // 2, factor // 2), layer=name)

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    if self.stride not in FCN_STRIDES:
      raise unknown_choice("FCN stride", self.stride, [str(s) for s in FCN_STRIDES])
    conv = layers.conv_factory(self.conv_impl, self.dtype)
    score = layers.conv_factory(self.conv_impl, self.dtype,
                                kernel_init=nn.initializers.zeros)
    input_size = x.shape[1:3]
    pools = {}
    for stage, (convs, multiple) in enumerate(VGG16_STAGES, start=1):
      for i in range(1, convs + 1):
        x = nn.relu(conv(self.width * multiple, 3, name=f"conv{stage}_{i}")(x))
      x = layers.MaxPool(2, 2, "SAME", name=f"pool{stage}")(x)
      pools[stage] = x
    x = nn.relu(conv(64 * self.width, 7, name="fc6")(x))
    x = layers.Dropout(self.dropout)(x, train)
    x = nn.relu(conv(64 * self.width, 1, name="fc7")(x))
    x = layers.Dropout(self.dropout)(x, train)
    x = score(self.num_classes, 1, name="score_fr")(x)
    final = {32: "upscore", 16: "upscore16", 8: "upscore8"}[self.stride]
    if self.stride <= 16:
      skip = pools[4]
      x = self.upsample(x, 2, skip.shape[1:3], True, "upscore2")
      x = x + score(self.num_classes, 1, name="score_pool4")(skip)
    if self.stride <= 8:
      skip = pools[3]
      x = self.upsample(x, 2, skip.shape[1:3], True, "upscore_pool4")
      x = x + score(self.num_classes, 1, name="score_pool3")(skip)
    x = self.upsample(x, self.stride, input_size, self.learn_final_upsample, final)
    return x.astype(jnp.float32)


# PASCAL VOC: 20 classes + background, images up to 500x500.
@register("fcn32s", input_shape=(500, 500, 3), family="segmentation", stride=32,
          description="FCN-32s on VGG-16 (Long et al. 2015): score_fr upsampled 32x")
@register("fcn16s", input_shape=(500, 500, 3), family="segmentation", stride=16,
          description="FCN-16s on VGG-16 (Long et al. 2015): pool4 skip, upsampled 16x")
@register("fcn8s", input_shape=(500, 500, 3), family="segmentation", stride=8,
          description="FCN-8s on VGG-16 (Long et al. 2015): pool3 and pool4 skips, "
                      "upsampled 8x")
def fcn(num_classes: int = 21, stride: int = 32, width: int = 64, dropout: float = 0.5,
        learn_final_upsample: bool = False, conv_impl: str = "auto",
        dtype: Optional[Dtype] = None) -> FCN:
  """FCN (Long et al. 2015) with output stride 32, 16 or 8 on a VGG-16-style backbone."""
  return FCN(num_classes=num_classes, stride=stride, width=width, dropout=dropout,
             learn_final_upsample=learn_final_upsample, conv_impl=conv_impl, dtype=dtype)


# ----------------------------------------------------------------------------------
# U-Net
# ----------------------------------------------------------------------------------

class DoubleConv(nn.Module):
  """Two 3x3 conv (+ BN) + ReLU: one level of U-Net's contracting or expanding path."""
  features: int
  padding: str = "SAME"
  batch_norm: bool = False
  conv_impl: str = "auto"
  dtype: Optional[Dtype] = None

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    conv = layers.conv_factory(self.conv_impl, self.dtype)
    for i in (1, 2):
      x = conv(self.features, 3, 1, self.padding, use_bias=not self.batch_norm,
               name=f"conv{i}")(x)
      if self.batch_norm:
        x = layers.BatchNorm(dtype=self.dtype, name=f"bn{i}")(x, train)
      x = nn.relu(x)
    return x


class UNet(nn.Module):
  """U-Net (Ronneberger et al. 2015, Figure 1).

  Parameter names: ``down1`` .. ``down{depth}`` (``conv1``, ``conv2``), ``bottom``,
  ``upconv{depth}`` .. ``upconv1`` (the 2x2 up-convolutions), ``up{depth}`` ..
  ``up1``, ``final``. Level k has width * 2^(k-1) channels.
  """
  num_classes: int = 2
  width: int = 64
  depth: int = 4
  padding: str = "SAME"
  batch_norm: bool = False
  conv_impl: str = "auto"
  dtype: Optional[Dtype] = None

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    padding = self.padding.upper()
    if padding not in ("SAME", "VALID"):
      raise unknown_choice("U-Net padding", self.padding, ["SAME", "VALID"])
    multiple = 2 ** self.depth
    if padding == "SAME" and (x.shape[1] % multiple or x.shape[2] % multiple):
      raise ConfigError(
          f"U-Net with padding 'SAME' and {self.depth} poolings needs an input whose "
          f"height and width are multiples of {multiple}, got {x.shape[1]}x{x.shape[2]}; "
          "resize or pad the images.")
    level = dict(padding=padding, batch_norm=self.batch_norm, conv_impl=self.conv_impl,
                 dtype=self.dtype)
    skips = []
    for k in range(1, self.depth + 1):
      x = DoubleConv(self.width * 2 ** (k - 1), **level, name=f"down{k}")(x, train)
      skips.append(x)
      x = layers.MaxPool(2, 2, "VALID", name=f"pool{k}")(x)
    x = DoubleConv(self.width * multiple, **level, name="bottom")(x, train)
    for k in range(self.depth, 0, -1):
      features = self.width * 2 ** (k - 1)
      x = layers.ConvTranspose(features, 2, 2, "VALID", dtype=self.dtype,
                               kernel_init=layers.he_normal, name=f"upconv{k}")(x)
      skip = center_crop(skips[k - 1], x.shape[1:3], layer=f"up{k}")
      x = jnp.concatenate([skip, x.astype(skip.dtype)], axis=-1)
      x = DoubleConv(features, **level, name=f"up{k}")(x, train)
    conv = layers.conv_factory(self.conv_impl, self.dtype)
    return conv(self.num_classes, 1, name="final")(x).astype(jnp.float32)


@register("unet", input_shape=(512, 512, 1), family="segmentation")
@register("unet_valid", input_shape=(572, 572, 1), family="segmentation",
          padding="VALID",
          description="The paper's U-Net: unpadded convolutions, cropped skips, "
                      "572x572 -> 388x388")
def unet(num_classes: int = 2, width: int = 64, depth: int = 4, padding: str = "SAME",
         batch_norm: bool = False, conv_impl: str = "auto",
         dtype: Optional[Dtype] = None) -> UNet:
  """U-Net (Ronneberger et al. 2015) with 'SAME' convolutions: output size = input size."""
  return UNet(num_classes=num_classes, width=width, depth=depth, padding=padding,
              batch_norm=batch_norm, conv_impl=conv_impl, dtype=dtype)


# ----------------------------------------------------------------------------------
# SegNet
# ----------------------------------------------------------------------------------

class SegNet(nn.Module):
  """SegNet (Badrinarayanan et al. 2017, Figure 2): a VGG-16 encoder whose max-pooling
  switches drive the decoder's unpooling.

  Parameter names: encoder ``conv{s}_{i}`` / ``bn{s}_{i}``, decoder ``conv{s}_{i}_D``
  / ``bn{s}_{i}_D`` (i counting down, as in the Caffe model). With
  ``mutable=["intermediates"]`` the module sows, per stage s, ``encoder{s}`` (the
  features it pools), ``switches{s}``, ``decoder{s}`` (what the decoder unpools) and
  ``unpooled{s}``.
  """
  num_classes: int = 11
  width: int = 64
  depth: int = 5
  batch_norm: bool = True
  conv_impl: str = "auto"
  dtype: Optional[Dtype] = None

  def conv_bn_relu(self, x: Array, features: int, name: str, train: bool) -> Array:
    """3x3 convolution (+ BN) + ReLU; the bias is dropped where BN's shift replaces it."""
    conv = layers.conv_factory(self.conv_impl, self.dtype)
    x = conv(features, 3, 1, "SAME", use_bias=not self.batch_norm, name=f"conv{name}")(x)
    if self.batch_norm:
      x = layers.BatchNorm(dtype=self.dtype, name=f"bn{name}")(x, train)
    return nn.relu(x)

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    if not 1 <= self.depth <= len(VGG16_STAGES):
      raise ConfigError(f"SegNet depth must be 1..{len(VGG16_STAGES)} (VGG-16's stages), "
                        f"got {self.depth}.")
    stages = VGG16_STAGES[:self.depth]
    switches = []
    for stage, (convs, multiple) in enumerate(stages, start=1):
      for i in range(1, convs + 1):
        x = self.conv_bn_relu(x, self.width * multiple, f"{stage}_{i}", train)
      self.sow("intermediates", f"encoder{stage}", x)
      shape = x.shape
      x, where = layers.max_pool(x, 2, 2, "SAME", layer=f"pool{stage}",
                                 return_indices=True)
      self.sow("intermediates", f"switches{stage}", where)
      switches.append((where, shape))
    for stage in range(self.depth, 0, -1):
      where, shape = switches[stage - 1]
      self.sow("intermediates", f"decoder{stage}", x)
      x = layers.max_unpool(x, where, output_shape=shape)
      self.sow("intermediates", f"unpooled{stage}", x)
      convs, multiple = stages[stage - 1]
      above = self.width * stages[stage - 2][1] if stage > 1 else None
      for i in range(convs, 0, -1):
        name = f"{stage}_{i}_D"
        if i > 1:
          x = self.conv_bn_relu(x, self.width * multiple, name, train)
        elif above is not None:
          x = self.conv_bn_relu(x, above, name, train)
        else:                                   # conv1_1_D: the classifier
          conv = layers.conv_factory(self.conv_impl, self.dtype)
          x = conv(self.num_classes, 3, 1, "SAME", name=f"conv{name}")(x)
    return x.astype(jnp.float32)


# CamVid (the paper's main benchmark): 11 classes, 360x480 images.
@register("segnet", input_shape=(360, 480, 3), family="segmentation")
def segnet(num_classes: int = 11, width: int = 64, depth: int = 5, batch_norm: bool = True,
           conv_impl: str = "auto", dtype: Optional[Dtype] = None) -> SegNet:
  """SegNet (Badrinarayanan et al. 2017): VGG-16 encoder, decoder unpooling with its switches."""
  return SegNet(num_classes=num_classes, width=width, depth=depth, batch_norm=batch_norm,
                conv_impl=conv_impl, dtype=dtype)

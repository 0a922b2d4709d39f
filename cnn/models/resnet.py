"""ResNets (He et al. 2016, "Deep Residual Learning for Image Recognition") and their
plain twins, for CIFAR-10 (section 4.2) and ImageNet (Table 1), plus ResNeXt-50.

The codebase exists for plain-vs-residual ablations (the paper's Fig. 6 and Table 6 on
CIFAR-10, Table 2 on ImageNet), so every ResNet has a plain twin built by the same code
with ``residual=False``: the same layers, the additions left out. With shortcut option
A the two have the same parameter tree (names and shapes), so one checkpoint layout,
one optimizer state and one per-layer report serve both.

Shortcut options (section 3.3):

- ``"A"``: identity; where the shape changes, subsample by taking every second pixel
  and append zero channels (`pad_shortcut`). Parameter-free.
- ``"B"``: identity, and a 1x1 projection (+ BN) only where the shape changes.
- ``"C"``: a 1x1 projection (+ BN) on every shortcut.

A plain net has no shortcuts, so ``shortcut`` does not change it.

Parameter names (top-level names group parameters by stage; per-stage logging such as
gradient norms relies on this exact scheme, see `stage_of`):

- ``conv1``, ``bn1``: the stem ("stem").
- ``stage{s}_block{b}``: block b (from 0) of stage s (from 1), ("stage{s}"). Inside a
  block: ``conv1``/``bn1``, ``conv2``/``bn2`` (and ``conv3``/``bn3`` in a bottleneck)
  on the residual branch, ``proj_conv``/``proj_bn`` for a projection shortcut.
- ``head``: the final Dense ("head").

CIFAR nets have stages 1-3 (16, 32, 64 filters on 32x32, 16x16, 8x8 maps), ImageNet
nets stages 1-4 (the paper's conv2_x to conv5_x).

Strided layers use `centered_same_padding`: TensorFlow's 'SAME' output size
ceil(N / S), but with the padding placed as in the paper's Torch code and PyTorch
(pad (k - 1) // 2 before). TensorFlow's placement pads after instead, which centres a
stride-2 3x3 window on pixel 2i + 1 while option A's shortcut (and a 1x1 projection)
takes pixel 2i: the branch and the shortcut would be added one pixel apart.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnn import conv as conv_lib
from cnn import conv_native
from cnn import layers
from cnn.errors import ConfigError, unknown_choice
from cnn.models import register, stage_of  # noqa: F401 -- the scheme's names

Array = jax.Array
Dtype = Any
ModuleDef = Any

SHORTCUTS = ("A", "B", "C")
CIFAR_DEPTHS = (20, 32, 44, 56, 110, 1202)
# He et al. Table 1: blocks per stage (conv2_x .. conv5_x) and block type.
IMAGENET_STAGES = {
    18: ((2, 2, 2, 2), "basic"),
    34: ((3, 4, 6, 3), "basic"),
    50: ((3, 4, 6, 3), "bottleneck"),
    101: ((3, 4, 23, 3), "bottleneck"),
    152: ((3, 8, 36, 3), "bottleneck"),
}
BOTTLENECK_EXPANSION = 4


# ----------------------------------------------------------------------------------
# Helpers: padding, the option-A shortcut, parameter groups
# ----------------------------------------------------------------------------------

def centered_same_padding(size: Sequence[int], kernel: int, stride: int):
  """Padding for a `kernel`/`stride` window over spatial `size` (H, W): output
  ceil(N / S) as 'SAME', windows placed as PyTorch's ``padding=(k - 1) // 2``.

  Returns explicit ((top, bottom), (left, right)), or 'SAME' where the window is
  smaller than the stride (a strided 1x1: no padding, every S-th pixel from 0), which
  explicit padding cannot express without a fractional output size.
  """
  pads = []
  for n in size:
    out = -(-n // stride)
    total = (out - 1) * stride + kernel - n
    if total < 0:
      return "SAME"
    before = min((kernel - 1) // 2, total)
    pads.append((before, total - before))
  return tuple(pads)


def pad_shortcut(x: Array, features: int, stride: int) -> Array:
  """Option A's shortcut: every `stride`-th pixel (from the first), then zero
  channels appended up to `features`. Parameter-free.

  The zeros go after the input channels, as in the authors' Torch code
  (fb.resnet.torch concatenates the identity with a zeroed copy).
  """
  if stride > 1:
    x = x[:, ::stride, ::stride, :]
  extra = features - x.shape[-1]
  if extra < 0:
    raise ValueError(f"option A cannot reduce channels ({x.shape[-1]} -> {features})")
  if extra:
    x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, extra)))
  return x


def _shortcut(x: Array, features: int, stride: int, option: str, conv: ModuleDef,
              norm: ModuleDef, train: bool) -> Array:
  """The shortcut of a residual block; projection submodules are created in the
  calling block (names proj_conv, proj_bn)."""
  changes_shape = stride != 1 or x.shape[-1] != features
  if option == "C" or (option == "B" and changes_shape):
    y = conv(features, 1, stride, padding=centered_same_padding(x.shape[1:3], 1, stride),
             name="proj_conv")(x)
    return norm(name="proj_bn")(y, train)
  if changes_shape:
    return pad_shortcut(x, features, stride)
  return x


def _check_options(residual: bool, shortcut: str, zero_init_residual: bool) -> str:
  option = shortcut.upper() if isinstance(shortcut, str) else shortcut
  if option not in SHORTCUTS:
    raise unknown_choice("shortcut option", shortcut, SHORTCUTS)
  if zero_init_residual and not residual:
    raise ConfigError(
        "zero_init_residual needs residual=True: a plain net whose blocks start with "
        "zero BN scale outputs zeros; drop the option for the plain twin.")
  return option


# ----------------------------------------------------------------------------------
# Blocks
# ----------------------------------------------------------------------------------

def block_output_relu(conv_impl: str, residual: bool) -> Callable[[Array], Array]:
  """The ReLU that ends a block: `conv_native.relu_materialized` for residual blocks
  whose convolutions run on oneDNN (it stops XLA recomputing the chain of earlier
  blocks' outputs, see there; reverse mode only, as those convolutions are), else
  `nn.relu`. Plain blocks have no chain: their output feeds only a convolution."""
  if residual and conv_lib.resolve_impl(conv_impl) == "onednn":
    return conv_native.relu_materialized
  return nn.relu


class BasicBlock(nn.Module):
  """Two 3x3 convolutions, BN after each, ReLU after the first and after the
  addition (He et al. Fig. 2 left; Fig. 3 middle for the plain version)."""
  features: int
  strides: int = 1
  residual: bool = True
  shortcut: str = "A"
  zero_init_residual: bool = False
  conv: ModuleDef = layers.Conv
  norm: ModuleDef = layers.BatchNorm
  output_relu: Callable[[Array], Array] = nn.relu

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    pad = centered_same_padding(x.shape[1:3], 3, self.strides)
    y = self.conv(self.features, 3, self.strides, padding=pad, name="conv1")(x)
    y = nn.relu(self.norm(name="bn1")(y, train))
    y = self.conv(self.features, 3, 1, padding=1, name="conv2")(y)
    last_scale = nn.initializers.zeros if self.zero_init_residual else nn.initializers.ones
    y = self.norm(scale_init=last_scale, name="bn2")(y, train)
    if self.residual:
      y = y + _shortcut(x, self.features, self.strides, self.shortcut, self.conv,
                        self.norm, train)
    return self.output_relu(y)


class Bottleneck(nn.Module):
  """1x1 (reduce to `width`), 3x3 (stride, `groups`), 1x1 (expand to `features`),
  BN after each, ReLU after the first two and after the addition (Fig. 5 right).

  The stride sits on the 3x3, as in torchvision ("ResNet v1.5") and flax's imagenet
  example; the paper strides the first 1x1, which skips 3 of every 4 input pixels.
  Parameters are the same either way; v1.5 has slightly more multiply-adds.
  """
  width: int
  features: int
  strides: int = 1
  groups: int = 1
  residual: bool = True
  shortcut: str = "B"
  zero_init_residual: bool = False
  conv: ModuleDef = layers.Conv
  norm: ModuleDef = layers.BatchNorm
  output_relu: Callable[[Array], Array] = nn.relu

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    y = self.conv(self.width, 1, 1, padding=0, name="conv1")(x)
    y = nn.relu(self.norm(name="bn1")(y, train))
    pad = centered_same_padding(y.shape[1:3], 3, self.strides)
    y = self.conv(self.width, 3, self.strides, padding=pad, groups=self.groups,
                  name="conv2")(y)
    y = nn.relu(self.norm(name="bn2")(y, train))
    y = self.conv(self.features, 1, 1, padding=0, name="conv3")(y)
    last_scale = nn.initializers.zeros if self.zero_init_residual else nn.initializers.ones
    y = self.norm(scale_init=last_scale, name="bn3")(y, train)
    if self.residual:
      y = y + _shortcut(x, self.features, self.strides, self.shortcut, self.conv,
                        self.norm, train)
    return self.output_relu(y)


# ----------------------------------------------------------------------------------
# The network
# ----------------------------------------------------------------------------------

class ResNet(nn.Module):
  """A ResNet or its plain twin: stem, stages of blocks, global average pool, Dense.

  ``stem='cifar'``: 3x3 conv, BN, ReLU (section 4.2). ``stem='imagenet'``: 7x7/2 conv,
  BN, ReLU, 3x3/2 max pool (Table 1). Stage s (from 1) has ``width * 2**(s-1)``
  filters (times 4 at the output of a bottleneck) and subsamples by stride 2 in its
  first block, except stage 1. Convolutions have no bias (BN follows each one) and
  He-normal weights (the paper's initialisation); the head keeps Flax's Dense default,
  as the authors' Torch code kept Torch's default for the last layer.
  """
  stage_sizes: Sequence[int]
  block: str = "basic"             # 'basic' or 'bottleneck'
  stem: str = "cifar"              # 'cifar' or 'imagenet'
  width: int = 16
  groups: int = 1                  # ResNeXt cardinality
  width_per_group: int = 64        # ResNeXt: bottleneck width = planes * wpg / 64 * groups
  residual: bool = True
  shortcut: str = "A"
  zero_init_residual: bool = False
  num_classes: int = 10
  conv_impl: str = "auto"
  dtype: Optional[Dtype] = None
  bn_axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    conv = functools.partial(layers.conv_factory(self.conv_impl, self.dtype),
                             use_bias=False)
    norm = functools.partial(layers.BatchNorm, dtype=self.dtype,
                             axis_name=self.bn_axis_name)
    output_relu = block_output_relu(self.conv_impl, self.residual)
    if self.dtype is not None:
      x = x.astype(self.dtype)

    if self.stem == "imagenet":
      x = conv(self.width, 7, 2, padding=centered_same_padding(x.shape[1:3], 7, 2),
               name="conv1")(x)
      x = nn.relu(norm(name="bn1")(x, train))
      x = layers.max_pool(x, 3, 2, padding=centered_same_padding(x.shape[1:3], 3, 2),
                          layer="pool1")
    else:
      x = conv(self.width, 3, 1, padding=1, name="conv1")(x)
      x = nn.relu(norm(name="bn1")(x, train))

    for s, num_blocks in enumerate(self.stage_sizes):
      planes = self.width * 2 ** s
      for b in range(num_blocks):
        common = dict(strides=2 if s > 0 and b == 0 else 1, residual=self.residual,
                      shortcut=self.shortcut, zero_init_residual=self.zero_init_residual,
                      conv=conv, norm=norm, output_relu=output_relu,
                      name=f"stage{s + 1}_block{b}")
        if self.block == "bottleneck":
          inner = planes * self.width_per_group // 64 * self.groups
          x = Bottleneck(inner, planes * BOTTLENECK_EXPANSION, groups=self.groups,
                         **common)(x, train)
        else:
          x = BasicBlock(planes, **common)(x, train)

    x = layers.global_avg_pool(x)
    x = nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x)
    return x.astype(jnp.float32)


# ----------------------------------------------------------------------------------
# Builders
# ----------------------------------------------------------------------------------

def cifar_resnet(depth: int, residual: bool = True, shortcut: str = "A",
                 num_classes: int = 10, width: int = 16, conv_impl: str = "auto",
                 dtype: Optional[Dtype] = None, zero_init_residual: bool = False,
                 bn_axis_name: Optional[str] = None) -> ResNet:
  """CIFAR-10 ResNet of `depth` = 6n + 2 layers (He et al. section 4.2), or its plain
  twin with ``residual=False``.

  A 3x3 conv with `width` filters, three stages of n basic blocks with width, 2 width,
  4 width filters (16/32/64 in the paper; smaller for CPU-budget studies) on
  32/16/8 maps, global average pool, `num_classes`-way Dense.
  """
  if not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
    raise ConfigError(
        f"CIFAR ResNet depth must be 6n+2 (20, 32, 44, 56, 110, ...), got {depth}.")
  option = _check_options(residual, shortcut, zero_init_residual)
  n = (depth - 2) // 6
  return ResNet(stage_sizes=(n, n, n), block="basic", stem="cifar", width=width,
                residual=residual, shortcut=option, zero_init_residual=zero_init_residual,
                num_classes=num_classes, conv_impl=conv_impl, dtype=dtype,
                bn_axis_name=bn_axis_name)


def imagenet_resnet(depth: int, residual: bool = True, shortcut: str = "B",
                    num_classes: int = 1000, width: int = 64, groups: int = 1,
                    width_per_group: int = 64, conv_impl: str = "auto",
                    dtype: Optional[Dtype] = None, zero_init_residual: bool = False,
                    bn_axis_name: Optional[str] = None) -> ResNet:
  """ImageNet ResNet-18/34/50/101/152 (He et al. Table 1), or its plain twin with
  ``residual=False``; ``groups``/``width_per_group`` make it a ResNeXt (bottleneck
  depths only).

  Shortcut option B by default (projections where the shape changes), which is what
  torchvision builds; the paper's Table 2 plain-vs-residual comparison uses option A.
  """
  if depth not in IMAGENET_STAGES:
    raise ConfigError(
        f"ImageNet ResNet depth must be one of 18, 34, 50, 101, 152, got {depth}.")
  stage_sizes, block = IMAGENET_STAGES[depth]
  if block == "basic" and (groups != 1 or width_per_group != 64):
    raise ConfigError(
        f"ResNet-{depth} has basic blocks, which have no grouped width; use depth 50, "
        "101 or 152 for a ResNeXt.")
  option = _check_options(residual, shortcut, zero_init_residual)
  return ResNet(stage_sizes=stage_sizes, block=block, stem="imagenet", width=width,
                groups=groups, width_per_group=width_per_group, residual=residual,
                shortcut=option, zero_init_residual=zero_init_residual,
                num_classes=num_classes, conv_impl=conv_impl, dtype=dtype,
                bn_axis_name=bn_axis_name)


# He et al. Table 6 (CIFAR-10) parameter counts, for the descriptions.
_CIFAR_PARAMS = {20: "0.27M", 32: "0.46M", 44: "0.66M", 56: "0.85M", 110: "1.7M",
                 1202: "19.4M"}

for _depth in CIFAR_DEPTHS:
  register(f"resnet{_depth}", input_shape=(32, 32, 3), family="resnet",
           description=f"ResNet-{_depth} for CIFAR-10 (He et al. 2016 section 4.2, "
                       f"{_CIFAR_PARAMS[_depth]} parameters)",
           depth=_depth, residual=True)(cifar_resnet)
  register(f"plain{_depth}", input_shape=(32, 32, 3), family="resnet",
           description=f"Plain-{_depth} for CIFAR-10: ResNet-{_depth} without shortcuts "
                       "(He et al. 2016 Fig. 6)",
           depth=_depth, residual=False)(cifar_resnet)

for _depth in IMAGENET_STAGES:
  register(f"resnet{_depth}", input_shape=(224, 224, 3), family="resnet",
           description=f"ResNet-{_depth} for ImageNet (He et al. 2016 Table 1)",
           depth=_depth, residual=True)(imagenet_resnet)
  register(f"plain{_depth}", input_shape=(224, 224, 3), family="resnet",
           description=f"Plain-{_depth} for ImageNet: ResNet-{_depth} without shortcuts "
                       "(He et al. 2016 Table 2)",
           depth=_depth, residual=False)(imagenet_resnet)

register("resnext50_32x4d", input_shape=(224, 224, 3), family="resnet",
         description="ResNeXt-50 (32x4d) for ImageNet (Xie et al. 2017 Table 1)",
         depth=50, groups=32, width_per_group=4)(imagenet_resnet)

# The generic entries that configs use for depth sweeps: ``model.name="cifar_resnet"``
# with ``model.depth``, ``model.residual``, ``model.shortcut`` and ``model.width``.
register("cifar_resnet", input_shape=(32, 32, 3), family="resnet",
         description="CIFAR ResNet or plain net of any depth 6n+2 (model.depth, "
                     "model.residual, model.shortcut, model.width)")(cifar_resnet)
register("imagenet_resnet", input_shape=(224, 224, 3), family="resnet",
         description="ImageNet ResNet or plain net of depth 18/34/50/101/152 "
                     "(model.depth, model.residual)")(imagenet_resnet)

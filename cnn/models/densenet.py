"""DenseNet (Huang et al. 2017, "Densely Connected Convolutional Networks").

Each layer of a dense block receives the concatenation of all earlier feature maps of
the block and adds `growth_rate` new ones; transitions between blocks halve the
channels (compression 0.5) and the spatial size. Layers are pre-activation
(BN-ReLU-conv), the "DenseNet-BC" design of the paper's ImageNet models (Table 1).

Parameter names follow the ResNet scheme, so `cnn.models.resnet.stage_of` groups them:
``conv1``/``bn1`` (stem), ``stage{s}_layer{i}`` (layer i of dense block s, with
``bn1``/``conv1`` the 1x1 bottleneck and ``bn2``/``conv2`` the 3x3),
``stage{s}_transition`` (``bn``/``conv``), ``head_bn`` (the final BN) and ``head``
(the Dense).
"""
from __future__ import annotations

import functools
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnn import layers
from cnn.errors import ConfigError
from cnn.models import register
from cnn.models.resnet import centered_same_padding

Array = jax.Array
Dtype = Any
ModuleDef = Any


class DenseLayer(nn.Module):
  """BN-ReLU-1x1 conv (bn_size * growth filters), BN-ReLU-3x3 conv (growth filters);
  returns the input with the new maps concatenated."""
  growth_rate: int
  bn_size: int = 4
  conv: ModuleDef = layers.Conv
  norm: ModuleDef = layers.BatchNorm

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    y = nn.relu(self.norm(name="bn1")(x, train))
    y = self.conv(self.bn_size * self.growth_rate, 1, padding=0, name="conv1")(y)
    y = nn.relu(self.norm(name="bn2")(y, train))
    y = self.conv(self.growth_rate, 3, padding=1, name="conv2")(y)
    return jnp.concatenate([x, y.astype(x.dtype)], axis=-1)


class Transition(nn.Module):
  """BN-ReLU-1x1 conv to `features`, then 2x2/2 average pooling."""
  features: int
  conv: ModuleDef = layers.Conv
  norm: ModuleDef = layers.BatchNorm

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    y = nn.relu(self.norm(name="bn")(x, train))
    y = self.conv(self.features, 1, padding=0, name="conv")(y)
    return layers.avg_pool(y, 2, 2, layer=f"{self.name}/pool")


class DenseNet(nn.Module):
  """Stem (7x7/2 conv, BN, ReLU, 3x3/2 max pool), dense blocks joined by transitions,
  final BN-ReLU, global average pool, Dense. Convolutions have no bias and He-normal
  weights, as in torchvision's implementation of the paper."""
  block_config: Sequence[int] = (6, 12, 24, 16)
  growth_rate: int = 32
  num_init_features: int = 64
  bn_size: int = 4
  compression: float = 0.5
  num_classes: int = 1000
  conv_impl: str = "auto"
  dtype: Optional[Dtype] = None
  bn_axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    conv = functools.partial(layers.conv_factory(self.conv_impl, self.dtype),
                             use_bias=False)
    norm = functools.partial(layers.BatchNorm, dtype=self.dtype,
                             axis_name=self.bn_axis_name)
    if self.dtype is not None:
      x = x.astype(self.dtype)
    x = conv(self.num_init_features, 7, 2,
             padding=centered_same_padding(x.shape[1:3], 7, 2), name="conv1")(x)
    x = nn.relu(norm(name="bn1")(x, train))
    x = layers.max_pool(x, 3, 2, padding=centered_same_padding(x.shape[1:3], 3, 2),
                        layer="pool1")
    for s, num_layers in enumerate(self.block_config):
      for i in range(num_layers):
        x = DenseLayer(self.growth_rate, self.bn_size, conv=conv, norm=norm,
                       name=f"stage{s + 1}_layer{i}")(x, train)
      if s + 1 < len(self.block_config):
        # Compression theta: floor(theta * m) output maps (Huang et al. section 3).
        x = Transition(int(x.shape[-1] * self.compression), conv=conv, norm=norm,
                       name=f"stage{s + 1}_transition")(x, train)
    x = nn.relu(norm(name="head_bn")(x, train))
    x = layers.global_avg_pool(x)
    x = nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x)
    return x.astype(jnp.float32)


def densenet(block_config: Sequence[int] = (6, 12, 24, 16), growth_rate: int = 32,
             num_init_features: int = 64, bn_size: int = 4, compression: float = 0.5,
             num_classes: int = 1000, conv_impl: str = "auto",
             dtype: Optional[Dtype] = None,
             bn_axis_name: Optional[str] = None) -> DenseNet:
  """A DenseNet-BC; the defaults are DenseNet-121 (Huang et al. Table 1)."""
  if not 0.0 < compression <= 1.0:
    raise ConfigError(f"DenseNet compression must be in (0, 1], got {compression}.")
  if growth_rate <= 0 or not block_config or min(block_config) <= 0:
    raise ConfigError(
        f"DenseNet needs a positive growth rate and positive block sizes, got "
        f"growth_rate={growth_rate}, block_config={tuple(block_config)}.")
  return DenseNet(block_config=tuple(block_config), growth_rate=growth_rate,
                  num_init_features=num_init_features, bn_size=bn_size,
                  compression=compression, num_classes=num_classes,
                  conv_impl=conv_impl, dtype=dtype, bn_axis_name=bn_axis_name)


register("densenet121", input_shape=(224, 224, 3), family="densenet",
         description="DenseNet-121 for ImageNet (Huang et al. 2017 Table 1, growth 32)",
         block_config=(6, 12, 24, 16), growth_rate=32)(densenet)

"""VGG networks (Simonyan & Zisserman 2015), configurations A to E of their Table 1.

Every convolution is 3x3 stride 1 pad 1 (C also has 1x1 ones), followed by ReLU; five
2x2/2 max-pools halve 224 to 7; then FC-4096, FC-4096, FC-1000 with dropout 0.5 after
the first two (the paper's "first two fully-connected layers", placed after their ReLU
as in the authors' Caffe models). Layers are named as in those models: conv1_1 ..
conv5_4, pool1 .. pool5, fc6, fc7, fc8 (a later feature shards the large fc layers by
these names), and norm1 for A-LRN's local response normalisation after conv1_1.

Registered names: vgg11 (A), vgg11_lrn (A-LRN), vgg13 (B), vgg16c (C), vgg16 (D),
vgg19 (E), and vgg11_bn, vgg13_bn, vgg16_bn, vgg19_bn with batch normalisation after
every convolution (whose bias is then dropped, the BN shift replacing it).
Parameters (Table 2, millions): A and A-LRN 133, B 133, C 134, D 138, E 144; VGG-16
has exactly 138,357,544.

``classifier`` chooses how the last feature map reaches fc6:

- "paper" (default): flatten it, 7x7x512 = 25,088 inputs at 224x224 as in the paper.
  Any input whose side is a multiple of 32 fits; fc6 then has (side/32)^2 * 512
  inputs (512 at 32x32).
- "gap": average each of the 512 maps over the image first, so fc6 has 512 inputs
  whatever the input size (the usual CIFAR form; pair with ``fc_width=512``).
- "torchvision": average-pool the last map adaptively to 7x7 first (torchvision's
  ``AdaptiveAvgPool2d((7, 7))``), so fc6 has the paper's 25,088 inputs at every input
  size the pools take (sides that are multiples of 32; torchvision's pools would
  floor the others); at 224x224 it is "paper" exactly. Models converted from
  torchvision weights (`cnn.pretrained`) use it, so they fine-tune at any size.

The smallest input is 32x32 (five pools to 1x1); a side that five 2x2/2 pools do not
divide (e.g. 40 -> 20 -> 10 -> 5) raises the pool's ConfigError.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnn import layers
from cnn.errors import unknown_choice
from cnn.models import register

# Table 1, one list per stage (pools between stages): a number is a 3x3 convolution
# with that many filters, (1, n) a 1x1 one.
CONFIGS: dict[str, tuple[tuple[Any, ...], ...]] = {
    "A": ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    "B": ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    "C": ((64, 64), (128, 128), (256, 256, (1, 256)), (512, 512, (1, 512)),
          (512, 512, (1, 512))),
    "D": ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    "E": ((64, 64), (128, 128), (256, 256, 256, 256), (512, 512, 512, 512),
          (512, 512, 512, 512)),
}
CLASSIFIERS = ("paper", "gap", "torchvision")
TORCHVISION_POOL = (7, 7)


def _kernel_and_filters(layer: Any) -> tuple[int, int]:
  """(kernel size, filters) of one Table-1 entry."""
  return layer if isinstance(layer, tuple) else (3, layer)


class VGG(nn.Module):
  """A VGG configuration: stages of 3x3 (or 1x1) convolutions, 2x2/2 pools, 3 FC layers.

  Attributes:
    config: 'A', 'B', 'C', 'D' or 'E' (Table 1).
    num_classes: outputs of fc8.
    lrn: A-LRN's local response normalisation after conv1_1.
    batch_norm: BatchNorm between each convolution and its ReLU.
    classifier: 'paper' (flatten the last map), 'gap' (global average pool first) or
      'torchvision' (adaptive average pool to 7x7 first).
    fc_width: units of fc6 and fc7.
    dropout: rate after fc6 and fc7.
    conv_impl: convolution implementation (cnn.conv).
    dtype: compute dtype; parameters stay float32.
  """
  config: str = "D"
  num_classes: int = 1000
  lrn: bool = False
  batch_norm: bool = False
  classifier: str = "paper"
  fc_width: int = 4096
  dropout: float = 0.5
  conv_impl: str = "auto"
  dtype: Optional[Any] = None

  def _stages(self) -> Sequence[tuple[Any, ...]]:
    if self.config not in CONFIGS:
      raise unknown_choice("VGG configuration", self.config, CONFIGS)
    if self.classifier not in CLASSIFIERS:
      raise unknown_choice("VGG classifier", self.classifier, CLASSIFIERS)
    return CONFIGS[self.config]

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    stages = self._stages()
    conv = layers.conv_factory(self.conv_impl, self.dtype)
    for s, stage in enumerate(stages, start=1):
      for i, layer in enumerate(stage, start=1):
        kernel, filters = _kernel_and_filters(layer)
        x = conv(filters, kernel, 1, kernel // 2, use_bias=not self.batch_norm,
                 name=f"conv{s}_{i}")(x)
        if self.batch_norm:
          x = layers.BatchNorm(dtype=self.dtype, name=f"bn{s}_{i}")(x, train)
        x = nn.relu(x)
        if self.lrn and s == 1 and i == 1:
          x = layers.LocalResponseNorm(name="norm1")(x)
      x = layers.MaxPool(2, 2, name=f"pool{s}")(x)
    if self.classifier == "gap":
      x = layers.global_avg_pool(x)
    else:
      if self.classifier == "torchvision":
        x = layers.adaptive_avg_pool(x, TORCHVISION_POOL)
      x = layers.flatten(x)
    x = nn.relu(layers.Dense(self.fc_width, dtype=self.dtype, name="fc6")(x))
    x = layers.Dropout(self.dropout, name="drop6")(x, train)
    x = nn.relu(layers.Dense(self.fc_width, dtype=self.dtype, name="fc7")(x))
    x = layers.Dropout(self.dropout, name="drop7")(x, train)
    x = layers.Dense(self.num_classes, dtype=self.dtype, name="fc8")(x)
    return x.astype(jnp.float32)


def _register(name: str, config: str, description: str, **fixed: Any) -> None:
  def build(**kwargs: Any) -> VGG:
    return VGG(**{"config": config, **fixed, **kwargs})
  register(name, input_shape=(224, 224, 3), family="vgg", description=description)(build)


_register("vgg11", "A", "VGG configuration A: 11 weight layers (133M parameters).")
_register("vgg11_lrn", "A", "VGG configuration A-LRN: A with LRN after conv1_1.", lrn=True)
_register("vgg13", "B", "VGG configuration B: 13 weight layers (133M parameters).")
_register("vgg16c", "C", "VGG configuration C: 16 weight layers, three of them 1x1 (134M).")
_register("vgg16", "D", "VGG configuration D, VGG-16: 138,357,544 parameters.")
_register("vgg19", "E", "VGG configuration E, VGG-19: 19 weight layers (144M parameters).")
for _name, _config in (("vgg11", "A"), ("vgg13", "B"), ("vgg16", "D"), ("vgg19", "E")):
  _register(f"{_name}_bn", _config,
            f"{_name} with batch normalisation after every convolution.", batch_norm=True)

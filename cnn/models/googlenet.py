"""GoogLeNet / Inception v1 (Szegedy et al. 2014, "Going Deeper with Convolutions") and
the factorised Inception modules of Inception v2/v3 (Szegedy et al. 2015, "Rethinking
the Inception Architecture for Computer Vision").

Three modules share one field layout (#1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5,
pool proj: the columns of Table 1 of the 2014 paper), so one configuration can be built
as any of them and their costs compared branch by branch:

- `InceptionBlock`: the module with dimensionality reduction (2014, Figure 2b).
- `InceptionV2Block`: the 5x5 convolution replaced by two stacked 3x3 (2015, Figure 5);
  the same 5x5 receptive field for 2 * 9 / 25 = 72% of the weights.
- `FactorizedInceptionBlock`: every n x n convolution replaced by a 1 x n followed by
  an n x 1 (2015, Figure 6), 2n / n^2 of the weights (2/3 for n = 3).

Parameter names follow the Caffe model of the paper (bvlc_googlenet): ``conv1``,
``pool1``, ``norm1``, ``conv2_reduce``, ``conv2``, ``norm2``, ``inception_3a`` ..
``inception_5b`` (inside: ``1x1``, ``3x3_reduce``, ``3x3``, ``5x5_reduce``, ``5x5``,
``pool_proj``), ``aux1``/``aux2`` (the auxiliary classifiers after 4a and 4d), ``fc``.

The two LRN layers of the stem are the course's NORM layer (`layers.LocalResponseNorm`,
AlexNet's constants). Strided convolutions and pools use 'SAME' padding (output
ceil(N / S), the rounding Caffe's pooling uses), so 224 -> 112 -> 56 -> 28 -> 14 -> 7
as in Table 1. The final 7x7 average pool of Table 1 is a global average pool: the
same at 224x224, and it lets the network run on small inputs.
"""
from __future__ import annotations

import functools
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnn import layers
from cnn.errors import ConfigError
from cnn.models import register, scaled

Array = jax.Array
Dtype = Any

# Table 1 of Szegedy et al. (2014): name -> (#1x1, #3x3 reduce, #3x3, #5x5 reduce,
# #5x5, pool proj). A 3x3/2 max pool precedes 4a and 5a.
GOOGLENET_INCEPTIONS = (
    ("3a", (64, 96, 128, 16, 32, 32)),
    ("3b", (128, 128, 192, 32, 96, 64)),
    ("4a", (192, 96, 208, 16, 48, 64)),
    ("4b", (160, 112, 224, 24, 64, 64)),
    ("4c", (128, 128, 256, 24, 64, 64)),
    ("4d", (112, 144, 288, 32, 64, 64)),
    ("4e", (256, 160, 320, 32, 128, 128)),
    ("5a", (256, 160, 320, 32, 128, 128)),
    ("5b", (384, 192, 384, 48, 128, 128)),
)
POOL_BEFORE = {"4a": "pool3", "5a": "pool4"}
AUX_AFTER = {"4a": "aux1", "4d": "aux2"}


class ConvUnit(nn.Module):
  """Convolution, optional batch norm, ReLU: the unit every Inception branch is made of.

  ``use_bias=None`` means a bias only without batch norm (BN's shift replaces it).
  """
  features: int
  kernel_size: int | tuple[int, int] = 1
  strides: int = 1
  batch_norm: bool = False
  use_bias: Optional[bool] = None
  conv_impl: str = "auto"
  dtype: Optional[Dtype] = None

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    use_bias = (not self.batch_norm) if self.use_bias is None else self.use_bias
    conv = layers.conv_factory(self.conv_impl, self.dtype)
    x = conv(self.features, self.kernel_size, self.strides, "SAME", use_bias=use_bias,
             name="conv")(x)
    if self.batch_norm:
      x = layers.BatchNorm(dtype=self.dtype, name="bn")(x, train)
    return nn.relu(x)


class _InceptionBase(nn.Module):
  """Fields shared by the three Inception modules (Table 1's columns)."""
  f1x1: int
  f3x3_reduce: int
  f3x3: int
  f5x5_reduce: int
  f5x5: int
  pool_proj: int
  batch_norm: bool = False
  use_bias: Optional[bool] = None
  conv_impl: str = "auto"
  dtype: Optional[Dtype] = None

  def unit(self, features: int, kernel_size, name: str) -> ConvUnit:
    return ConvUnit(features, kernel_size, batch_norm=self.batch_norm,
                    use_bias=self.use_bias, conv_impl=self.conv_impl, dtype=self.dtype,
                    name=name)

  def pool_branch(self, x: Array, train: bool) -> Array:
    """3x3/1 max pool (padded, so the size is kept), then the 1x1 "pool proj"."""
    x = layers.MaxPool(3, 1, "SAME", name="pool")(x)
    return self.unit(self.pool_proj, 1, "pool_proj")(x, train)


class InceptionBlock(_InceptionBase):
  """Inception module with dimensionality reduction (Szegedy et al. 2014, Figure 2b):
  1x1 | 1x1 -> 3x3 | 1x1 -> 5x5 | 3x3 max pool -> 1x1, concatenated on channels.

  Output channels: f1x1 + f3x3 + f5x5 + pool_proj. No batch norm by default (2014).
  """

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    b1 = self.unit(self.f1x1, 1, "1x1")(x, train)
    b2 = self.unit(self.f3x3_reduce, 1, "3x3_reduce")(x, train)
    b2 = self.unit(self.f3x3, 3, "3x3")(b2, train)
    b3 = self.unit(self.f5x5_reduce, 1, "5x5_reduce")(x, train)
    b3 = self.unit(self.f5x5, 5, "5x5")(b3, train)
    return jnp.concatenate([b1, b2, b3, self.pool_branch(x, train)], axis=-1)


class InceptionV2Block(_InceptionBase):
  """Inception module with the 5x5 replaced by two stacked 3x3 (Szegedy et al. 2015,
  Figure 5): 1x1 | 1x1 -> 3x3 | 1x1 -> 3x3 -> 3x3 | pool -> 1x1.

  Both 3x3 of the factorised branch have `f5x5` filters: with C channels in and out
  it costs 2 * 9 C^2 weights and multiplications per pixel against 25 C^2 (72%, a 28%
  saving) for the same 5x5 receptive field. Batch norm by default (Inception v2).
  """
  batch_norm: bool = True

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    b1 = self.unit(self.f1x1, 1, "1x1")(x, train)
    b2 = self.unit(self.f3x3_reduce, 1, "3x3_reduce")(x, train)
    b2 = self.unit(self.f3x3, 3, "3x3")(b2, train)
    b3 = self.unit(self.f5x5_reduce, 1, "5x5_reduce")(x, train)
    b3 = self.unit(self.f5x5, 3, "5x5_as_3x3_a")(b3, train)
    b3 = self.unit(self.f5x5, 3, "5x5_as_3x3_b")(b3, train)
    return jnp.concatenate([b1, b2, b3, self.pool_branch(x, train)], axis=-1)


class FactorizedInceptionBlock(_InceptionBase):
  """Inception module with asymmetric factorisation (Szegedy et al. 2015, Figure 6):
  each n x n convolution becomes a 1 x n followed by an n x 1.

  Branches: 1x1 | 1x1 -> (1xn, nx1) | 1x1 -> (1xn, nx1) -> (1xn, nx1) | pool -> 1x1;
  the third branch is the factorised version of Figure 5's double 3x3 (the "5x5"
  branch). For n = 3 with C channels in and out, 1x3 + 3x1 costs 6 C^2 weights and
  multiplications per pixel against 9 C^2 (67%, a 33% saving). The paper uses it on
  medium grids (n = 7 on 17x17); `n` is free here.
  """
  n: int = 3
  batch_norm: bool = True

  def asymmetric(self, x: Array, features: int, name: str, train: bool) -> Array:
    x = self.unit(features, (1, self.n), f"{name}_1xn")(x, train)
    return self.unit(features, (self.n, 1), f"{name}_nx1")(x, train)

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    b1 = self.unit(self.f1x1, 1, "1x1")(x, train)
    b2 = self.unit(self.f3x3_reduce, 1, "3x3_reduce")(x, train)
    b2 = self.asymmetric(b2, self.f3x3, "3x3", train)
    b3 = self.unit(self.f5x5_reduce, 1, "5x5_reduce")(x, train)
    b3 = self.asymmetric(b3, self.f5x5, "5x5_a", train)
    b3 = self.asymmetric(b3, self.f5x5, "5x5_b", train)
    return jnp.concatenate([b1, b2, b3, self.pool_branch(x, train)], axis=-1)


class AuxClassifier(nn.Module):
  """GoogLeNet's auxiliary classifier (section 5): 5x5/3 average pool (4x4 from 14x14),
  1x1 conv 128 + ReLU, FC 1024 + ReLU, dropout 0.7, FC to the classes. The FC's input
  size follows the pooled map (4 * 4 * 128 = 2048 at 224x224)."""
  num_classes: int
  width: float = 1.0
  conv_impl: str = "auto"
  dtype: Optional[Dtype] = None

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    name = "/".join(self.scope.path)
    if min(x.shape[1:3]) < 5:
      raise ConfigError(
          f"{name}: the auxiliary classifier's 5x5 average pool needs a map of at least "
          f"5x5, got {x.shape[1]}x{x.shape[2]}; use inputs of at least 80x80 or "
          "aux_logits=False.")
    # Rounded down where 5x5/3 does not tile the map (exact at 14x14, the paper's).
    x = layers.avg_pool(x, 5, 3, "VALID", layer=f"{name}/pool", strict=False)
    conv = layers.conv_factory(self.conv_impl, self.dtype)
    x = nn.relu(conv(scaled(128, self.width), 1, name="conv")(x))
    x = nn.relu(layers.Dense(scaled(1024, self.width), dtype=self.dtype,
                             name="fc")(layers.flatten(x)))
    x = layers.Dropout(0.7)(x, train)
    x = layers.Dense(self.num_classes, dtype=self.dtype, name="classifier")(x)
    return x.astype(jnp.float32)


class GoogLeNet(nn.Module):
  """GoogLeNet (Szegedy et al. 2014, Table 1).

  With ``aux_logits=True`` the two auxiliary classifiers exist (their parameters are
  always created) and, in training mode only, ``__call__`` returns
  ``(logits, aux1, aux2)``; the paper adds their losses with weight 0.3. Evaluation
  returns the main logits alone. ``width`` multiplies every filter count (1.0 is the
  paper's network; smaller values give tiny test variants).
  """
  num_classes: int = 1000
  aux_logits: bool = False
  width: float = 1.0
  dropout: float = 0.4
  conv_impl: str = "auto"
  dtype: Optional[Dtype] = None

  @nn.compact
  def __call__(self, x: Array, train: bool = False):
    ch = functools.partial(scaled, width=self.width)
    conv = layers.conv_factory(self.conv_impl, self.dtype)
    x = nn.relu(conv(ch(64), 7, 2, "SAME", name="conv1")(x))
    x = layers.MaxPool(3, 2, "SAME", name="pool1")(x)
    x = layers.LocalResponseNorm(name="norm1")(x)
    x = nn.relu(conv(ch(64), 1, name="conv2_reduce")(x))
    x = nn.relu(conv(ch(192), 3, name="conv2")(x))
    x = layers.LocalResponseNorm(name="norm2")(x)
    x = layers.MaxPool(3, 2, "SAME", name="pool2")(x)
    # The auxiliary heads run when they are returned (training) and at init, so
    # their parameters exist whichever mode the model was initialised in.
    run_aux = self.aux_logits and (train or self.is_initializing())
    aux = []
    for name, filters in GOOGLENET_INCEPTIONS:
      if name in POOL_BEFORE:
        x = layers.MaxPool(3, 2, "SAME", name=POOL_BEFORE[name])(x)
      x = InceptionBlock(*(ch(f) for f in filters), conv_impl=self.conv_impl,
                         dtype=self.dtype, name=f"inception_{name}")(x, train)
      if run_aux and name in AUX_AFTER:
        aux.append(AuxClassifier(self.num_classes, self.width, self.conv_impl,
                                 self.dtype, name=AUX_AFTER[name])(x, train))
    x = layers.global_avg_pool(x)
    x = layers.Dropout(self.dropout)(x, train)
    logits = layers.Dense(self.num_classes, dtype=self.dtype, name="fc")(x)
    logits = logits.astype(jnp.float32)
    if self.aux_logits and train:
      return (logits, *aux)
    return logits


class InceptionV2Cifar(nn.Module):
  """A course-sized network of factorised Inception modules for 32x32 images.

  Not the full Inception-v3 (whose 299x299 stem and grid reductions make no sense on
  CIFAR): a 3x3 conv stem, two `InceptionV2Block` at 32x32 and two
  `FactorizedInceptionBlock` (1x3 + 3x1) at 16x16 (GoogLeNet's 3a/3b and 4a/4b filter
  numbers halved), one more factorised block at 8x8 (5a halved), global average
  pool, dropout, FC. Batch norm after every convolution, as in Inception v2.
  """
  num_classes: int = 10
  width: float = 1.0
  dropout: float = 0.4
  conv_impl: str = "auto"
  dtype: Optional[Dtype] = None

  STAGES = (
      ("32x32", InceptionV2Block, (("a1", (32, 48, 64, 8, 16, 16)),
                                   ("a2", (64, 64, 96, 16, 48, 32)))),
      ("16x16", FactorizedInceptionBlock, (("b1", (96, 48, 104, 8, 24, 32)),
                                           ("b2", (80, 56, 112, 12, 32, 32)))),
      ("8x8", FactorizedInceptionBlock, (("c1", (128, 80, 160, 16, 64, 64)),)),
  )

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    ch = functools.partial(scaled, width=self.width)
    x = ConvUnit(ch(64), 3, batch_norm=True, conv_impl=self.conv_impl, dtype=self.dtype,
                 name="stem")(x, train)
    for stage, (_, block, modules) in enumerate(self.STAGES):
      if stage:
        x = layers.MaxPool(3, 2, "SAME", name=f"pool{stage}")(x)
      for name, filters in modules:
        x = block(*(ch(f) for f in filters), conv_impl=self.conv_impl, dtype=self.dtype,
                  name=f"inception_{name}")(x, train)
    x = layers.global_avg_pool(x)
    x = layers.Dropout(self.dropout)(x, train)
    logits = layers.Dense(self.num_classes, dtype=self.dtype, name="fc")(x)
    return logits.astype(jnp.float32)


@register("googlenet", input_shape=(224, 224, 3), family="googlenet")
def googlenet(num_classes: int = 1000, aux_logits: bool = False, width: float = 1.0,
              dropout: float = 0.4, conv_impl: str = "auto",
              dtype: Optional[Dtype] = None) -> GoogLeNet:
  """GoogLeNet / Inception v1 (Szegedy et al. 2014, Table 1), optional aux classifiers."""
  return GoogLeNet(num_classes=num_classes, aux_logits=aux_logits, width=width,
                   dropout=dropout, conv_impl=conv_impl, dtype=dtype)


@register("inception_v2_cifar", input_shape=(32, 32, 3), family="googlenet")
def inception_v2_cifar(num_classes: int = 10, width: float = 1.0, dropout: float = 0.4,
                       conv_impl: str = "auto",
                       dtype: Optional[Dtype] = None) -> InceptionV2Cifar:
  """Course-sized CIFAR net of Inception v2/v3 factorised modules (not Inception-v3)."""
  return InceptionV2Cifar(num_classes=num_classes, width=width, dropout=dropout,
                          conv_impl=conv_impl, dtype=dtype)

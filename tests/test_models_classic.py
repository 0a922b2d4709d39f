"""LeNet-5, AlexNet, ZFNet and VGG against the course's tables and the papers' counts.

Every expected number is hand arithmetic from the course or the papers (shown in the
comments): a convolution with F x F kernels, C inputs, K filters and G groups has
F*F*(C/G)*K + K parameters, a dense layer with n inputs and m outputs n*m + m.
ImageNet-size networks are only traced (jax.eval_shape); real forward passes run on
LeNet and on tiny inputs of the others.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from cnn import models
from cnn.errors import ConfigError


def conv_params(f, c, k, groups=1):
  return f * f * (c // groups) * k + k


def dense_params(n, m):
  return n * m + m


def abstract_variables(model, shape):
  init = functools.partial(model.init, train=False)
  return jax.eval_shape(init, {"params": jax.random.key(0)}, jnp.zeros(shape))


def param_count(model, shape):
  return sum(x.size for x in jax.tree.leaves(abstract_variables(model, shape)["params"]))


def init(model, x, seed=0):
  """Variables of the model's shapes filled by numpy: He-scaled kernels, small random
  biases, unit BN scales and variances (compiling Flax's random init costs seconds on
  CPU; its structure is still traced by eval_shape)."""
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name, shape = path[-1].key, leaf.shape
    if name == "kernel":
      value = rng.standard_normal(shape) * np.sqrt(2.0 / np.prod(shape[:-1]))
    elif name == "bias":
      value = 0.1 * rng.standard_normal(shape)
    elif name in ("scale", "var"):
      value = np.ones(shape)
    else:
      assert name == "mean", path
      value = np.zeros(shape)
    return jnp.asarray(value, leaf.dtype)

  return jax.tree_util.tree_map_with_path(fill, abstract_variables(model, x.shape))


def apply(model, variables, x, train=False, **kwargs):
  return jax.jit(functools.partial(model.apply, train=train, **kwargs))(variables, x)


def layer_shapes(model, shape):
  """Output shape (without the batch axis) of every named submodule, traced only."""
  def forward(x):
    variables = model.init({"params": jax.random.key(0)}, x, train=False)
    return model.apply(variables, x, train=False, capture_intermediates=True,
                       mutable=["intermediates"])[1]["intermediates"]
  inter = jax.eval_shape(forward, jax.ShapeDtypeStruct(shape, jnp.float32))
  return {name: v["__call__"][0].shape[1:] for name, v in inter.items() if name != "__call__"}


# ----------------------------------------------------------------------------------
# LeNet-5
# ----------------------------------------------------------------------------------

# C1 6*(5*5*1+1) = 156; C3 16*(5*5*6+1) = 2,416; C5 120*(5*5*16+1) = 48,120;
# F6 84*(120+1) = 10,164; output 10*(84+1) = 850. Total 61,706 (the course's "60k").
LENET_PARAMS = 156 + 2_416 + 48_120 + 10_164 + 850


def test_lenet_hand_arithmetic():
  assert conv_params(5, 1, 6) == 156 and dense_params(84, 10) == 850
  assert LENET_PARAMS == 61_706


@pytest.mark.parametrize("name", ["lenet5", "lenet5_classic"])
def test_lenet_parameter_count(name):
  assert models.info(name).input_shape == (32, 32, 1)
  model = models.create(name)
  assert param_count(model, (1, 32, 32, 1)) == 61_706
  # 28x28 is padded to LeCun's 32x32 field: same network, same count.
  assert param_count(model, (1, 28, 28, 1)) == 61_706
  # Three channels only widen C1: 6*(5*5*3+1) = 456 instead of 156.
  assert param_count(model, (1, 32, 32, 3)) == 61_706 - 156 + 456


@pytest.mark.parametrize("side", [32, 28])
def test_lenet_feature_maps(side):
  # 32 -conv5-> 28 -pool-> 14 -conv5-> 10 -pool-> 5 -conv5-> 1 (the course's figure);
  # 28 + 2*2 padding -> 28 as well.
  shapes = layer_shapes(models.create("lenet5"), (2, side, side, 1))
  assert shapes["conv1"] == (28, 28, 6)
  assert shapes["conv2"] == (10, 10, 16)
  assert shapes["conv3"] == (1, 1, 120)
  assert shapes["fc4"] == (84,)
  assert shapes["fc5"] == (10,)


def _pool2(x, reduce):
  """2x2/2 pooling by reshaping, independent of the library's reduce_window."""
  n, h, w, c = x.shape
  return reduce(x.reshape(n, h // 2, 2, w // 2, 2, c), axis=(2, 4))


def _lenet_reference(params, x, act, reduce):
  def conv(x, p):
    return lax.conv_general_dilated(x, p["kernel"], (1, 1), "VALID",
                                    dimension_numbers=("NHWC", "HWIO", "NHWC")) + p["bias"]
  x = _pool2(act(conv(x, params["conv1"])), reduce)
  x = _pool2(act(conv(x, params["conv2"])), reduce)
  x = act(conv(x, params["conv3"])).reshape(x.shape[0], -1)
  x = act(x @ params["fc4"]["kernel"] + params["fc4"]["bias"])
  return x @ params["fc5"]["kernel"] + params["fc5"]["bias"]


@pytest.mark.parametrize("name,act,reduce", [
    ("lenet5", jax.nn.relu, jnp.max),
    ("lenet5_classic", jnp.tanh, jnp.mean),
])
def test_lenet_forward_matches_reference(name, act, reduce):
  model = models.create(name)
  x = jax.random.normal(jax.random.key(1), (3, 32, 32, 1))
  variables = init(model, x)
  out = apply(model, variables, x)
  assert out.shape == (3, 10) and out.dtype == jnp.float32
  expected = _lenet_reference(variables["params"], x, act, reduce)
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_lenet_mnist_input_is_zero_padded_to_32():
  model = models.create("lenet5_classic")
  x28 = jax.random.uniform(jax.random.key(2), (2, 28, 28, 1))
  x32 = jnp.pad(x28, ((0, 0), (2, 2), (2, 2), (0, 0)))
  variables = init(model, x32)
  np.testing.assert_allclose(apply(model, variables, x28),
                             apply(model, variables, x32), rtol=1e-5, atol=1e-6)


def test_lenet_mixed_precision_keeps_float32_params_and_logits():
  model = models.create("lenet5", dtype=jnp.bfloat16, num_classes=7)
  x = jnp.ones((2, 32, 32, 3))
  params = abstract_variables(model, x.shape)["params"]
  assert {p.dtype for p in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}
  out = apply(model, init(model, x), x)
  assert out.shape == (2, 7) and out.dtype == jnp.float32 and np.all(np.isfinite(out))


def test_lenet_bad_inputs_raise_config_error():
  with pytest.raises(ConfigError, match=r"conv1: input of size 4 is smaller than its 5-wide"):
    models.output_shape(models.create("lenet5"), (1, 4, 4, 1))
  # 33 -> 29 cannot be halved by a 2x2/2 pool: (29 - 2) / 2 + 1 = 14.5.
  with pytest.raises(ConfigError, match=r"pool1: output size .*14\.5 is fractional"):
    models.output_shape(models.create("lenet5"), (1, 33, 33, 1))
  with pytest.raises(ConfigError, match="Unknown pooling 'min'"):
    models.output_shape(models.create("lenet5", pooling="min"), (1, 32, 32, 1))
  with pytest.raises(ConfigError, match="Unknown conv_impl"):
    models.output_shape(models.create("lenet5", conv_impl="nope"), (1, 32, 32, 1))


# ----------------------------------------------------------------------------------
# AlexNet and ZFNet
# ----------------------------------------------------------------------------------

def test_alexnet_shapes_follow_course_table():
  assert models.info("alexnet").input_shape == (227, 227, 3)
  shapes = layer_shapes(models.create("alexnet"), (1, 227, 227, 3))
  expected = {
      "conv1": (55, 55, 96),     # (227 - 11 + 2*0) / 4 + 1 = 55
      "pool1": (27, 27, 96),     # (55 - 3) / 2 + 1 = 27
      "norm1": (27, 27, 96),
      "conv2": (27, 27, 256),    # (27 - 5 + 2*2) / 1 + 1 = 27
      "pool2": (13, 13, 256),    # (27 - 3) / 2 + 1 = 13
      "norm2": (13, 13, 256),
      "conv3": (13, 13, 384),
      "conv4": (13, 13, 384),
      "conv5": (13, 13, 256),
      "pool3": (6, 6, 256),      # (13 - 3) / 2 + 1 = 6
      "fc6": (4096,), "fc7": (4096,), "fc8": (1000,),
  }
  assert {k: shapes[k] for k in expected} == expected


def test_alexnet_parameter_counts():
  # The course's slide: conv1 has 11*11*3*96 + 96 = 34,944 parameters.
  conv1 = conv_params(11, 3, 96)
  assert conv1 == 34_944
  fc = dense_params(6 * 6 * 256, 4096) + dense_params(4096, 4096) + dense_params(4096, 1000)
  assert fc == 37_752_832 + 16_781_312 + 4_097_000
  one_tower = (conv1 + conv_params(5, 96, 256) + conv_params(3, 256, 384)
               + conv_params(3, 384, 384) + conv_params(3, 384, 256) + fc)
  # 34,944 + 614,656 + 885,120 + 1,327,488 + 884,992 + 58,631,144
  assert one_tower == 62_378_344
  # Two towers: conv2, conv4 and conv5 see half their inputs (paper, Fig. 2).
  two_towers = (conv1 + conv_params(5, 96, 256, 2) + conv_params(3, 256, 384)
                + conv_params(3, 384, 384, 2) + conv_params(3, 384, 256, 2) + fc)
  assert two_towers == 62_378_344 - 307_200 - 663_552 - 442_368 == 60_965_224
  assert param_count(models.create("alexnet"), (1, 227, 227, 3)) == one_tower
  grouped = abstract_variables(models.create("alexnet", groups=2), (1, 227, 227, 3))
  assert sum(x.size for x in jax.tree.leaves(grouped["params"])) == two_towers
  assert grouped["params"]["conv2"]["kernel"].shape == (5, 5, 48, 256)
  assert grouped["params"]["conv3"]["kernel"].shape == (3, 3, 256, 384)
  assert grouped["params"]["conv4"]["kernel"].shape == (3, 3, 192, 384)


def test_alexnet_rejects_input_its_layers_cannot_divide():
  # (64 - 11) / 4 + 1 = 14.25.
  message = r"conv1: output size \(64 - 11 \+ 2\*0\) / 4 \+ 1 = 14\.25 is fractional"
  with pytest.raises(ConfigError, match=message):
    models.output_shape(models.create("alexnet"), (1, 64, 64, 3))
  # 63 -> (63 - 11) / 4 + 1 = 14 -> pool (14 - 3) / 2 + 1 = 6.5.
  with pytest.raises(ConfigError, match=r"pool1: .*6\.5 is fractional"):
    models.output_shape(models.create("alexnet"), (1, 63, 63, 3))


def test_alexnet_tiny_forward_with_dropout():
  # Smallest input that fits: 67 -> 15 -> 7 -> 3 -> 1x1x256.
  model = models.create("alexnet", groups=2, num_classes=5, fc_width=32)
  x = jax.random.normal(jax.random.key(3), (2, 67, 67, 3))
  variables = init(model, x)
  assert variables["params"]["fc6"]["kernel"].shape == (256, 32)
  evaluated = apply(model, variables, x)
  again = apply(model, variables, x)
  trained = apply(model, variables, x, train=True, rngs={"dropout": jax.random.key(4)})
  assert evaluated.shape == trained.shape == (2, 5)
  np.testing.assert_array_equal(evaluated, again)
  assert not np.allclose(evaluated, trained)


def test_zfnet_shapes_and_parameters():
  assert models.info("zfnet").input_shape == (224, 224, 3)
  model = models.create("zfnet")
  shapes = layer_shapes(model, (1, 224, 224, 3))
  expected = {
      "conv1": (110, 110, 96),   # (224 - 7 + 0+1) / 2 + 1 = 110 (paper Fig. 3)
      "pool1": (55, 55, 96),     # (110 - 3 + 0+1) / 2 + 1 = 55
      "conv2": (26, 26, 256),    # (55 - 5) / 2 + 1 = 26
      "pool2": (13, 13, 256),    # (26 - 3 + 0+1) / 2 + 1 = 13
      "conv3": (13, 13, 512), "conv4": (13, 13, 1024), "conv5": (13, 13, 512),
      "pool3": (6, 6, 512),      # (13 - 3) / 2 + 1 = 6
      "fc6": (4096,), "fc8": (1000,),
  }
  assert {k: shapes[k] for k in expected} == expected
  total = (conv_params(7, 3, 96) + conv_params(5, 96, 256) + conv_params(3, 256, 512)
           + conv_params(3, 512, 1024) + conv_params(3, 1024, 512)
           + dense_params(6 * 6 * 512, 4096) + dense_params(4096, 4096)
           + dense_params(4096, 1000))
  # 14,208 + 614,656 + 1,180,160 + 4,719,616 + 4,719,104 + 75,501,568 + 16,781,312
  # + 4,097,000
  assert total == 107_627_624
  assert param_count(model, (1, 224, 224, 3)) == total


# ----------------------------------------------------------------------------------
# VGG
# ----------------------------------------------------------------------------------

# Table 1 as (kernel, filters) per conv layer, stage by stage.
_A = [[64], [128], [256] * 2, [512] * 2, [512] * 2]
_B = [[64] * 2, [128] * 2, [256] * 2, [512] * 2, [512] * 2]
_D = [[64] * 2, [128] * 2, [256] * 3, [512] * 3, [512] * 3]
_E = [[64] * 2, [128] * 2, [256] * 4, [512] * 4, [512] * 4]


def _vgg_by_hand(stages, one_by_one=()):
  """Table-1 parameters: 3x3 convs, the extra 1x1 convs of C, then 25,088-4096-4096-1000."""
  total, c = 0, 3
  for stage in stages:
    for k in stage:
      total, c = total + conv_params(3, c, k), k
  total += sum(conv_params(1, k, k) for k in one_by_one)
  return total + dense_params(7 * 7 * 512, 4096) + dense_params(4096, 4096) \
      + dense_params(4096, 1000)


def test_vgg16_exact_count_by_hand():
  # Conv layers (the course's VGG-16 walk-through, weights + biases):
  # 1,792 + 36,928 + 73,856 + 147,584 + 295,168 + 2*590,080 + 1,180,160 + 5*2,359,808
  convs = 1_792 + 36_928 + 73_856 + 147_584 + 295_168 + 2 * 590_080 + 1_180_160 \
      + 5 * 2_359_808
  assert convs == 14_714_688
  # fc6 25,088*4096 + 4096; fc7 4096*4096 + 4096; fc8 4096*1000 + 1000.
  fcs = 102_764_544 + 16_781_312 + 4_097_000
  assert convs + fcs == 138_357_544 == _vgg_by_hand(_D)
  assert param_count(models.create("vgg16"), (1, 224, 224, 3)) == 138_357_544


@pytest.mark.parametrize("name,stages,one_by_one,table2_millions", [
    ("vgg11", _A, (), 133),
    ("vgg11_lrn", _A, (), 133),
    ("vgg13", _B, (), 133),
    ("vgg16c", _B[:2] + [[256] * 2, [512] * 2, [512] * 2], (256, 512, 512), 134),
    ("vgg19", _E, (), 144),
])
def test_vgg_parameter_counts_match_table2(name, stages, one_by_one, table2_millions):
  assert models.info(name).input_shape == (224, 224, 3)
  count = param_count(models.create(name), (1, 224, 224, 3))
  assert count == _vgg_by_hand(stages, one_by_one)
  assert round(count / 1e6) == table2_millions


def test_vgg_shapes_and_layer_names():
  shapes = layer_shapes(models.create("vgg16"), (1, 224, 224, 3))
  # Five 2x2/2 pools: 224 -> 112 -> 56 -> 28 -> 14 -> 7.
  assert [shapes[f"pool{s}"] for s in range(1, 6)] == [
      (112, 112, 64), (56, 56, 128), (28, 28, 256), (14, 14, 512), (7, 7, 512)]
  assert shapes["conv5_3"] == (14, 14, 512)
  params = abstract_variables(models.create("vgg16"), (1, 224, 224, 3))["params"]
  assert params["fc6"]["kernel"].shape == (7 * 7 * 512, 4096)
  assert params["fc7"]["kernel"].shape == (4096, 4096)
  assert params["fc8"]["kernel"].shape == (4096, 1000)
  assert params["conv3_3"]["kernel"].shape == (3, 3, 256, 256)
  c_params = abstract_variables(models.create("vgg16c"), (1, 224, 224, 3))["params"]
  assert c_params["conv3_3"]["kernel"].shape == (1, 1, 256, 256)


def test_vgg_batch_norm_variant_counts():
  variables = abstract_variables(models.create("vgg16_bn"), (1, 224, 224, 3))
  # BN's shift replaces the 4,224 conv biases (64*2 + 128*2 + 256*3 + 512*6); BN adds
  # a scale and a shift per channel, and a running mean and variance.
  biases = 64 * 2 + 128 * 2 + 256 * 3 + 512 * 6
  assert biases == 4_224
  assert sum(x.size for x in jax.tree.leaves(variables["params"])) \
      == 138_357_544 - biases + 2 * biases
  assert sum(x.size for x in jax.tree.leaves(variables["batch_stats"])) == 2 * biases
  assert "bias" not in variables["params"]["conv1_1"]


def test_vgg_lrn_is_only_in_a_lrn_and_changes_the_output():
  # Identical parameters (LRN has none), tiny input and classifier.
  kwargs = dict(classifier="gap", fc_width=16, num_classes=3)
  plain, lrn = models.create("vgg11", **kwargs), models.create("vgg11_lrn", **kwargs)
  assert "norm1" in layer_shapes(lrn, (1, 32, 32, 3))
  assert "norm1" not in layer_shapes(plain, (1, 32, 32, 3))
  x = 10.0 * jax.random.normal(jax.random.key(5), (2, 32, 32, 3))
  variables = init(plain, x)
  out_plain = apply(plain, variables, x)
  out_lrn = apply(lrn, variables, x)
  assert out_plain.shape == out_lrn.shape == (2, 3)
  assert not np.allclose(out_plain, out_lrn)


def test_vgg_bn_trains_at_cifar_size():
  model = models.create("vgg11_bn", classifier="gap", fc_width=16, num_classes=10)
  x = jax.random.normal(jax.random.key(6), (4, 32, 32, 3))
  variables = init(model, x)
  out, updated = apply(model, variables, x, train=True, mutable=["batch_stats"],
                        rngs={"dropout": jax.random.key(7)})
  assert out.shape == (4, 10) and np.all(np.isfinite(out))
  before = variables["batch_stats"]["bn1_1"]["bn"]["mean"]
  after = updated["batch_stats"]["bn1_1"]["bn"]["mean"]
  assert not np.allclose(before, after)


def test_vgg_classifier_options():
  def fc6_inputs(side, **kw):
    params = abstract_variables(models.create("vgg11", **kw), (1, side, side, 3))["params"]
    return params["fc6"]["kernel"].shape[0]
  # "paper" flattens: 1x1x512 at 32, 2x2x512 at 64; "gap" averages to 512 at any size.
  assert fc6_inputs(32) == 512
  assert fc6_inputs(64) == 2 * 2 * 512
  assert fc6_inputs(64, classifier="gap") == 512
  assert fc6_inputs(224, classifier="gap") == 512
  with pytest.raises(ConfigError, match="Unknown VGG classifier 'adaptive'"):
    models.output_shape(models.create("vgg11", classifier="adaptive"), (1, 32, 32, 3))


def test_vgg_rejects_input_the_pools_cannot_halve():
  # 40 -> 20 -> 10 -> 5, then (5 - 2) / 2 + 1 = 2.5.
  with pytest.raises(ConfigError, match=r"pool4: output size .*2\.5 is fractional"):
    models.output_shape(models.create("vgg16"), (1, 40, 40, 3))
  # 16 -> 8 -> 4 -> 2 -> 1, and pool5 has no 2x2 window left.
  with pytest.raises(ConfigError, match=r"pool5: input of size 1 is smaller"):
    models.output_shape(models.create("vgg16"), (1, 16, 16, 3))

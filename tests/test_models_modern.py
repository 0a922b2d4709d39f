"""GoogLeNet and the Inception v2/v3 modules, MobileNet v1, Xception, FCN, U-Net and
SegNet against the numbers of their papers.

ImageNet-size networks are only traced (`jax.eval_shape`); real forward passes use
tiny widths and small inputs.
"""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from cnn import conv as conv_lib
from cnn import layers
from cnn.errors import ConfigError
from cnn.models import create, info, names, output_shape
from cnn.models import googlenet as googlenet_lib
from cnn.models import segmentation

KEY = jax.random.key(0)
MY_MODELS = ("googlenet", "inception_v2_cifar", "mobilenet_v1", "mobilenet_v1_075",
             "mobilenet_v1_050", "mobilenet_v1_025", "xception", "fcn32s", "fcn16s",
             "fcn8s", "unet", "unet_valid", "segnet")


# ----------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------

@pytest.fixture
def conv_calls(monkeypatch):
  """A 'counting' conv implementation: XLA's, recording every call."""
  calls = []

  def counting(*args):
    calls.append(args[1].shape)
    return conv_lib.conv_xla(*args)

  monkeypatch.setitem(conv_lib.CONV_IMPLS, "counting", counting)
  return calls


def trace(model, shape):
  """Abstract params and the output shape of every module, from one traced init."""
  x = jax.ShapeDtypeStruct(shape, jnp.float32)
  init = functools.partial(model.init, train=False, capture_intermediates=True,
                           mutable=True)
  variables = jax.eval_shape(init, {"params": KEY, "dropout": KEY}, x)
  return variables["params"], variables["intermediates"]


def param_count(tree) -> int:
  return sum(leaf.size for leaf in jax.tree.leaves(tree))


def conv_kernels(params) -> int:
  """Number of cnn.layers.Conv kernels (4-D, not a transposed conv's)."""
  flat = traverse_util.flatten_dict(params)
  return sum(1 for path, leaf in flat.items()
             if path[-1] == "kernel" and leaf.ndim == 4 and "deconv" not in path)


def mult_adds(params, intermediates) -> dict[str, int]:
  """Mult-adds per top-level module: kernel size x output pixels for every conv and
  dense layer (a grouped kernel holds in/groups inputs, so this counts depthwise
  convolutions right)."""
  flat_params = traverse_util.flatten_dict(params)
  flat_out = traverse_util.flatten_dict(intermediates)
  totals: dict[str, int] = {}
  for path, kernel in flat_params.items():
    if path[-1] != "kernel":
      continue
    out = flat_out[path[:-1] + ("__call__",)][0]
    pixels = math.prod(out.shape[1:-1])
    totals[path[0]] = totals.get(path[0], 0) + kernel.size * pixels
  return totals


def random_variables(model, x, seed=0):
  """He-normal kernels, unit BN scales and variances, zero biases and means, drawn with
  numpy for the variables `model.init` would make: init is only traced, because its
  threefry random numbers take many CPU seconds to compile per model."""
  rng = np.random.default_rng(seed)
  abstract = jax.eval_shape(functools.partial(model.init, train=False),
                            {"params": KEY, "dropout": KEY}, x)

  def fill(path, leaf):
    name = path[-1].key
    if name == "kernel":
      std = np.sqrt(2.0 / np.prod(leaf.shape[:-1]))
      return jnp.asarray(rng.normal(0.0, std, leaf.shape), jnp.float32)
    return jnp.ones(leaf.shape) if name in ("scale", "var") else jnp.zeros(leaf.shape)

  return jax.tree_util.tree_map_with_path(fill, abstract)


def compile_quickly(fn, *args, **kwargs):
  """`fn` compiled for these arguments without LLVM's optimisations, which would
  double the compile time of the one-off runs of these tests."""
  return jax.jit(fn).lower(*args, **kwargs).compile(
      compiler_options={"xla_backend_optimization_level": 0})


def run(model, x, train=False):
  """(variables, output, state) of one compiled forward pass on random variables.
  Dropout draws from an unsafe_rbg key: threefry's compile time again."""
  variables = random_variables(model, x)
  rngs = {"dropout": jax.random.key(1, impl="unsafe_rbg")}
  apply = functools.partial(model.apply, train=train, mutable=["batch_stats"])
  out, state = compile_quickly(apply, variables, x, rngs=rngs)(variables, x, rngs=rngs)
  return variables, out, state


def images(shape, seed=1):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


# ----------------------------------------------------------------------------------
# Registry
# ----------------------------------------------------------------------------------

def test_registered_with_families_and_input_shapes():
  assert set(MY_MODELS) <= set(names())
  assert info("googlenet").input_shape == (224, 224, 3)
  assert info("xception").input_shape == (299, 299, 3)
  assert info("unet_valid").input_shape == (572, 572, 1)
  assert {info(n).family for n in MY_MODELS} == {"googlenet", "mobilenet", "xception",
                                                 "segmentation"}
  assert create("mobilenet_v1_050").width == 0.5
  assert create("fcn16s").stride == 16
  with pytest.raises(ConfigError, match="does not accept"):
    create("xception", depth=5)


# ----------------------------------------------------------------------------------
# GoogLeNet (Szegedy et al. 2014)
# ----------------------------------------------------------------------------------

# Table 1, "output size" of each Inception module at 224x224.
TABLE1_OUTPUTS = {"3a": (28, 28, 256), "3b": (28, 28, 480), "4a": (14, 14, 512),
                  "4b": (14, 14, 512), "4c": (14, 14, 512), "4d": (14, 14, 528),
                  "4e": (14, 14, 832), "5a": (7, 7, 832), "5b": (7, 7, 1024)}
# Table 1, "ops" column (millions of mult-adds). Left out: conv1, listed as 2.7K
# params / 34M ops where a 7x7x3x64 conv has 9,408 weights and 118M ops at 112x112,
# and 5a, listed as 54M where its own filter columns give 51.1M (below).
TABLE1_OPS = {"conv2": 360, "inception_3a": 128, "inception_3b": 304,
              "inception_4a": 73, "inception_4b": 88, "inception_4c": 100,
              "inception_4d": 119, "inception_4e": 170, "inception_5b": 71, "fc": 1}


def test_googlenet_parameters_shapes_and_ops_match_table1(conv_calls):
  model = create("googlenet", conv_impl="counting")
  params, inter = trace(model, (1, 224, 224, 3))
  # By hand from Table 1's filter columns. Weights: the stem 7*7*3*64 + 64*64 +
  # 9*64*192 = 9,408 + 4,096 + 110,592 = 124,096. A module with input C has
  # C*(#1x1 + #3x3red + #5x5red + poolproj) + 9*#3x3red*#3x3 + 25*#5x5red*#5x5, e.g.
  # 3a: 192*(64+96+16+32) + 9*96*128 + 25*16*32 = 39,936 + 110,592 + 12,800 = 163,328;
  # 3b 388,096; 4a 375,552; 4b 448,512; 4c 509,440; 4d 604,672; 4e 867,328;
  # 5a 1,042,432; 5b 1,442,816: 5,842,176 in all. FC 1024*1000 = 1,024,000.
  # Total weights 6,990,272. Biases: 64+64+192 = 320 in the stem, the sum of each
  # module's six filter numbers (368+640+624+648+664+704+1024+1024+1264 = 6,960), 1000.
  assert param_count(params) == 6_990_272 + 320 + 6_960 + 1_000 == 6_998_552
  # The paper's "params" column sums to 6,797.7K ("about 6.8M"), but several of its
  # rows disagree with the filter columns (4c lists 463K for 509,440 weights, 5a 1072K
  # for 1,042,432), so the sum is only close: within 3%.
  assert abs(param_count(params) / 6_797_700 - 1) < 0.03
  for name, size in TABLE1_OUTPUTS.items():
    assert inter[f"inception_{name}"]["__call__"][0].shape == (1,) + size
  ops = mult_adds(params, inter)
  ops["conv2"] += ops.pop("conv2_reduce")   # one row ("depth 2") in Table 1
  for layer, millions in TABLE1_OPS.items():
    # The column truncates some rows (4a: 73.6M listed as 73) and rounds others.
    assert abs(ops[layer] / 1e6 - millions) < 1.0, layer
  # Every convolution goes through the implementation the model was built with.
  assert len(conv_calls) == conv_kernels(params) == 3 + 9 * 6


def test_googlenet_aux_classifiers_in_training_mode_only(conv_calls):
  model = create("googlenet", aux_logits=True, conv_impl="counting")
  params, _ = trace(model, (1, 224, 224, 3))
  # Section 5: 5x5/3 avg pool (14x14 -> 4x4), 1x1 conv 128, FC 1024, FC 1000.
  # After 4a (512 channels): 512*128+128 + 4*4*128*1024+1024 + 1024*1000+1000
  # = 65,664 + 2,098,176 + 1,025,000 = 3,188,840; after 4d (528): 3,190,888.
  assert param_count(params["aux1"]) == 3_188_840
  assert param_count(params["aux2"]) == 3_190_888
  assert param_count(params) == 6_998_552 + 3_188_840 + 3_190_888
  assert len(conv_calls) == conv_kernels(params) == 3 + 9 * 6 + 2
  train_out = output_shape(model, (2, 224, 224, 3), train=True)
  assert [o.shape for o in train_out] == [(2, 1000)] * 3
  assert output_shape(model, (2, 224, 224, 3)).shape == (2, 1000)


def test_googlenet_tiny_forward_with_aux():
  # 80x80 is the smallest square input whose 4a map (80/16 = 5) fits the aux 5x5 pool.
  model = create("googlenet", num_classes=10, aux_logits=True, width=1 / 16)
  _, (logits, aux1, aux2), _ = run(model, images((2, 80, 80, 3)), train=True)
  for out in (logits, aux1, aux2):
    assert out.shape == (2, 10) and out.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(out)))
  assert not jnp.allclose(aux1, aux2)


def test_googlenet_aux_needs_a_large_enough_input():
  # 64x64: 4a is 4x4, smaller than the aux classifier's 5x5 pool.
  with pytest.raises(ConfigError, match="aux1: .* at least 5x5, got 4x4"):
    output_shape(create("googlenet", aux_logits=True), (1, 64, 64, 3))
  # Where 5x5/3 does not tile the map the pool rounds down: 96x96 gives 6x6 -> 1x1.
  train_out = output_shape(create("googlenet", aux_logits=True), (1, 96, 96, 3),
                           train=True)
  assert [o.shape for o in train_out] == [(1, 1000)] * 3
  # Without the aux heads the network runs down to tiny inputs.
  assert output_shape(create("googlenet"), (1, 64, 64, 3)).shape == (1, 1000)


# ----------------------------------------------------------------------------------
# Inception v2/v3 factorisations (Szegedy et al. 2015; the course's slides)
# ----------------------------------------------------------------------------------

def _branch_costs(block_cls, prefixes, channels=8, size=6):
  """(params, mult-adds) of a block's convs whose names start with one of `prefixes`;
  every filter number is `channels` (equal in and out), no bias, no BN."""
  block = block_cls(*(channels,) * 6, batch_norm=False, use_bias=False)
  params, inter = trace(block, (1, size, size, channels))
  flat_params = traverse_util.flatten_dict(params)
  flat_out = traverse_util.flatten_dict(inter)
  n_params = n_mults = 0
  for path, kernel in flat_params.items():
    if path[0].startswith(prefixes):
      assert path[-1] == "kernel"   # no biases
      n_params += kernel.size
      out = flat_out[path[:-1] + ("__call__",)][0]
      n_mults += kernel.size * math.prod(out.shape[1:-1])
  return n_params, n_mults


def test_two_3x3_cost_72_percent_of_a_5x5():
  c = 8
  v1 = _branch_costs(googlenet_lib.InceptionBlock, ("5x5",), c)
  v2 = _branch_costs(googlenet_lib.InceptionV2Block, ("5x5",), c)
  # The reduce 1x1 is common: 64 weights. 5x5: 25*64 = 1,600; two 3x3: 2*9*64 = 1,152.
  assert v1[0] == c * c + 25 * c * c and v2[0] == c * c + 2 * 9 * c * c
  reduce_params, reduce_mults = c * c, c * c * 36
  assert (v2[0] - reduce_params) / (v1[0] - reduce_params) == pytest.approx(18 / 25)
  assert (v2[1] - reduce_mults) / (v1[1] - reduce_mults) == pytest.approx(0.72)


def test_1x3_then_3x1_cost_two_thirds_of_a_3x3():
  c = 8
  v1 = _branch_costs(googlenet_lib.InceptionBlock, ("3x3",), c)
  factorised = _branch_costs(googlenet_lib.FactorizedInceptionBlock, ("3x3",), c)
  # 3x3: 9*64 = 576 weights (+ 64 for the reduce); 1x3 + 3x1: 6*64 = 384 (+ 64).
  assert v1[0] == c * c + 9 * c * c and factorised[0] == c * c + 6 * c * c
  reduce_params, reduce_mults = c * c, c * c * 36
  ratio = (factorised[0] - reduce_params) / (v1[0] - reduce_params)
  assert ratio == pytest.approx(6 / 9)
  assert (factorised[1] - reduce_mults) / (v1[1] - reduce_mults) == pytest.approx(2 / 3)


def test_factorised_branches_keep_the_receptive_field():
  # Two stacked 3x3 see 5x5 pixels, 1x3 then 3x1 see 3x3: the gradient of one output
  # pixel of the branch reaches exactly that window (ReLUs are open: all-ones input
  # and positive kernels).
  def window(block_cls, first, last, channels=2, size=9):
    block = block_cls(*(channels,) * 6, batch_norm=False, use_bias=False)
    x = jnp.ones((1, size, size, channels))
    variables = jax.tree.map(jnp.abs, random_variables(block, x))

    def centre(x):
      return block.apply(variables, x)[0, size // 2, size // 2, first:last].sum()

    grad = compile_quickly(jax.grad(centre), x)(x)
    rows, cols = np.nonzero(np.asarray(grad)[0, :, :, 0])
    return rows.max() - rows.min() + 1, cols.max() - cols.min() + 1

  c = 2   # channel order: 1x1, 3x3 branch, 5x5 branch, pool branch
  assert window(googlenet_lib.InceptionV2Block, 2 * c, 3 * c) == (5, 5)
  assert window(googlenet_lib.FactorizedInceptionBlock, c, 2 * c) == (3, 3)
  assert window(googlenet_lib.FactorizedInceptionBlock, 2 * c, 3 * c) == (5, 5)


def test_inception_v2_cifar_tiny_forward():
  model = create("inception_v2_cifar", width=0.25)
  variables, logits, _ = run(model, images((2, 32, 32, 3)))
  assert logits.shape == (2, 10) and logits.dtype == jnp.float32
  assert bool(jnp.all(jnp.isfinite(logits)))
  # Batch norm after every convolution, the asymmetric kernels as 1x3 and 3x1.
  block = variables["params"]["inception_b1"]
  assert block["3x3_1xn"]["conv"]["kernel"].shape[:2] == (1, 3)
  assert block["3x3_nx1"]["conv"]["kernel"].shape[:2] == (3, 1)
  assert "bias" not in block["3x3_nx1"]["conv"]
  assert "bn" in variables["batch_stats"]["inception_b1"]["5x5_b_nx1"]


# ----------------------------------------------------------------------------------
# MobileNet v1 (Howard et al. 2017)
# ----------------------------------------------------------------------------------

# Table 6: width multiplier -> (million mult-adds, million parameters) at 224x224.
TABLE6 = {1.0: (569, 4.2), 0.75: (325, 2.6), 0.5: (149, 1.3), 0.25: (41, 0.5)}
# Table 7: resolution -> million mult-adds of 1.0 MobileNet.
TABLE7 = {192: 418, 128: 186}


@pytest.mark.parametrize("width", sorted(TABLE6))
def test_mobilenet_width_multiplier_matches_table6(width, conv_calls):
  model = create("mobilenet_v1", width=width, conv_impl="counting")
  params, inter = trace(model, (1, 224, 224, 3))
  millions_ops, millions_params = TABLE6[width]
  assert round(param_count(params) / 1e6, 1) == millions_params
  assert abs(sum(mult_adds(params, inter).values()) / 1e6 - millions_ops) < 1.0
  assert len(conv_calls) == conv_kernels(params) == 1 + 2 * 13
  if width == 1.0:
    # By hand from Table 1 (conv weights; BN scale+shift, 2 per channel; FC):
    # conv1 3*3*3*32 + 64 = 928; blocks (depthwise 9M + 2M, pointwise MN + 2N):
    # 32->64 2,528; 64->128 9,152; 128->128 18,048; 128->256 34,688; 256->256 68,864;
    # 256->512 134,912; 5 x 512->512 5*268,800; 512->1024 531,968; 1024->1024
    # 1,061,888; FC 1024*1000+1000 = 1,025,000: 4,231,976 in all.
    assert param_count(params) == 4_231_976
    # Table 1's output sizes: 112x112x64 after block 1, 7x7x1024 at the end.
    assert inter["block1"]["__call__"][0].shape == (1, 112, 112, 64)
    assert inter["block13"]["__call__"][0].shape == (1, 7, 7, 1024)


@pytest.mark.parametrize("resolution", sorted(TABLE7))
def test_mobilenet_resolution_matches_table7(resolution):
  params, inter = trace(create("mobilenet_v1"), (1, resolution, resolution, 3))
  assert abs(sum(mult_adds(params, inter).values()) / 1e6 - TABLE7[resolution]) < 1.0


def test_mobilenet_tiny_forward():
  model = create("mobilenet_v1_025", num_classes=10)
  _, logits, state = run(model, images((2, 32, 32, 3)), train=True)
  assert logits.shape == (2, 10) and bool(jnp.all(jnp.isfinite(logits)))
  # Training updates the BN running statistics (zero means before).
  assert not jnp.allclose(state["batch_stats"]["block13"]["pointwise_bn"]["bn"]["mean"], 0)
  # The depthwise kernel holds one 3x3 filter per channel (8 at alpha = 0.25).
  params, _ = trace(model, (1, 32, 32, 3))
  assert params["block1"]["depthwise"]["kernel"].shape == (3, 3, 1, 8)


# ----------------------------------------------------------------------------------
# Xception (Chollet 2017)
# ----------------------------------------------------------------------------------

def test_xception_parameter_count_matches_table3(conv_calls):
  model = create("xception", conv_impl="counting")
  params, inter = trace(model, (1, 299, 299, 3))
  # Table 3: 22,855,952. By hand (BN: 2 per channel; separable i->o: 9i + io + 2o):
  # conv1 864 + 64, conv2 18,432 + 128; entry block 64->128: 1x1/2 shortcut
  # 8,192 + 256, sep 64->128 9,024 (576 + 8,192 + 256), sep 128->128 17,792;
  # 128->256: 32,768 + 512, 34,432, 68,352; 256->728: 186,368 + 1,456, 190,128,
  # 537,992; middle 8 * 3 * 537,992 = 12,911,808; exit block: shortcut
  # 745,472 + 2,048, sep 728->728 537,992, sep 728->1024 754,072; sep 1024->1536
  # 1,585,152; sep 1536->2048 3,163,648; FC 2048*1000 + 1000 = 2,049,000.
  # Sum: 22,855,952.
  assert param_count(params) == 22_855_952
  assert inter["exit_sepconv2"]["__call__"][0].shape == (1, 10, 10, 2048)
  # 2 plain convs, 4 shortcuts, 2 kernels per separable conv (6 + 24 + 2 + 2).
  assert len(conv_calls) == conv_kernels(params) == 2 + 4 + 2 * 34


def test_xception_tiny_forward_and_too_small_input():
  model = create("xception", num_classes=10, width=1 / 16, middle_blocks=2)
  _, logits, _ = run(model, images((2, 32, 32, 3)), train=True)
  assert logits.shape == (2, 10) and bool(jnp.all(jnp.isfinite(logits)))
  # 4x4 -> 2x2 after the strided conv1: too small for the unpadded 3x3 conv2.
  with pytest.raises(ConfigError, match="conv2.*smaller than"):
    output_shape(model, (1, 4, 4, 3))


# ----------------------------------------------------------------------------------
# FCN (Long et al. 2015)
# ----------------------------------------------------------------------------------

def test_fcn_vgg16_parameter_count_matches_table1(conv_calls):
  model = create("fcn8s", conv_impl="counting")
  params, _ = trace(model, (1, 64, 64, 3))
  # Long et al. Table 1: FCN-VGG16 has 134M parameters. VGG-16's 13 convs 14,714,688;
  # fc6 7*7*512*4096 + 4096 = 102,764,544; fc7 4096*4096 + 4096 = 16,781,312;
  # score_fr 4096*21 + 21 = 86,037. FCN-32s: 134,346,581 (its final upsampling is
  # fixed, no parameters).
  fcn32s = 14_714_688 + 102_764_544 + 16_781_312 + 86_037
  assert param_count(params) - param_count({k: params[k] for k in (
      "score_pool4", "upscore2", "score_pool3", "upscore_pool4")}) == fcn32s
  assert round(fcn32s / 1e6) == 134
  # FCN-8s adds score_pool4 512*21 + 21, score_pool3 256*21 + 21 and two learned 2x
  # upsamplings 4*4*21*21 = 7,056 each.
  assert param_count(params) == fcn32s + 10_773 + 5_397 + 2 * 7_056
  assert len(conv_calls) == conv_kernels(params) == 13 + 2 + 3
  # A learned final upsampling adds its 64x64 kernel, 64*64*21*21 = 1,806,336.
  learned, _ = trace(create("fcn32s", learn_final_upsample=True), (1, 64, 64, 3))
  assert param_count(learned) == fcn32s + 1_806_336
  with pytest.raises(ConfigError, match="FCN stride"):
    output_shape(create("fcn8s", stride=4), (1, 64, 64, 3))


@pytest.mark.parametrize("name", ["fcn32s", "fcn16s", "fcn8s"])
def test_fcn_outputs_per_pixel_logits_at_input_size(name):
  # 70x50 is no multiple of 32: pool5 is 3x2 (ceil), the upsampled maps are cropped.
  model = create(name, width=2, num_classes=5)
  _, out, _ = run(model, images((2, 70, 50, 3)), train=True)
  assert out.shape == (2, 70, 50, 5) and out.dtype == jnp.float32
  assert bool(jnp.all(jnp.isfinite(out)))
  assert output_shape(model, (1, 64, 64, 3)).shape == (1, 64, 64, 5)


def test_fcn_upsampling_is_initialised_bilinear():
  model = create("fcn16s", width=2, num_classes=3)
  # Only upscore2 is computed: XLA drops every other initialiser and the forward pass.
  init = jax.jit(lambda x: model.init(KEY, x, train=False)["params"]["upscore2"])
  kernel = np.asarray(init(jnp.zeros((1, 64, 64, 3)))["deconv"]["kernel"])
  assert kernel.shape == (4, 4, 3, 3)
  # FCN's upsample_filt for a 4x4 kernel (factor 2, centre 1.5): 1 - |i - 1.5| / 2
  # = .25 .75 .75 .25 per axis, on the class diagonal only.
  tent = np.array([0.25, 0.75, 0.75, 0.25])
  for i in range(3):
    for o in range(3):
      expected = np.outer(tent, tent) if i == o else np.zeros((4, 4))
      np.testing.assert_allclose(kernel[:, :, i, o], expected)


def test_fixed_upsampling_equals_the_bilinear_initialised_transposed_conv():
  # The fixed final upsampling runs as two 1-D passes; at init the learned one is a
  # full 2-D transposed convolution with the bilinear kernel: the same map.
  x = images((2, 5, 4, 3))
  learned = layers.ConvTranspose(3, 16, 8, "VALID", use_bias=False)
  kernel = segmentation.bilinear_init(KEY, (16, 16, 3, 3))
  expected = learned.apply({"params": {"deconv": {"kernel": kernel}}}, x)
  np.testing.assert_allclose(segmentation.bilinear_upsample(x, 8), expected, atol=1e-5)


@pytest.mark.parametrize("factor", [2, 8, 32])
def test_bilinear_upsampling_is_centred(factor):
  # A ramp 0..5 upsampled f times and cropped from f/2: output pixel j (centre at
  # input coordinate (j + 0.5) / f - 0.5) reads (j - (f - 1) / 2) / f, away from
  # the borders (where the missing neighbour drops out).
  n = 6
  ramp = jnp.tile(jnp.arange(n, dtype=jnp.float32)[None, :, None, None], (1, 1, n, 1))
  up = segmentation.bilinear_upsample(ramp, factor)
  assert up.shape == (1, (n + 1) * factor, (n + 1) * factor, 1)
  up = segmentation.crop(up, (n * factor, n * factor), (factor // 2, factor // 2))
  j = np.arange(factor, (n - 1) * factor)
  np.testing.assert_allclose(up[0, j, n * factor // 2, 0], (j - (factor - 1) / 2) / factor,
                             atol=1e-5)


# ----------------------------------------------------------------------------------
# U-Net (Ronneberger et al. 2015)
# ----------------------------------------------------------------------------------

def test_unet_paper_shapes_and_parameter_count(conv_calls):
  model = create("unet_valid", conv_impl="counting")
  params, inter = trace(model, (1, 572, 572, 1))
  # Figure 1: 572x572x1 -> 388x388x2; 568x568x64 is cropped to 392x392 for up1.
  assert inter["__call__"][0].shape == (1, 388, 388, 2)
  assert inter["down1"]["__call__"][0].shape == (1, 568, 568, 64)
  assert inter["bottom"]["__call__"][0].shape == (1, 28, 28, 1024)
  assert inter["upconv1"]["__call__"][0].shape == (1, 392, 392, 64)
  # By hand, weights + biases, 1 input channel, 2 classes (3x3: 9io + o):
  # down1 640 + 36,928; down2 73,856 + 147,584; down3 295,168 + 590,080;
  # down4 1,180,160 + 2,359,808; bottom 4,719,616 + 9,438,208 (= 18,842,048 so far);
  # up4: up-conv 2*2*1024*512 + 512 = 2,097,664, convs 4,719,104 + 2,359,808;
  # up3: 524,544 + 1,179,904 + 590,080; up2: 131,200 + 295,040 + 147,584;
  # up1: 32,832 + 73,792 + 36,928; final 1x1 64*2 + 2 = 130. Total 31,030,658.
  # (The often quoted 31,031,685 is a Keras U-Net with an extra 3x3 conv to 2
  # channels and a 1x1 to 1: 31,030,528 + 1,154 + 3.)
  assert param_count(params) == 31_030_658
  assert len(conv_calls) == conv_kernels(params) == 2 * 9 + 1
  # 'SAME' padding changes no parameter.
  assert param_count(trace(create("unet"), (1, 64, 64, 1))[0]) == 31_030_658


def test_unet_tiny_forward_same_with_batch_norm_and_valid():
  model = create("unet", width=4, num_classes=3, batch_norm=True)
  variables, out, state = run(model, images((2, 32, 48, 1)), train=True)
  assert out.shape == (2, 32, 48, 3) and out.dtype == jnp.float32
  assert "bias" not in variables["params"]["down1"]["conv1"]
  assert not jnp.allclose(variables["batch_stats"]["down1"]["bn1"]["bn"]["mean"],
                          state["batch_stats"]["down1"]["bn1"]["bn"]["mean"])
  # Unpadded: the paper's rule output = input - 184 (572 -> 388) at every size that
  # survives the poolings, e.g. 188 -> 4.
  _, out, _ = run(create("unet_valid", width=2), images((1, 188, 188, 1)))
  assert out.shape == (1, 4, 4, 2) and bool(jnp.all(jnp.isfinite(out)))


def test_unet_rejects_inputs_that_do_not_fit():
  with pytest.raises(ConfigError, match="multiples of 16"):
    output_shape(create("unet"), (1, 24, 24, 1))
  # Unpadded, 60x60 shrinks to 2x2 before the second 3x3 conv of the fourth level
  # (60 -> 56 -> 28 -> 24 -> 12 -> 8 -> 4 -> 2).
  with pytest.raises(ConfigError, match="down4/conv2.*smaller than"):
    output_shape(create("unet_valid"), (1, 60, 60, 1))
  with pytest.raises(ConfigError, match="U-Net padding"):
    output_shape(create("unet", padding="FULL"), (1, 16, 16, 1))


# ----------------------------------------------------------------------------------
# SegNet (Badrinarayanan et al. 2017)
# ----------------------------------------------------------------------------------

def test_segnet_vgg16_parameter_count_and_shapes(conv_calls):
  model = create("segnet", conv_impl="counting")
  params, inter = trace(model, (1, 360, 480, 3))
  assert inter["__call__"][0].shape == (1, 360, 480, 11)
  # By hand: encoder = VGG-16's 13 convs without biases (BN shifts instead):
  # 14,714,688 - 4,224 = 14,710,464, BN 2 x 4,224; decoder 3x3 weights
  # 3 x 512^2 + 2 x 512^2 + 512 x 256 + 2 x 256^2 + 256 x 128 + 128^2 + 128 x 64
  # + 64^2 = 14,708,736 (x 9), BN 2 x 3,712, classifier 64 x 9 x 11 + 11 = 6,347.
  # Total 29,441,419: the paper's "29.5 M" (Table 6).
  assert param_count(params) == 29_441_419
  assert len(conv_calls) == conv_kernels(params) == 26
  assert set(params) >= {"conv1_1", "conv5_3", "conv5_3_D", "conv1_1_D", "bn1_2_D"}
  assert "bn1_1_D" not in params                   # the classifier has no BN
  # Odd sizes: 'SAME' pools and unpooling to each encoder stage's size restore them.
  _, out, _ = run(create("segnet", width=2, depth=3, num_classes=3), images((2, 45, 37, 1)))
  assert out.shape == (2, 45, 37, 3) and bool(jnp.all(jnp.isfinite(out)))


def test_segnet_unpools_its_decoder_values_to_the_encoder_argmax():
  model = create("segnet", width=4, depth=2, num_classes=5)
  x = images((2, 16, 12, 1))
  variables = random_variables(model, x)
  out, state = compile_quickly(functools.partial(model.apply, train=False,
                                                 mutable=["intermediates"]),
                               variables, x)(variables, x)
  assert out.shape == (2, 16, 12, 5)
  sown = {k: v[0] for k, v in state["intermediates"].items()}
  for stage in (1, 2):
    features = np.asarray(sown[f"encoder{stage}"])          # what was pooled
    where = np.asarray(sown[f"switches{stage}"])
    values = np.asarray(sown[f"decoder{stage}"])             # what the decoder unpools
    unpooled = np.asarray(sown[f"unpooled{stage}"])
    n, h, w, c = features.shape
    assert unpooled.shape == (n, h, w, c) and values.shape == where.shape
    # The switches are the argmax of each 2x2 window of the encoder's features.
    windows = features.reshape(n, h // 2, 2, w // 2, 2, c)
    flat = features.reshape(n, h * w, c)
    at_switch = np.take_along_axis(flat, where.reshape(n, -1, c), axis=1)
    np.testing.assert_array_equal(at_switch.reshape(where.shape), windows.max((2, 4)))
    rows, cols = np.divmod(where, w)
    top = (np.arange(h // 2) * 2)[None, :, None, None]
    left = (np.arange(w // 2) * 2)[None, None, :, None]
    assert np.all((rows - top >= 0) & (rows - top < 2) & (cols - left >= 0) &
                  (cols - left < 2))                         # inside its own window
    # Every decoder value lands on its switch, and everything else is zero.
    expected = np.zeros((n, h * w, c), np.float32)
    np.put_along_axis(expected, where.reshape(n, -1, c), values.reshape(n, -1, c), axis=1)
    np.testing.assert_array_equal(unpooled, expected.reshape(n, h, w, c))
    assert (unpooled != 0).sum() <= values.size


def test_segnet_rejects_a_depth_vgg16_does_not_have():
  with pytest.raises(ConfigError, match="SegNet depth must be 1..5"):
    output_shape(create("segnet", depth=6), (1, 64, 64, 3))


# ----------------------------------------------------------------------------------
# All models: mixed precision keeps float32 params and logits
# ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name,kwargs,shape", [
    ("googlenet", {"width": 1 / 16}, (1, 32, 32, 3)),
    ("inception_v2_cifar", {"width": 0.25}, (1, 32, 32, 3)),
    ("mobilenet_v1", {"width": 0.25}, (1, 32, 32, 3)),
    ("xception", {"width": 1 / 16, "middle_blocks": 1}, (1, 32, 32, 3)),
    ("fcn8s", {"width": 2}, (1, 32, 32, 3)),
    ("unet", {"width": 4}, (1, 32, 32, 1)),
    ("segnet", {"width": 4, "depth": 2}, (1, 16, 16, 1)),
])
def test_bfloat16_compute_float32_params_and_outputs(name, kwargs, shape):
  model = create(name, dtype=jnp.bfloat16, **kwargs)
  params, inter = trace(model, shape)
  assert {leaf.dtype for leaf in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}
  assert inter["__call__"][0].dtype == jnp.float32
  # ... while the layers compute in bfloat16.
  conv_outputs = [out[0].dtype for path, out in
                  traverse_util.flatten_dict(inter).items() if len(path) > 1]
  assert jnp.dtype(jnp.bfloat16) in conv_outputs

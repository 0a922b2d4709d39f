"""ResNets and their plain twins (He et al. 2016), ResNeXt-50 and DenseNet-121.

Big models are checked with jax.eval_shape only; real forward/backward passes use
32x32 inputs, batch 2 and, past ResNet-20, a first-stage width of 4.
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax import lax

import cnn.models as models
from cnn.errors import ConfigError
from cnn.models import resnet
from cnn.models.resnet import centered_same_padding, cifar_resnet, pad_shortcut, stage_of

CIFAR = (32, 32, 3)
IMAGENET = (224, 224, 3)


def abstract_variables(model, hwc, batch=1):
  x = jnp.zeros((batch,) + tuple(hwc), jnp.float32)
  return jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))


def num_params(model, hwc):
  return sum(leaf.size for leaf in jax.tree.leaves(abstract_variables(model, hwc)["params"]))


def shapes(tree):
  return jax.tree.map(lambda leaf: leaf.shape, tree)


def random_variables(model, hwc, seed=0):
  """He-normal kernels, unit BN scales and variances, zero biases and means, drawn
  with numpy from the abstract variables: model.init's threefry random numbers take
  several CPU seconds to compile per model, and these tests do not test init."""
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = path[-1].key
    if name == "kernel":
      std = np.sqrt(2.0 / np.prod(leaf.shape[:-1]))
      return jnp.asarray(rng.normal(0.0, std, leaf.shape), jnp.float32)
    return jnp.ones(leaf.shape) if name in ("scale", "var") else jnp.zeros(leaf.shape)

  return jax.tree_util.tree_map_with_path(fill, abstract_variables(model, hwc))


@pytest.fixture(scope="module")
def zero_init_params():
  """Real init of a small ResNet (depth 8, n = 1); the unsafe_rbg key only changes
  how random bits are made (compiles in ~1 s instead of ~7 s), not the distribution."""
  model = cifar_resnet(8, zero_init_residual=True)
  init = jax.jit(model.init, static_argnames="train")
  return init(jax.random.key(0, impl="unsafe_rbg"), jnp.zeros((1,) + CIFAR),
              train=False)["params"]


# ----------------------------------------------------------------------------------
# Registry
# ----------------------------------------------------------------------------------

def test_registry_has_every_resnet_and_plain_twin():
  names = set(models.names())
  for depth in (20, 32, 44, 56, 110, 1202):
    assert {f"resnet{depth}", f"plain{depth}"} <= names
    assert models.info(f"resnet{depth}").input_shape == CIFAR
  for depth in (18, 34, 50, 101, 152):
    assert {f"resnet{depth}", f"plain{depth}"} <= names
    assert models.info(f"plain{depth}").input_shape == IMAGENET
  assert {"resnext50_32x4d", "densenet121"} <= names
  assert models.create("plain56").residual is False
  assert models.create("resnet56").residual is True


# ----------------------------------------------------------------------------------
# Parameter counts
# ----------------------------------------------------------------------------------

def test_resnet20_parameter_count_by_hand():
  # Convs have no bias; each BN has a scale and a bias per channel.
  stem = 3 * 3 * 3 * 16 + 2 * 16                                   # 432 + 32 = 464
  stage1 = 3 * 2 * (3 * 3 * 16 * 16 + 2 * 16)                      # 3 * 4672 = 14016
  stage2 = ((3 * 3 * 16 * 32 + 2 * 32) + (3 * 3 * 32 * 32 + 2 * 32)  # 13952
            + 2 * 2 * (3 * 3 * 32 * 32 + 2 * 32))                  # + 37120 = 51072
  stage3 = ((3 * 3 * 32 * 64 + 2 * 64) + (3 * 3 * 64 * 64 + 2 * 64)  # 55552
            + 2 * 2 * (3 * 3 * 64 * 64 + 2 * 64))                 # + 147968 = 203520
  head = 64 * 10 + 10                                              # 650
  assert stem + stage1 + stage2 + stage3 + head == 269_722
  assert num_params(models.create("resnet20"), CIFAR) == 269_722
  assert num_params(models.create("plain20"), CIFAR) == 269_722


@pytest.mark.parametrize("depth,paper_millions,digits", [
    (20, 0.27, 2), (32, 0.46, 2), (44, 0.66, 2), (56, 0.85, 2), (110, 1.7, 1),
    (1202, 19.4, 1)])
def test_cifar_parameter_counts_match_table6(depth, paper_millions, digits):
  # He et al. Table 6 rounds to `digits` decimals of a million.
  count = num_params(models.create(f"resnet{depth}"), CIFAR)
  assert round(count / 1e6, digits) == pytest.approx(paper_millions)


@pytest.mark.parametrize("name,expected", [
    # torchvision's counts of the same architectures (pytorch.org/vision/stable/models,
    # "num_params" of each *_Weights.IMAGENET1K_V1 entry).
    ("resnet18", 11_689_512), ("resnet34", 21_797_672), ("resnet50", 25_557_032),
    ("resnet101", 44_549_160), ("resnet152", 60_192_808),
    ("resnext50_32x4d", 25_028_904), ("densenet121", 7_978_856)])
def test_imagenet_parameter_counts_match_torchvision(name, expected):
  assert num_params(models.create(name), IMAGENET) == expected


def test_plain18_has_resnet18_parameters_minus_projections():
  # ResNet-18 option B projects at the first block of stages 2-4:
  # 1x1 convs 64->128, 128->256, 256->512 plus their BN.
  projections = (64 * 128 + 2 * 128) + (128 * 256 + 2 * 256) + (256 * 512 + 2 * 512)
  assert projections == 8448 + 33_280 + 132_096 == 173_824
  assert num_params(models.create("plain18"), IMAGENET) == 11_689_512 - projections


# ----------------------------------------------------------------------------------
# Plain twins and shortcut options
# ----------------------------------------------------------------------------------

@pytest.mark.parametrize("depth", [20, 56])
def test_plain_twin_has_identical_parameter_tree_for_option_a(depth):
  residual = abstract_variables(models.create(f"resnet{depth}", shortcut="A"), CIFAR)
  plain = abstract_variables(models.create(f"plain{depth}"), CIFAR)
  assert jax.tree.structure(plain) == jax.tree.structure(residual)
  assert shapes(plain) == shapes(residual)


def test_plain18_matches_resnet18_option_a_tree():
  residual = abstract_variables(models.create("resnet18", shortcut="A"), (64, 64, 3))
  plain = abstract_variables(models.create("plain18"), (64, 64, 3))
  assert shapes(plain) == shapes(residual)


def test_option_b_and_c_add_the_projection_parameters():
  base = num_params(cifar_resnet(20, shortcut="A"), CIFAR)
  # B: 1x1 projections (+BN) where the shape changes: 16->32 and 32->64.
  option_b = (16 * 32 + 2 * 32) + (32 * 64 + 2 * 64)                # 576 + 2176 = 2752
  # C: every shortcut projects: 3 blocks per stage, in->out channels as in B.
  option_c = (3 * (16 * 16 + 2 * 16)                                # 864
              + (16 * 32 + 2 * 32) + 2 * (32 * 32 + 2 * 32)         # 576 + 2176
              + (32 * 64 + 2 * 64) + 2 * (64 * 64 + 2 * 64))        # 2176 + 8448
  assert (option_b, option_c) == (2752, 14240)
  assert num_params(cifar_resnet(20, shortcut="B"), CIFAR) - base == option_b
  assert num_params(cifar_resnet(20, shortcut="C"), CIFAR) - base == option_c
  params_b = abstract_variables(cifar_resnet(20, shortcut="b"), CIFAR)["params"]
  assert "proj_conv" in params_b["stage2_block0"]
  assert "proj_conv" not in params_b["stage2_block1"]
  assert "proj_conv" not in params_b["stage1_block0"]


def test_pad_shortcut_subsamples_and_appends_zero_channels():
  x = jnp.arange(2 * 4 * 4 * 3, dtype=jnp.float32).reshape(2, 4, 4, 3)
  y = pad_shortcut(x, 6, 2)
  assert y.shape == (2, 2, 2, 6)
  np.testing.assert_array_equal(y[..., :3], x[:, 0::2, 0::2, :])
  np.testing.assert_array_equal(y[..., 3:], 0.0)
  assert pad_shortcut(x, 3, 1) is x


def test_centered_padding_places_windows_as_pytorch():
  # PyTorch pads (k - 1) // 2 on both sides and floors the output size; lax does the
  # same with explicit symmetric padding, so the two must agree pixel for pixel.
  x = jax.random.normal(jax.random.key(0), (1, 9, 8, 2))
  for k, s in [(3, 2), (7, 2), (3, 1), (1, 2)]:
    w = jax.random.normal(jax.random.key(k), (k, k, 2, 3))
    p = (k - 1) // 2
    torch_like = lax.conv_general_dilated(x, w, (s, s), [(p, p), (p, p)],
                                          dimension_numbers=("NHWC", "HWIO", "NHWC"))
    ours = lax.conv_general_dilated(x, w, (s, s), centered_same_padding((9, 8), k, s),
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))
    assert ours.shape[1:3] == (-(-9 // s), -(-8 // s))
    np.testing.assert_allclose(ours, torch_like, rtol=1e-5, atol=1e-5)
  assert centered_same_padding((32, 32), 3, 2) == ((1, 0), (1, 0))
  assert centered_same_padding((224, 224), 7, 2) == ((3, 2), (3, 2))


@pytest.mark.parametrize("residual", [True, False])
def test_blocks_with_zero_branch_pass_only_the_shortcut(residual):
  # With every residual branch's last BN scale at 0 (zero_init_residual), a ResNet's
  # blocks reduce to relu(shortcut(x)): stage outputs are the stem's output,
  # subsampled and zero-padded by option A. The plain twin, without shortcuts,
  # outputs zeros.
  model = cifar_resnet(8, width=4, residual=residual)
  variables = random_variables(model, CIFAR)
  params = dict(variables["params"])
  for block in ("stage1_block0", "stage2_block0", "stage3_block0"):
    bn2 = params[block]["bn2"]["bn"]
    params[block] = {**params[block], "bn2": {"bn": {**bn2, "scale": 0 * bn2["scale"]}}}
  run = jax.jit(lambda v, x: model.apply(v, x, train=False, capture_intermediates=True,
                                         mutable=["intermediates"]))
  x = jax.random.normal(jax.random.key(3), (2,) + CIFAR)
  _, state = run({"params": params, "batch_stats": variables["batch_stats"]}, x)
  inter = state["intermediates"]
  stem = jax.nn.relu(inter["bn1"]["__call__"][0])
  out = inter["stage3_block0"]["__call__"][0]
  assert out.shape == (2, 8, 8, 16)
  if residual:
    np.testing.assert_array_equal(out, pad_shortcut(pad_shortcut(stem, 8, 2), 16, 2))
  else:
    np.testing.assert_array_equal(out, 0.0)


# ----------------------------------------------------------------------------------
# Names and stages
# ----------------------------------------------------------------------------------

def test_parameters_group_by_stage():
  params = abstract_variables(models.create("resnet20"), CIFAR)["params"]
  expected = {"conv1", "bn1", "head"} | {f"stage{s}_block{b}" for s in (1, 2, 3)
                                         for b in range(3)}
  assert set(params) == expected
  groups = {stage_of(name) for name in params}
  assert groups == {"stem", "stage1", "stage2", "stage3", "head"}
  assert stage_of("params/stage3_block2/conv1/kernel") == "stage3"
  assert stage_of("stage12_block0/bn1/bn/scale") == "stage12"
  assert stage_of("bn1/bn/bias") == "stem"
  assert stage_of("head/kernel") == "head"
  dense = abstract_variables(models.create("densenet121"), (32, 32, 3))["params"]
  assert {stage_of(name) for name in dense} == {"stem", "stage1", "stage2", "stage3",
                                                "stage4", "head"}


# ----------------------------------------------------------------------------------
# Errors and options
# ----------------------------------------------------------------------------------

def test_depth_not_6n_plus_2_fails():
  with pytest.raises(ConfigError) as e:
    cifar_resnet(21)
  assert str(e.value) == ("CIFAR ResNet depth must be 6n+2 (20, 32, 44, 56, 110, ...), "
                          "got 21.")
  with pytest.raises(ConfigError):
    models.create("resnet20", depth=21)
  with pytest.raises(ConfigError):
    resnet.imagenet_resnet(20)


def test_bad_options_fail():
  with pytest.raises(ConfigError, match="shortcut option"):
    cifar_resnet(20, shortcut="D")
  with pytest.raises(ConfigError, match="zero_init_residual needs residual=True"):
    models.create("plain20", zero_init_residual=True)
  with pytest.raises(ConfigError, match="conv_impl"):
    abstract_variables(models.create("resnet20", conv_impl="no-such-impl"), CIFAR)


def test_zero_init_residual_zeroes_the_last_bn_of_each_branch(zero_init_params):
  blocks = [k for k in zero_init_params if k.startswith("stage")]
  assert blocks == ["stage1_block0", "stage2_block0", "stage3_block0"]
  for block in blocks:
    np.testing.assert_array_equal(zero_init_params[block]["bn2"]["bn"]["scale"], 0.0)
    np.testing.assert_array_equal(zero_init_params[block]["bn1"]["bn"]["scale"], 1.0)
  np.testing.assert_array_equal(zero_init_params["bn1"]["bn"]["scale"], 1.0)


def test_convolutions_are_he_initialised(zero_init_params):
  # He et al. 2015: N(0, 2 / fan_in); stage3 conv2 is 3x3x64x64 (fan_in 576, 36864
  # draws, so the sample std is within ~1% of sqrt(2 / 576) = 0.0589).
  kernel = np.asarray(zero_init_params["stage3_block0"]["conv2"]["kernel"])
  assert kernel.shape == (3, 3, 64, 64)
  assert abs(kernel.mean()) < 0.002
  assert kernel.std() == pytest.approx(np.sqrt(2.0 / 576), rel=0.03)
  assert "bias" not in zero_init_params["stage3_block0"]["conv2"]


def test_mixed_precision_keeps_float32_params_and_logits():
  model = models.create("resnet20", width=4, dtype=jnp.bfloat16)
  variables = abstract_variables(model, CIFAR)
  assert {leaf.dtype for leaf in jax.tree.leaves(variables["params"])} == {jnp.dtype(jnp.float32)}
  out = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables,
                       jax.ShapeDtypeStruct((2,) + CIFAR, jnp.float32))
  assert out.shape == (2, 10) and out.dtype == jnp.float32


# ----------------------------------------------------------------------------------
# Shapes at ImageNet size (eval_shape) and a real small forward
# ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["resnet18", "resnet50", "plain34", "resnext50_32x4d",
                                  "densenet121"])
def test_imagenet_models_output_shape(name):
  model = models.create(name)
  assert models.output_shape(model, (2,) + IMAGENET).shape == (2, 1000)


def test_resnet50_feature_map_sizes_follow_table1():
  # Table 1: conv1 112, conv2_x 56 (after the 3x3/2 pool), conv3_x 28, conv4_x 14,
  # conv5_x 7, with 256 / 512 / 1024 / 2048 output channels.
  model = models.create("resnet50")
  _, state = jax.eval_shape(
      lambda x: model.init_with_output(jax.random.key(0), x, train=False,
                                       capture_intermediates=True),
      jax.ShapeDtypeStruct((1,) + IMAGENET, jnp.float32))
  inter = state["intermediates"]
  assert inter["conv1"]["__call__"][0].shape == (1, 112, 112, 64)
  for stage, (size, channels) in enumerate([(56, 256), (28, 512), (14, 1024),
                                            (7, 2048)], start=1):
    out = inter[f"stage{stage}_block0"]["__call__"][0]
    assert out.shape == (1, size, size, channels)


def test_resnet18_real_forward_at_32x32():
  model = models.create("resnet18", num_classes=7)
  x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
  variables = random_variables(model, (32, 32, 3))
  logits = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
  assert logits.shape == (2, 7) and logits.dtype == jnp.float32
  assert np.all(np.isfinite(logits))
  assert not np.allclose(logits[0], logits[1])


# ----------------------------------------------------------------------------------
# Training: forward + backward, BatchNorm statistics
# ----------------------------------------------------------------------------------

def loss_and_grads(model, variables, x, labels):
  def loss_fn(params):
    logits, updates = model.apply({"params": params,
                                   "batch_stats": variables["batch_stats"]},
                                  x, train=True, mutable=["batch_stats"])
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    return loss, updates["batch_stats"]

  step = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))
  # Unoptimised machine code compiles ~1.5x faster; these tests check values only.
  compiled = step.lower(variables["params"]).compile(
      {"xla_backend_optimization_level": 0})
  return compiled(variables["params"])


@pytest.mark.parametrize("name,width", [("resnet20", 16), ("resnet32", 4), ("resnet44", 4),
                                        ("resnet56", 4), ("plain20", 4)])
def test_cifar_forward_backward(name, width):
  model = models.create(name, width=width)
  x = jax.random.normal(jax.random.key(1), (2,) + CIFAR)
  labels = jnp.array([3, 7])
  variables = random_variables(model, CIFAR)
  (loss, new_stats), grads = loss_and_grads(model, variables, x, labels)
  assert np.isfinite(loss) and loss > 0
  assert jax.tree.structure(grads) == jax.tree.structure(variables["params"])
  assert shapes(grads) == shapes(variables["params"])
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
  # Every layer gets a gradient: the head, the stem and the deepest block's convs.
  assert np.any(grads["conv1"]["kernel"] != 0)
  assert np.any(grads["stage3_block0"]["conv1"]["kernel"] != 0)
  assert jax.tree.structure(new_stats) == jax.tree.structure(variables["batch_stats"])


def test_batchnorm_running_stats_update_in_train_and_serve_in_eval():
  model = cifar_resnet(8, width=4)
  train = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))
  evaluate = jax.jit(lambda v, x: model.apply(v, x, train=False))
  x = 3.0 + 2.0 * jax.random.normal(jax.random.key(1), (4,) + CIFAR)
  # Same first sample, different batch-mates.
  x_other = x.at[1:].set(jax.random.normal(jax.random.key(2), (3,) + CIFAR))
  variables = random_variables(model, CIFAR)
  stats0 = variables["batch_stats"]
  logits_train, updates = train(variables, x)
  stats1 = updates["batch_stats"]
  # The stem BN saw a batch of non-zero mean: its running mean moved off its initial
  # 0 (by 0.1 of the batch mean, momentum 0.9) and its variance off 1.
  np.testing.assert_array_equal(stats0["bn1"]["bn"]["mean"], 0.0)
  assert np.all(stats1["bn1"]["bn"]["mean"] != 0.0)
  assert np.all(stats1["bn1"]["bn"]["var"] != 1.0)
  assert jax.tree.structure(stats1) == jax.tree.structure(stats0)
  # Eval uses the running statistics: a sample's output does not depend on the rest
  # of the batch, and it changes when the statistics change.
  new = {"params": variables["params"], "batch_stats": stats1}
  np.testing.assert_allclose(evaluate(new, x)[0], evaluate(new, x_other)[0],
                             rtol=1e-5, atol=1e-5)
  assert not np.allclose(evaluate(variables, x)[0], evaluate(new, x)[0])
  # Train mode normalises by the batch: other batch-mates, another output.
  assert not np.allclose(logits_train[0], train(variables, x_other)[0][0])

"""Every registered model builds at the input shape its family is used with and runs a
train-mode forward pass: small (CIFAR/MNIST-size) models for real on a batch of 2,
ImageNet-size and very deep ones abstractly (`jax.eval_shape`: shapes, dtypes and the
layers' own checks, no arithmetic). A family file that fails to import fails here."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnn import models

NUM_CLASSES = 7       # not a dataset's count, so a hard-coded head size would show
# Run for real: small inputs and at most 56 layers (compiling 110+ layers costs more
# than it tells; their blocks are those of the 20-56 layer nets).
SMALL_PIXELS = 32 * 32
MAX_REAL_DEPTH = 56
# The generic builders take the depth the named ones fix (resnet20 = cifar_resnet(20)).
REAL_FAMILIES = ("lenet", "resnet")   # Inception-v2 on CIFAR is 32x32 but 3x ResNet-56
REQUIRED = {"cifar_resnet": {"depth": 8}, "imagenet_resnet": {"depth": 18}}


def _depth(name: str) -> int:
  digits = "".join(ch for ch in name if ch.isdigit())
  return int(digits) if digits else 0


def _train_forward(model, x):
  """init in eval mode, then a train-mode apply (dropout on, BN statistics updated)."""
  rngs = {"params": jax.random.key(0), "dropout": jax.random.key(1)}
  variables = model.init(rngs, x, train=False)
  out, updates = model.apply(variables, x, train=True, rngs={"dropout": rngs["dropout"]},
                             mutable=["batch_stats"])
  return out, updates, variables


def _main(out):
  """Models with auxiliary heads (GoogLeNet) return (main, aux, ...) in training."""
  return out[0] if isinstance(out, (tuple, list)) else out


@pytest.mark.parametrize("name", models.names())
def test_every_registered_model_runs_a_train_step_forward(name):
  info = models.info(name)
  model = models.create(name, num_classes=NUM_CLASSES, **REQUIRED.get(name, {}))
  h, w, c = info.input_shape
  small = (h * w <= SMALL_PIXELS and _depth(name) <= MAX_REAL_DEPTH
           and info.family in REAL_FAMILIES)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, h, w, c)), jnp.float32)
  if small:
    out, updates, variables = _train_forward(model, x)
    main = _main(out)
    assert np.all(np.isfinite(np.asarray(main)))
    if variables.get("batch_stats"):   # train mode moves the running statistics
      before = jax.tree.leaves(variables["batch_stats"])
      after = jax.tree.leaves(updates["batch_stats"])
      assert any(not np.allclose(a, b) for a, b in zip(before, after))
  else:
    # One trace: init_with_output in train mode builds every layer and runs the
    # train-mode forward pass (half the tracing of init + apply for 1202 layers).
    rngs = {"params": jax.random.key(0), "dropout": jax.random.key(1),
            "sample": jax.random.key(2)}
    extra = {}
    if info.family == "detection":   # training needs the boxes: one digit per image
      extra["targets"] = jnp.array([[[8, 8, 30, 36, 3], [-1] * 5]] * 2, jnp.int32)
    out, _ = jax.eval_shape(functools.partial(model.init_with_output, rngs, train=True,
                                              **extra),
                            jax.ShapeDtypeStruct(x.shape, x.dtype))
    if info.family == "detection":   # per-RoI class scores of the sampled boxes
      assert out["roi_logits"].shape[-1] == NUM_CLASSES + 1   # + background
      return
    main = _main(out)
  if info.family == "segmentation":   # per-pixel class scores (N, H', W', classes)
    assert main.ndim == 4 and main.shape[0] == 2 and main.shape[-1] == NUM_CLASSES
  else:
    assert tuple(main.shape) == (2, NUM_CLASSES)

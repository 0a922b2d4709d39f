"""What the on-device input path costs a train step.

    python -m benchmarks.benchmark_input --model lenet5 --batch 128 --steps 50
    python -m benchmarks.benchmark_input --model resnet20 --batch 128 --steps 10 --windows 4

Two jitted SGD steps on the same model: A trains on one fixed, pre-normalised batch;
B selects, gathers, augments and normalises its batch from the whole uint8 training
set on the device (`cnn.data.make_train_batch_fn`) inside the same program. Windows
of `--steps` steps alternate A, B, A, B, ... in one process (run-to-run noise on a
shared CPU is +-10-15%), and the medians are compared (overhead = A / B - 1, in
time per step). A third window times the input path alone. Prints one JSON object;
the issue's target is an overhead below 5%.

The training set is `--examples` random uint8 images of the model's input shape
(the gather cost depends on its size, not its content), or a real source with
`--source` (e.g. digits, mnist, cifar10).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from cnn import cli
from cnn import data
from cnn.errors import ConfigError, exit_on_user_error


class SmallCNN(nn.Module):
  """Stand-in when the model zoo lacks `--model`: two conv layers and a classifier."""
  num_classes: int = 10

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train
    for features in (16, 32):
      x = nn.relu(nn.Conv(features, (3, 3))(x))
      x = nn.max_pool(x, (2, 2), (2, 2))
    return nn.Dense(self.num_classes)(x.reshape(x.shape[0], -1))


def build_model(name: str, num_classes: int) -> tuple[nn.Module, tuple[int, int, int], str]:
  """(model, input shape, what was built) from the zoo, else the stand-in."""
  from cnn import models  # pylint: disable=import-outside-toplevel
  try:
    info = models.info(name)
    return models.create(name, num_classes=num_classes), info.input_shape, name
  except ConfigError:
    shape = (32, 32, 3) if "resnet" in name else (32, 32, 1)
    return SmallCNN(num_classes), shape, f"SmallCNN (no {name!r} in the zoo)"


def make_sgd_step(model: nn.Module, tx: optax.GradientTransformation):
  """step(state, images, labels) -> state: cross-entropy, SGD, batch statistics."""

  def step(state: dict[str, Any], images, labels):
    def loss_fn(params):
      variables = {"params": params, **state["extra"]}
      logits, updates = model.apply(variables, images, train=True,
                                    mutable=list(state["extra"]),
                                    rngs={"dropout": jax.random.fold_in(
                                        jax.random.key(0), state["step"])})
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
      return loss, updates

    (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
    delta, opt_state = tx.update(grads, state["opt_state"], state["params"])
    return {"params": optax.apply_updates(state["params"], delta), "opt_state": opt_state,
            "extra": updates, "step": state["step"] + 1, "loss": loss}

  return step


def training_set(args, shape) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
  """(images uint8, labels, mean, std, classes): real with --source, else random."""
  if args.source:
    ds = data.load(args.source, image_size=shape[:2], channels=shape[-1])
    return ds.train.x, ds.train.y, ds.mean, ds.std, ds.num_classes
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (args.examples, *shape), dtype=np.uint8)
  labels = rng.integers(0, 10, args.examples).astype(np.int32)
  mean = np.full(shape[-1], 0.5, np.float32)
  std = np.full(shape[-1], 0.29, np.float32)
  return images, labels, mean, std, 10


def time_window(fn, state, args_, steps: int):
  """(state, images per second) of `steps` calls, waiting for the last result."""
  start = time.perf_counter()
  for _ in range(steps):
    state = fn(state, *args_)
  jax.block_until_ready(state)
  return state, steps / (time.perf_counter() - start)


def run(args) -> dict[str, Any]:
  model, shape, built = build_model(args.model, 10)
  images, labels, mean, std, classes = training_set(args, shape)
  if classes != 10:
    model, shape, built = build_model(args.model, classes)
  augment = args.augment or ("cifar" if shape[-1] == 3 else "none")
  tx = optax.sgd(args.lr, momentum=0.9)
  step = make_sgd_step(model, tx)
  batch_fn = data.make_train_batch_fn(len(images), args.batch, augment=augment, mean=mean,
                                      std=std, seed=0)

  def fused(state, x_all, y_all):
    x, y = batch_fn(x_all, y_all, state["step"])
    return step(state, x, y)

  variables = model.init({"params": jax.random.key(0), "dropout": jax.random.key(1)},
                         jnp.zeros((args.batch, *shape)), train=False)
  params = variables["params"]
  extra = {k: v for k, v in variables.items() if k != "params"}

  def fresh():   # copies: each step donates (and so deletes) the state it is given
    return jax.tree.map(jnp.copy, {"params": params, "opt_state": tx.init(params),
                                   "extra": extra, "step": jnp.int32(0),
                                   "loss": jnp.float32(0)})

  x_all, y_all = jax.device_put(images), jax.device_put(labels)
  fixed_x, fixed_y = jax.jit(batch_fn)(x_all, y_all, 0)     # one pre-normalised batch
  fixed_step = jax.jit(step, donate_argnums=0)
  fused_step = jax.jit(fused, donate_argnums=0)

  @jax.jit
  def input_only(counter, x_all, y_all):
    # The sum makes the counter wait for the batch (an unused output could be dropped).
    x, _ = batch_fn(x_all, y_all, counter[0])
    return (counter[0] + 1 + (jnp.sum(x) * 0).astype(jnp.int32),)

  compile_start = time.perf_counter()
  state_a = fixed_step(fresh(), fixed_x, fixed_y)
  state_b = fused_step(fresh(), x_all, y_all)
  jax.block_until_ready((state_a, state_b, input_only((jnp.int32(0),), x_all, y_all)))
  compile_s = time.perf_counter() - compile_start

  fixed, fused_rates, input_rates = [], [], []
  for _ in range(args.windows):
    state_a, rate = time_window(fixed_step, state_a, (fixed_x, fixed_y), args.steps)
    fixed.append(rate * args.batch)
    state_b, rate = time_window(fused_step, state_b, (x_all, y_all), args.steps)
    fused_rates.append(rate * args.batch)
    _, rate = time_window(input_only, (jnp.int32(0),), (x_all, y_all), args.steps)
    input_rates.append(rate * args.batch)
  a, b = statistics.median(fixed), statistics.median(fused_rates)
  return {
      "model": built, "batch": args.batch, "steps_per_window": args.steps,
      "windows": args.windows, "augment": augment, "examples": int(len(images)),
      "image_shape": list(shape), "device": str(jax.devices()[0].device_kind),
      "fixed_batch_img_s": round(a, 1), "fused_input_img_s": round(b, 1),
      "overhead_pct": round(100.0 * (a / b - 1.0), 2),
      # Each B window against the A window just before it: cancels slow drifts in load.
      "overhead_pct_paired_median": round(100.0 * statistics.median(
          fa / fb - 1.0 for fa, fb in zip(fixed, fused_rates)), 2),
      "input_only_img_s": round(statistics.median(input_rates), 1),
      "fixed_windows_img_s": [round(r, 1) for r in fixed],
      "fused_windows_img_s": [round(r, 1) for r in fused_rates],
      "compile_s": round(compile_s, 2),
      "final_loss": [float(state_a["loss"]), float(state_b["loss"])],
  }


def parse_args(argv: list[str]) -> argparse.Namespace:
  parser = cli.parser("benchmarks.benchmark_input", __doc__)
  parser.add_argument("--model", default="lenet5", help="lenet5 | resnet20 | any zoo name")
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--steps", type=int, default=20, help="steps per timing window")
  parser.add_argument("--windows", type=int, default=6, help="A/B window pairs")
  parser.add_argument("--augment", default=None,
                      help="none | flip | cifar | imagenet (default: cifar for colour "
                           "inputs, none for grey)")
  parser.add_argument("--examples", type=int, default=50000,
                      help="size of the random training set")
  parser.add_argument("--source", default=None, help="a cnn.data source instead")
  parser.add_argument("--lr", type=float, default=0.01)
  return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
  args = parse_args(sys.argv[1:] if argv is None else argv)
  with exit_on_user_error():
    print(json.dumps(run(args), indent=1))
  return 0


if __name__ == "__main__":
  sys.exit(main())

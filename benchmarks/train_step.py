"""Training throughput of a registered model, per convolution implementation.

    python -m scripts.benchmark --model resnet20 --vs torch     # the engine's step
    python -m scripts.benchmark --model resnet20 --batch 128 --step bare
    python -m scripts.benchmark --model resnet20 --conv_impl all      # xla vs gemm
    python -m scripts.benchmark --model resnet20 --conv_impl gemm --vs torch

Times the SGD-momentum training step (softmax cross-entropy, BatchNorm in training
mode, one fixed random batch already on the device, so no input pipeline is timed)
and prints one JSON object: images per second as the median over several timed
windows after warm-up, the step time, the compile time, the peak memory, the backend
and the device.

``--step engine`` (the default for the CIFAR ResNets and plain nets) times the step
`cnn.train.fit` runs, built by benchmarks/engine_step.py: fused input pipeline,
non-finite guards, metric window. ``--step bare`` (the default for other models)
times a self-contained step (`make_benchmark_step`) that matches the PyTorch
reference op for op, on one fixed batch.

The peak memory is the process's (both contenders with ``--conv_impl all``).

Run-to-run noise on a shared CPU is +-10-15 %, so comparisons are made inside one
process with the contenders' windows alternated A/B/A/B: ``--conv_impl all`` for
XLA's convolution against "gemm" (`cnn.conv_gemm`), ``--vs torch`` against the same
network in PyTorch (`benchmarks/torch_reference.py`, run in a subprocess that times a
window whenever it is told to). Ratios are per adjacent pair, then the median.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from cnn import conv, models
from cnn.errors import ConfigError, exit_on_user_error

CONV_IMPLS = ("xla", "gemm", "onednn", "native", "native_full", "auto", "all")
# The models benchmarks/torch_reference.py rebuilds in PyTorch.
TORCH_MODELS = ("lenet5", *(f"{family}{depth}" for family in ("resnet", "plain")
                             for depth in (20, 32, 44, 56, 110)))
# The pair `--conv_impl all` alternates.
COMPARED_IMPLS = ("xla", "gemm")


# ----------------------------------------------------------------------------------
# The training step
# ----------------------------------------------------------------------------------

def make_benchmark_step(model, *, learning_rate: float = 0.1, momentum: float = 0.9,
                        weight_decay: float = 5e-4) -> tuple[Callable, Callable]:
  """(init, step) for SGD with momentum on softmax cross-entropy + L2 weight decay.

  ``init(rng, images) -> state``; ``step(state, images, labels) -> (state, loss)``,
  jitted with the state donated. BatchNorm runs in training mode and its running
  averages are part of the state. He et al.'s CIFAR recipe: lr 0.1, momentum 0.9,
  weight decay 1e-4 (5e-4 here is the more common modern value; the cost is the same).
  """
  tx = optax.sgd(learning_rate, momentum=momentum)

  def init(rng: jax.Array, images: jax.Array) -> dict[str, Any]:
    variables = model.init(rng, images[:1], train=False)
    params = variables["params"]
    return {"params": params, "batch_stats": variables.get("batch_stats", {}),
            "opt_state": tx.init(params)}

  def loss_fn(params, batch_stats, images, labels):
    logits, updates = model.apply({"params": params, "batch_stats": batch_stats},
                                  images, train=True, mutable=["batch_stats"])
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    l2 = sum(jnp.sum(w * w) for w in jax.tree.leaves(params) if w.ndim > 1)
    return loss + 0.5 * weight_decay * l2, updates.get("batch_stats", {})

  def step(state, images, labels):
    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state["params"], state["batch_stats"], images, labels)
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    return {"params": params, "batch_stats": batch_stats, "opt_state": opt_state}, loss

  return init, jax.jit(step, donate_argnums=0)


def count_params(params) -> int:
  return int(sum(np.prod(p.shape) for p in jax.tree.leaves(params)))


class JaxRunner:
  """One model with one convolution implementation: compiled, warmed up, timed."""

  def __init__(self, model_name: str, impl: str, batch: int, seed: int = 0):
    self.impl = impl
    self.resolved_impl = conv.resolve_impl(impl)
    self.batch = batch
    model = models.create(model_name, num_classes=10, conv_impl=impl)
    shape = (batch, *models.info(model_name).input_shape)
    k_img, k_lab, k_init = jax.random.split(jax.random.key(seed), 3)
    self.images = jax.random.normal(k_img, shape, jnp.float32)
    self.labels = jax.random.randint(k_lab, (batch,), 0, 10)
    init, step = make_benchmark_step(model)
    self.state = jax.jit(init)(k_init, self.images)
    self.num_params = count_params(self.state["params"])
    start = time.perf_counter()
    self.step = step.lower(self.state, self.images, self.labels).compile()
    self.compile_s = time.perf_counter() - start
    self.windows: list[float] = []
    self.loss = float("nan")

  def run(self, steps: int) -> float:
    """Runs `steps` steps; returns their wall time in seconds (after the last ends)."""
    start = time.perf_counter()
    for _ in range(steps):
      self.state, loss = self.step(self.state, self.images, self.labels)
    jax.block_until_ready(self.state)
    elapsed = time.perf_counter() - start
    if steps:
      self.loss = float(loss)
    return elapsed

  def timed_window(self, steps: int) -> float:
    elapsed = self.run(steps)
    self.windows.append(self.batch * steps / elapsed)
    return self.windows[-1]

  def summary(self) -> dict[str, Any]:
    img_s = statistics.median(self.windows)
    return {"impl": self.impl, "resolved_impl": self.resolved_impl,
            "img_per_s": round(img_s, 1), "step_ms": round(1e3 * self.batch / img_s, 1),
            "windows_img_per_s": [round(w, 1) for w in self.windows],
            "compile_s": round(self.compile_s, 2), "params": self.num_params,
            "final_loss": round(self.loss, 4)}


# ----------------------------------------------------------------------------------
# PyTorch, in a subprocess
# ----------------------------------------------------------------------------------

class TorchRunner:
  """benchmarks/torch_reference.py in a subprocess: one timed window per request."""

  def __init__(self, model_name: str, batch: int, steps: int, threads: int):
    if model_name not in TORCH_MODELS:
      raise ConfigError(
          f"--vs torch has no PyTorch version of {model_name!r}; use one of "
          f"{', '.join(TORCH_MODELS)} or leave out --vs torch.")
    if importlib.util.find_spec("torch") is None:
      raise ConfigError(
          "--vs torch needs PyTorch, which is not installed; install it with "
          "`pip install torch==2.13.0` (CPU wheel) or leave out --vs torch.")
    cmd = [sys.executable, "-m", "benchmarks.torch_reference", "--model", model_name,
           "--batch", str(batch), "--steps", str(steps), "--threads", str(threads),
           "--serve"]
    # PyTorch runs with OpenMP's default waiting, as a user's PyTorch does, unless
    # OMP_WAIT_POLICY is set: it then holds for both sides (the engine's oneDNN uses
    # OpenMP too). Measured on the 2-core box, idle, ResNet-20: PyTorch ACTIVE ~720
    # img/s, PASSIVE ~600; on a shared machine spinning threads collapse PyTorch 5-10x
    # (~20-50 img/s instead of ~250), so set PASSIVE there.
    env = dict(os.environ)
    self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 text=True, env=env, cwd=os.path.dirname(os.path.dirname(
                                     os.path.abspath(__file__))))
    self.info = self._read()   # the reference reports itself once it is warmed up
    self.windows: list[float] = []

  def _read(self) -> dict[str, Any]:
    line = self.proc.stdout.readline()
    if not line:
      raise RuntimeError(f"torch_reference exited with status {self.proc.wait()}")
    return json.loads(line)

  def timed_window(self) -> float:
    self.proc.stdin.write("window\n")
    self.proc.stdin.flush()
    self.windows.append(self._read()["img_per_s"])
    return self.windows[-1]

  def close(self) -> None:
    self.proc.stdin.write("quit\n")
    self.proc.stdin.flush()
    self.proc.wait(timeout=60)

  def summary(self) -> dict[str, Any]:
    img_s = statistics.median(self.windows)
    return {**self.info, "img_per_s": round(img_s, 1),
            "step_ms": round(1e3 * self.info["batch"] / img_s, 1),
            "windows_img_per_s": [round(w, 1) for w in self.windows]}


# ----------------------------------------------------------------------------------
# Reporting
# ----------------------------------------------------------------------------------

def pair_ratios(a: list[float], b: list[float]) -> dict[str, Any]:
  """a/b per alternated pair (window i of each) and their median."""
  ratios = [x / y for x, y in zip(a, b)]
  return {"per_pair": [round(r, 3) for r in ratios],
          "median": round(statistics.median(ratios), 3)}


def peak_memory() -> dict[str, Any]:
  """Peak resident memory of this process (the JAX side), and the device's if known."""
  out = {"peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                               1)}
  stats = jax.devices()[0].memory_stats()
  if stats and "peak_bytes_in_use" in stats:
    out["device_peak_mib"] = round(stats["peak_bytes_in_use"] / 2 ** 20, 1)
  return out


def environment() -> dict[str, Any]:
  device = jax.devices()[0]
  return {"backend": jax.default_backend(), "device": device.device_kind,
          "num_devices": jax.device_count(), "cpu": platform.processor() or
          platform.machine(), "cpu_count": os.cpu_count(), "jax": jax.__version__}


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog="python -m scripts.benchmark",
                                   description=__doc__.split("\n")[0])
  parser.add_argument("--model", default="resnet20")
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--steps", type=int, default=20, help="steps per timed window")
  parser.add_argument("--windows", type=int, default=5, help="timed windows per contender")
  parser.add_argument("--warmup", type=int, default=3, help="untimed steps after compiling")
  parser.add_argument("--conv_impl", default="auto", choices=CONV_IMPLS)
  parser.add_argument("--vs", choices=("torch",), default=None,
                      help="also time the PyTorch reference, alternating windows")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--step", choices=("auto", "engine", "bare"), default="auto",
                      help="engine: cnn.train's step (CIFAR resnetN/plainN); bare: "
                           "make_benchmark_step; auto: engine where it can")
  args = parser.parse_args(argv)
  if min(args.batch, args.steps, args.windows) < 1 or args.warmup < 0:
    raise ConfigError("--batch, --steps and --windows must be at least 1 and --warmup "
                      "at least 0.")
  return args


def benchmark(args: argparse.Namespace) -> dict[str, Any]:
  """Compiles, warms up, and times the contenders alternately; returns the report."""
  models.info(args.model)   # an unknown name fails here, before any compiling
  impls = COMPARED_IMPLS if args.conv_impl == "all" else (args.conv_impl,)
  torch = TorchRunner(args.model, args.batch, args.steps, os.cpu_count() or 1) \
      if args.vs == "torch" else None
  try:
    runners = [JaxRunner(args.model, impl, args.batch, args.seed) for impl in impls]
    from benchmarks import engine_step  # pylint: disable=import-outside-toplevel
    engine_step.alternate(runners, torch, warmup=args.warmup, windows=args.windows,
                          steps=args.steps)
  finally:
    if torch is not None:
      torch.close()

  report: dict[str, Any] = {"model": args.model, "batch": args.batch,
                            "steps_per_window": args.steps, "windows": args.windows,
                            **environment(),
                            "results": [runner.summary() for runner in runners]}
  if len(runners) == 2:
    report["ratio_gemm_over_xla"] = pair_ratios(runners[1].windows, runners[0].windows)
  if torch is not None:
    report["torch"] = torch.summary()
    report["ratio_over_torch"] = {runner.impl: pair_ratios(runner.windows, torch.windows)
                                  for runner in runners}
    if torch.info["params"] != runners[0].num_params:
      report["warning"] = (f"parameter counts differ: JAX {runners[0].num_params}, "
                           f"torch {torch.info['params']}")
  report.update(peak_memory())
  return report


def is_cifar_resnet(model_name: str) -> bool:
  """resnetN / plainN of the CIFAR family: the models the engine benchmark builds."""
  return models.info(model_name).input_shape == (32, 32, 3) and \
      model_name.startswith(("resnet", "plain"))


def engine_benchmark(args: argparse.Namespace) -> dict[str, Any]:
  """benchmarks/engine_step.py's speed report for these arguments."""
  from benchmarks import engine_step  # pylint: disable=import-outside-toplevel
  if args.vs == "torch" and importlib.util.find_spec("torch") is None:
    TorchRunner(args.model, args.batch, args.steps, 1)   # raises the one-line error
  engine_step.disable_compilation_cache()
  return engine_step.speed(argparse.Namespace(
      model=args.model, batch=args.batch, width=None, steps=args.steps,
      windows=args.windows, warmup=args.warmup, vs=args.vs, data="auto",
      conv_impl="all" if args.conv_impl == "all" else args.conv_impl))


def main(argv=None) -> None:
  with exit_on_user_error():
    args = parse_args(argv)
    from cnn import host_memory  # pylint: disable=import-outside-toplevel
    host_memory.keep_freed_memory()   # as scripts.train does
    step = args.step
    if step == "auto":
      step = "engine" if is_cifar_resnet(args.model) else "bare"
    report = engine_benchmark(args) if step == "engine" else benchmark(args)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
  main()

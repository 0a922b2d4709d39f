"""The engine's real train step: its speed beside PyTorch's, and its compile time.

    python -m benchmarks.engine_step --model resnet20 --vs torch
    python -m benchmarks.engine_step --model resnet56 --conv_impl all --vs torch
    python -m benchmarks.engine_step --compile_table --depths 20,56,110

Speed mode builds the step exactly as `cnn.train.fit` does: the config of
experiments/resnet_cifar.py (SGD momentum, L2 in the loss, piecewise schedule, batch
128, fp32), `cnn.train.build_run` + `init_state` + `compile_steps`, so the input
pipeline (batch selection, pad-4 crop and flip, normalisation) is fused into the step
and the non-finite guards and the metric window are on. It times windows of steps
for each convolution implementation and, with ``--vs torch``, the PyTorch reference
(scripts/torch_reference.py: the same network, channels_last, SGD momentum, one fixed
batch: PyTorch is timed without an input pipeline) in alternated windows, and prints
one JSON object with img/s, compile time and ``ratio_over_torch`` per implementation
(the median of the per-pair ratios). PyTorch is not a dependency: without it the
torch side is skipped with a note.

Compile-table mode compiles, per depth and family (ResNet and plain), the bare
gradient (``jax.value_and_grad`` of the engine's loss), the bare step (that gradient
plus the optax update, no guards) and the engine's step (as above), and reports wall
and CPU seconds and the ratio engine / bare gradient. The persistent compilation cache
is off for every measurement here, so nothing is read back from an earlier run.

The data is CIFAR-10 when it is on disk (``cnn.data.load("cifar10")``), otherwise
random uint8 images of the same shape written to a temporary npz (the step's cost
does not depend on the pixels); the report says which.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time
from typing import Any, Callable, Iterator, Optional

import jax
import numpy as np
import optax

from cnn import conv
from cnn import host_memory
from cnn import train
from cnn.errors import ConfigError, exit_on_user_error
from experiments import resnet_cifar

# The convolution implementations `--conv_impl all` compares (the native ones only
# when their library is built: otherwise they would time "gemm" again).
ALL_IMPLS = ("xla", "gemm", "onednn", "native", "native_full")
_LIBRARY = {"onednn": "onednn", "native": "native", "native_full": "native"}


def all_impls() -> tuple[str, ...]:
  from cnn import conv_native  # pylint: disable=import-outside-toplevel
  return tuple(i for i in ALL_IMPLS
               if i not in _LIBRARY or conv_native.available(_LIBRARY[i]))
FAMILIES = ("resnet", "plain")


def disable_compilation_cache() -> None:
  """Every compile here is measured cold: no persistent cache read or written."""
  jax.config.update("jax_enable_compilation_cache", False)


# ----------------------------------------------------------------------------------
# Configs and data
# ----------------------------------------------------------------------------------

@contextlib.contextmanager
def synthetic_cifar(num_train: int = 10000, num_test: int = 1000) -> Iterator[str]:
  """An ``npz:`` source of random CIFAR-shaped images, in a temporary folder."""
  rng = np.random.default_rng(0)
  with tempfile.TemporaryDirectory(prefix="engine_step_") as folder:
    for split, n in (("train", num_train), ("test", num_test)):
      np.savez(os.path.join(folder, f"{split}-0.npz"),
               x=rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
               y=rng.integers(0, 10, (n,), dtype=np.int64))
    yield f"npz:{folder}/train-*.npz|{folder}/test-*.npz"


@contextlib.contextmanager
def data_source(requested: str) -> Iterator[str]:
  """`requested` ("cifar10" | "synthetic" | "auto") as a loadable source string."""
  if requested == "auto":
    from cnn import data as data_lib  # pylint: disable=import-outside-toplevel
    try:
      data_lib.load("cifar10")
      requested = "cifar10"
    except ConfigError:
      requested = "synthetic"
  if requested == "synthetic":
    with synthetic_cifar() as source:
      yield source
  else:
    yield requested


def engine_config(model: str, *, conv_impl: str, batch: int, source: str,
                  width: Optional[int] = None):
  """experiments/resnet_cifar.py's config for `model` (resnetN / plainN), quiet."""
  if not model.startswith(("resnet", "plain")):
    raise ConfigError(f"--model must be resnetN or plainN (CIFAR depths 6n+2), got "
                      f"{model!r}.")
  c = resnet_cifar.get_config(model)
  c.model.conv_impl = conv_impl
  if width:
    c.model.width = width
  c.data.source = source
  c.train.batch_size = batch
  c.train.tensorboard = False
  c.train.quiet = True
  return c


def _timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
  """(fn(), wall seconds, CPU seconds of this process). CPU time is what compiling
  costs; it moves far less than wall time when other jobs share the cores."""
  wall, cpu = time.perf_counter(), time.process_time()
  out = fn()
  return out, time.perf_counter() - wall, time.process_time() - cpu


# ----------------------------------------------------------------------------------
# The engine's step, built as fit builds it
# ----------------------------------------------------------------------------------

class EngineRunner:
  """One model with one convolution implementation through `cnn.train`'s step."""

  def __init__(self, config):
    self.impl = config.model.conv_impl
    self.resolved_impl = conv.resolve_impl(self.impl)
    self.batch = config.train.batch_size
    run = train.build_run(config)
    self.state, shardings = train.init_state(run)
    step, _, self.data = train.compile_steps(run, shardings)
    if self.data is None:
      raise ConfigError("the engine benchmark needs an in-memory dataset (fused input "
                        "pipeline); this one is streamed.")
    self.num_params = sum(int(np.prod(p.shape))
                          for p in jax.tree.leaves(self.state.params))
    self.step, self.compile_s, self.compile_cpu_s = _timed(
        lambda: step.lower(self.state, *self.data).compile())
    self.windows: list[float] = []
    self.loss = float("nan")

  def run(self, steps: int) -> float:
    """Runs `steps` steps; returns their wall time in seconds (after the last ends)."""
    start = time.perf_counter()
    metrics = None
    for _ in range(steps):
      self.state, metrics = self.step(self.state, *self.data)
    jax.block_until_ready(self.state)
    elapsed = time.perf_counter() - start
    if metrics is not None:
      self.loss = float(metrics["loss"])
    return elapsed

  def timed_window(self, steps: int) -> float:
    self.windows.append(self.batch * steps / self.run(steps))
    return self.windows[-1]

  def summary(self) -> dict[str, Any]:
    img_s = statistics.median(self.windows)
    return {"impl": self.impl, "resolved_impl": self.resolved_impl,
            "img_per_s": round(img_s, 1), "step_ms": round(1e3 * self.batch / img_s, 1),
            "windows_img_per_s": [round(w, 1) for w in self.windows],
            "compile_s": round(self.compile_s, 2),
            "compile_cpu_s": round(self.compile_cpu_s, 2), "params": self.num_params,
            "final_loss": round(self.loss, 4), "skipped": int(self.state.skipped)}


def torch_runner(model: str, batch: int, steps: int):
  """scripts.benchmark's PyTorch subprocess, or (None, why) when it cannot run."""
  from benchmarks import train_step as benchmark  # pylint: disable=import-outside-toplevel
  if importlib.util.find_spec("torch") is None:
    return None, "PyTorch is not installed (pip install torch); torch side skipped"
  if model not in benchmark.TORCH_MODELS:
    return None, f"no PyTorch version of {model}; torch side skipped"
  return benchmark.TorchRunner(model, batch, steps, os.cpu_count() or 1), None


def speed(args: argparse.Namespace) -> dict[str, Any]:
  """Compiles each implementation's engine step, then times alternated windows."""
  from benchmarks import train_step as benchmark  # pylint: disable=import-outside-toplevel
  impls = all_impls() if args.conv_impl == "all" else tuple(args.conv_impl.split(","))
  report: dict[str, Any] = {"model": args.model, "batch": args.batch,
                            "steps_per_window": args.steps, "windows": args.windows,
                            "step": "engine (cnn.train.compile_steps, fused input "
                                    "pipeline, non-finite guards, metric window)",
                            **benchmark.environment()}
  with data_source(args.data) as source:
    report["data"] = "cifar10" if source == "cifar10" else "synthetic (random uint8)"
    torch, why = (torch_runner(args.model, args.batch, args.steps)
                  if args.vs == "torch" else (None, None))
    try:
      runners = [EngineRunner(engine_config(args.model, conv_impl=impl, batch=args.batch,
                                            source=source, width=args.width))
                 for impl in impls]
      alternate(runners, torch, warmup=args.warmup, windows=args.windows,
                steps=args.steps)
    finally:
      if torch is not None:
        torch.close()
  report["results"] = [r.summary() for r in runners]
  if why:
    report["torch"] = {"skipped": why}
  if torch is not None:
    report["torch"] = torch.summary()
    report["ratio_over_torch"] = {r.impl: benchmark.pair_ratios(r.windows, torch.windows)
                                  for r in runners}
    if torch.info["params"] != runners[0].num_params:
      report["warning"] = (f"parameter counts differ: JAX {runners[0].num_params}, "
                           f"torch {torch.info['params']}")
  report.update(benchmark.peak_memory())
  return report


# ----------------------------------------------------------------------------------
# Compile times: bare gradient, bare step, engine step
# ----------------------------------------------------------------------------------

def bare_functions(run: train.Run) -> tuple[Callable, Callable]:
  """(gradient, step): the engine's loss under value_and_grad, and that gradient plus
  the run's optax update, without guards, metrics or input pipeline."""
  grad_fn = jax.value_and_grad(
      functools.partial(train.loss_fn, model=run.model, cfg=run.step_cfg), has_aux=True)

  def step(params, batch_stats, opt_state, images, labels, rng):
    (loss, (_, new_stats)), grads = grad_fn(params, batch_stats, images, labels, rng)
    updates, opt_state = run.tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), new_stats, opt_state, loss

  return jax.jit(grad_fn), jax.jit(step, donate_argnums=(0, 1, 2))


PARTS = ("grad", "bare_step", "engine_step")


def compile_times(config, parts: tuple[str, ...] = PARTS) -> dict[str, Any]:
  """Compile seconds (wall, CPU) of the bare gradient, bare step and engine step."""
  run = train.build_run(config)
  state, shardings = train.init_state(run)
  images = jax.numpy.zeros(run.input_shape, jax.numpy.float32)
  labels = jax.numpy.zeros(run.input_shape[:1], jax.numpy.int32)
  grad, step = bare_functions(run)
  engine, _, data = train.compile_steps(run, shardings)
  row: dict[str, Any] = {}
  for name, lower in (
      ("grad", lambda: grad.lower(state.params, state.batch_stats, images, labels,
                                  state.rng)),
      ("bare_step", lambda: step.lower(state.params, state.batch_stats, state.opt_state,
                                       images, labels, state.rng)),
      ("engine_step", lambda: engine.lower(state, *data))):
    if name not in parts:
      continue
    _, wall, cpu = _timed(lambda: lower().compile())
    row[f"{name}_s"], row[f"{name}_cpu_s"] = round(wall, 2), round(cpu, 2)
  if "grad" in parts and "engine_step" in parts:
    row["engine_over_grad_cpu"] = round(row["engine_step_cpu_s"] / row["grad_cpu_s"], 2)
    row["engine_over_grad_wall"] = round(row["engine_step_s"] / row["grad_s"], 2)
  return row


def compile_table(args: argparse.Namespace) -> dict[str, Any]:
  from benchmarks import train_step as benchmark  # pylint: disable=import-outside-toplevel
  families = FAMILIES if args.families == "all" else tuple(args.families.split(","))
  report: dict[str, Any] = {"conv_impl": args.conv_impl, "batch": args.batch,
                            "width": args.width or 16, **benchmark.environment(),
                            "rows": []}
  with data_source(args.data) as source:
    for depth in (int(d) for d in args.depths.split(",")):
      for family in families:
        config = engine_config(f"{family}{depth}", conv_impl=args.conv_impl,
                               batch=args.batch, source=source, width=args.width)
        row = {"model": f"{family}{depth}",
               **compile_times(config, tuple(args.parts.split(",")))}
        print(json.dumps(row), file=sys.stderr, flush=True)   # progress: slow rows
        report["rows"].append(row)
  return report


# ----------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------

def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog="python -m benchmarks.engine_step",
                                   description=__doc__.split("\n")[0])
  parser.add_argument("--model", default="resnet20", help="resnetN or plainN")
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--width", type=int, default=None,
                      help="first-stage filters (the paper's 16 by default)")
  parser.add_argument("--steps", type=int, default=10, help="steps per timed window")
  parser.add_argument("--windows", type=int, default=6, help="timed windows per contender")
  parser.add_argument("--warmup", type=int, default=3, help="untimed steps after compiling")
  parser.add_argument("--conv_impl", default="auto",
                      help="xla, gemm, native, native_full, auto, a comma list, or all "
                           "(= all of these that are available)")
  parser.add_argument("--vs", choices=("torch",), default=None,
                      help="also time the PyTorch reference, alternating windows")
  parser.add_argument("--data", choices=("auto", "cifar10", "synthetic"), default="auto")
  parser.add_argument("--compile_table", action="store_true",
                      help="compile times of bare gradient / bare step / engine step")
  parser.add_argument("--depths", default="20,56,110")
  parser.add_argument("--families", default="all", help="resnet, plain or all")
  parser.add_argument("--parts", default=",".join(PARTS),
                      help="which compile times: a comma list of " + ", ".join(PARTS))
  args = parser.parse_args(argv)
  if min(args.batch, args.steps, args.windows) < 1 or args.warmup < 0:
    raise ConfigError("--batch, --steps and --windows must be at least 1 and --warmup "
                      "at least 0.")
  return args


def alternate(runners, torch, *, warmup: int, windows: int, steps: int) -> None:
  """Warms every runner up, then times them in alternated windows (each JAX runner,
  then PyTorch's, `windows` times), so machine noise falls on all of them alike."""
  for runner in runners:
    runner.run(warmup)
  for _ in range(windows):
    for runner in runners:
      runner.timed_window(steps)
    if torch is not None:
      torch.timed_window()


def main(argv=None) -> None:
  with exit_on_user_error():
    args = parse_args(argv)
    disable_compilation_cache()
    host_memory.keep_freed_memory()   # as scripts.train does
    report = compile_table(args) if args.compile_table else speed(args)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
  main()

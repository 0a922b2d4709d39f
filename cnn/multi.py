"""Many small models in one program: k seeds of one config trained by one compiled step.

A CIFAR-size network leaves an accelerator idle for most of a step, so a sweep's
seeds (k runs whose configs differ only in ``seed``) can share one compiled step:
the k train states are stacked along a leading axis and the engine's own train step
(`cnn.train.make_train_step`) is mapped over them with `jax.vmap` (or written out once
per model, see below). Each model keeps
its own parameters, batch-norm statistics, optimizer state and rng, and draws its
batches from its own seed with `cnn.data.make_train_batch_fn` (one batch function
per seed inside the same program), so model i sees exactly the data, the dropout
and the initialisation of a separate ``train.fit`` run with seed i.

    results = cnn.train.fit_group([config_seed0, config_seed1, config_seed2],
                                  ["runs/plain56_s0", "runs/plain56_s1", "runs/plain56_s2"])

This module holds the stacked pieces only; the loop is `cnn.train`'s, so every model
writes its own workdir exactly as `cnn.train.fit` does (config.json, metrics.jsonl,
checkpoints/, best/, final.json), and the workdirs can be evaluated, plotted, or
resumed one by one with ``scripts.train``; a group resumes together when its latest
checkpoints are at the same step.

Two ways to share the program (`make_multi_step`): "vmap" maps the step over the
stacked states, so XLA sees one k-times wider computation (k convolutions become one
grouped convolution): what a GPU wants. "unroll" writes the step out once per model in
the same program: the same kernels as k separate runs, one dispatch per iteration. On
XLA:CPU grouped convolutions are slow (vmap measured ~6x slower than k sequential
steps for ResNet-20, benchmarks/benchmark_multi.py), so "auto" unrolls on CPU.

Results match separate runs up to floating-point reduction order (vmap may sum in
another order; measured <= 2.4e-7 after 4 steps), bit for bit with "unroll":
tests/test_multi.py checks both.

Limits: in-memory datasets only, the ``jit`` step (not ``shard_map``), one device
(the k models replace data parallelism; on a multi-device host pass the k models
to one device each with separate runs instead).
"""
from __future__ import annotations

import pathlib
import sys
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from cnn import config as config_lib
from cnn import data as data_lib
from cnn import tasks
from cnn.errors import ConfigError, unknown_choice


class UnalignedResume(ConfigError):
  """The group's workdirs hold checkpoints at different steps: resume them apart."""


def check_same_but_seed(configs: Sequence[ml_collections.ConfigDict]) -> None:
  """Raises ConfigError unless the configs differ in ``seed`` only, with no seed twice."""
  if not configs:
    raise ConfigError("A group of runs needs at least one config.")
  seeds = [c.seed for c in configs]
  if len(set(seeds)) != len(seeds):
    raise ConfigError(f"The group has the seeds {seeds}; each model needs its own seed.")
  first = configs[0].to_dict()
  for c in configs[1:]:
    other = c.to_dict()
    differing = [k for k in config_lib.differing_keys(first, other) if k != "seed"]
    if differing:
      raise ConfigError(
          f"Runs trained in one program may differ only in seed, but "
          f"{', '.join(differing)} differ; train those runs separately.")


def check_one_device(configs: Sequence[ml_collections.ConfigDict]) -> None:
  """k stacked models replace data parallelism and start from their seeds."""
  if configs[0].transfer.init_from:
    raise ConfigError("Stacked seeds start every model from its seed; train runs with "
                      "transfer.init_from one by one with scripts.train.")
  tc = configs[0].train
  if tc.step_impl != "jit" or tc.model_parallel != 1:
    raise ConfigError("Stacked seeds run the jit step on one device; set "
                      "train.step_impl='jit' and train.model_parallel=1.")


def stack(trees: Sequence[Any]) -> Any:
  """k pytrees of one structure -> one pytree with a leading axis of size k."""
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def unstack(tree: Any, k: int) -> list[Any]:
  """The inverse of `stack`."""
  return [jax.tree.map(lambda x, i=i: x[i], tree) for i in range(k)]


def init_states(create: Callable, seeds: Sequence[int]) -> Any:
  """The k initial train states ``create(key(seed_i))``, stacked: model i starts
  exactly as a separate run with seed i (jax.random is the same under vmap)."""
  seeds = jnp.array(seeds, jnp.uint32)
  return jax.jit(jax.vmap(lambda s: create(jax.random.key(s))))(seeds)


IMPLS = ("auto", "vmap", "unroll")


def resolve_impl(impl: str) -> str:
  """"auto": "vmap" on accelerators, "unroll" on CPU, where XLA runs the grouped
  convolutions that vmap makes of k models' convolutions ~6x slower than k separate
  ones (benchmarks/benchmark_multi.py, docs/degradation/README.md)."""
  if impl not in IMPLS:
    raise unknown_choice("multi-model implementation", impl, IMPLS)
  if impl == "auto":
    return "unroll" if jax.default_backend() == "cpu" else "vmap"
  return impl


def make_multi_step(core: Callable, batch_fns: Sequence[Callable], impl: str = "auto"):
  """``step(states, data) -> (states, metrics)``, jitted, donating the states.

  `core` is the engine's train step of one model, ``batch_fns[i]`` model i's batch
  function (its seed's order and augmentation). `data` is a tuple of (images_u8,
  labels) per model; models sharing one dataset may pass the same arrays. The train
  step proper is vmapped over the k models ("vmap"), or written out once per model in
  the same program ("unroll": the same kernels as k separate runs, one dispatch); see
  `resolve_impl` for "auto".
  """
  impl = resolve_impl(impl)

  def step(states, data):
    images, labels = [], []
    for i, (fn, (x_all, y_all)) in enumerate(zip(batch_fns, data)):
      x, y = fn(x_all, y_all, states.step[i])
      images.append(x)
      labels.append(y)
    if impl == "unroll":
      outs = [core(jax.tree.map(lambda a, i=i: a[i], states), x, y)
              for i, (x, y) in enumerate(zip(images, labels))]
      return stack([o[0] for o in outs]), stack([o[1] for o in outs])
    return jax.vmap(core)(states, jnp.stack(images), jnp.stack(labels))

  return jax.jit(step, donate_argnums=0)


def make_multi_eval_step(single: Callable, impl: str = "auto"):
  """eval_step(states, images, labels, mask) -> per-model outputs of the engine's eval
  step `single` (leading axis k), the models vmapped or unrolled as in
  `make_multi_step`."""
  if resolve_impl(impl) == "vmap":
    return jax.jit(jax.vmap(single, in_axes=(0, None, None, None)))

  def unrolled(states, images, labels, mask):
    k = jax.tree.leaves(states.params)[0].shape[0]
    return stack([single(jax.tree.map(lambda a, i=i: a[i], states), images, labels, mask)
                  for i in range(k)])

  return jax.jit(unrolled)


def evaluate_all(runs: Sequence[Any], states: Any, eval_step) -> list[dict[str, Any]]:
  """The task's scores of each model on its own evaluation split."""
  task = tasks.get(runs[0].step_cfg.task)
  cfg = runs[0].config
  bs = cfg.train.eval_batch_size or cfg.train.batch_size
  groups: dict[int, list[int]] = {}
  for i, r in enumerate(runs):
    groups.setdefault(id(r.dataset), []).append(i)
  results: list[Any] = [None] * len(runs)
  for members in groups.values():
    ds = runs[members[0]].dataset
    sub = states if len(members) == len(runs) else jax.tree.map(
        lambda x: x[np.asarray(members)], states)
    outputs = (eval_step(sub, jnp.asarray(images), jnp.asarray(labels, jnp.int32),
                         jnp.asarray(mask, jnp.float32))
               for images, labels, mask in data_lib.eval_batches(
                   ds.eval, bs, mean=ds.mean, std=ds.std, out_size=runs[0].out_size))
    batches = task.gather(outputs)
    for j, i in enumerate(members):
      results[i] = task.eval_scores([jax.tree.map(lambda x, j=j: x[j], b)
                                     for b in batches])
  return results


def restore_stacked(checkpointers: Sequence[Any], abstract: Any,
                    workdirs: Sequence[pathlib.Path], fresh: Any) -> Any:
  """The stacked states of the workdirs' latest checkpoints, or `fresh` if none has one;
  `UnalignedResume` if their steps differ. `abstract` is one model's state."""
  restored = [c.restore_latest(abstract) for c in checkpointers]
  steps = [s for s, _ in restored]
  if all(s is None for s in steps):
    return fresh
  if len(set(steps)) != 1:
    found = ", ".join(f"{w}: {s if s is not None else 'none'}"
                      for w, s in zip(workdirs, steps))
    raise UnalignedResume(
        f"The workdirs to train together hold checkpoints at different steps ({found}); "
        "resume them one by one without --vmap_seeds.")
  for w, s in zip(workdirs, steps):
    print(f"resumed from step {s} in {w}", file=sys.stderr)
  return stack([st for _, st in restored])

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

    results = cnn.multi.fit_multi([config_seed0, config_seed1, config_seed2],
                                  ["runs/plain56_s0", "runs/plain56_s1", "runs/plain56_s2"])

Every model writes its own workdir exactly as `cnn.train.fit` does (config.json,
metrics.jsonl, checkpoints/, best/, final.json), so the workdirs can be evaluated,
plotted, or resumed one by one with ``scripts.train``; `fit_multi` itself resumes a
group whose latest checkpoints are at the same step.

Two ways to share the program (`make_multi_step`): "vmap" maps the step over the
stacked states, so XLA sees one k-times wider computation (k convolutions become one
grouped convolution): what a GPU wants. "unroll" writes the step out once per model in
the same program: the same kernels as k separate runs, one dispatch per iteration. On
XLA:CPU grouped convolutions are slow (vmap measured ~6x slower than k sequential
steps for ResNet-20, scripts/benchmark_multi.py), so "auto" unrolls on CPU.

Results match separate runs up to floating-point reduction order (vmap may sum in
another order; measured <= 2.4e-7 after 4 steps), bit for bit with "unroll":
tests/test_multi.py checks both.

Limits: in-memory datasets only, the ``jit`` step (not ``shard_map``), one device
(the k models replace data parallelism; on a multi-device host pass the k models
to one device each with separate runs instead).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
import sys
import time
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from cnn import checkpoint as ckpt_lib
from cnn import config as config_lib
from cnn import data as data_lib
from cnn import metrics as metrics_lib
from cnn import train
from cnn.errors import ConfigError, unknown_choice


class UnalignedResume(ConfigError):
  """The group's workdirs hold checkpoints at different steps: resume them apart."""


def check_same_but_seed(configs: Sequence[ml_collections.ConfigDict]) -> None:
  """Raises ConfigError unless the configs differ in ``seed`` only, with no seed twice."""
  if not configs:
    raise ConfigError("fit_multi needs at least one config.")
  seeds = [c.seed for c in configs]
  if len(set(seeds)) != len(seeds):
    raise ConfigError(f"fit_multi got the seeds {seeds}; each model needs its own seed.")
  first = configs[0].to_dict()
  for c in configs[1:]:
    other = c.to_dict()
    differing = [k for k in config_lib.differing_keys(first, other) if k != "seed"]
    if differing:
      raise ConfigError(
          f"fit_multi trains configs that differ only in seed, but {', '.join(differing)} "
          "differ; train those runs separately.")
  if configs[0].get("transfer", {}).get("init_from"):
    raise ConfigError("fit_multi starts every model from its seed; train runs with "
                      "transfer.init_from one by one with scripts.train.")
  tc = configs[0].train
  if tc.get("step_impl", "jit") != "jit" or tc.get("model_parallel", 1) != 1:
    raise ConfigError("fit_multi runs the jit step on one device; set "
                      "train.step_impl='jit' and train.model_parallel=1.")


def build_runs(configs: Sequence[ml_collections.ConfigDict]) -> list[train.Run]:
  """One `train.Run` per config; the dataset is loaded once unless the seed picks a
  different validation split (``data.validation_size`` > 0)."""
  check_same_but_seed(configs)
  first = train.build_run(configs[0])
  if first.dataset.train.streamed:
    raise ConfigError("fit_multi needs an in-memory dataset; streamed datasets "
                      "(imagenet2012) train with scripts.train.")
  runs = [first]
  for c in configs[1:]:
    if c.data.get("validation_size", 0):
      runs.append(train.build_run(c))
    else:
      config_lib.validate(c)
      runs.append(dataclasses.replace(first, config=c))
  return runs


def stack(trees: Sequence[Any]) -> Any:
  """k pytrees of one structure -> one pytree with a leading axis of size k."""
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def unstack(tree: Any, k: int) -> list[Any]:
  """The inverse of `stack`."""
  return [jax.tree.map(lambda x, i=i: x[i], tree) for i in range(k)]


def init_states(runs: Sequence[train.Run]) -> train.TrainState:
  """The k initial train states, stacked: model i is initialised from ``key(seed_i)``
  exactly as `train.init_state` does (jax.random is the same under vmap)."""
  run = runs[0]
  create = functools.partial(train.create_train_state, run.model, run.tx,
                             input_shape=run.input_shape,
                             log_grad_norms=run.step_cfg.log_grad_norms,
                             task=run.step_cfg.task)
  seeds = jnp.array([r.config.seed for r in runs], jnp.uint32)
  return jax.jit(jax.vmap(lambda s: create(jax.random.key(s))))(seeds)


IMPLS = ("auto", "vmap", "unroll")


def resolve_impl(impl: str) -> str:
  """"auto": "vmap" on accelerators, "unroll" on CPU, where XLA runs the grouped
  convolutions that vmap makes of k models' convolutions ~6x slower than k separate
  ones (scripts/benchmark_multi.py, docs/degradation/README.md)."""
  if impl not in IMPLS:
    raise unknown_choice("multi-model implementation", impl, IMPLS)
  if impl == "auto":
    return "unroll" if jax.default_backend() == "cpu" else "vmap"
  return impl


def make_multi_step(runs: Sequence[train.Run], impl: str = "auto"):
  """``step(states, data) -> (states, metrics)``, jitted, donating the states.

  `data` is a tuple of (images_u8, labels) per model; models sharing one dataset may
  pass the same arrays. Batch selection, augmentation and normalisation run per model
  inside the program; the train step proper is vmapped over the k models ("vmap"), or
  written out once per model in the same program ("unroll": the same kernels as k
  separate runs, one dispatch); see `resolve_impl` for "auto".
  """
  impl = resolve_impl(impl)
  run = runs[0]
  cfg = run.config
  core = train.make_train_step(run.model, run.tx, run.schedule, run.step_cfg)
  batch_fns = [data_lib.make_train_batch_fn(
      len(r.dataset.train.y), cfg.train.batch_size, augment=cfg.data.get("augment", "none"),
      mean=r.dataset.mean, std=r.dataset.std, seed=r.config.seed, out_size=r.out_size)
      for r in runs]

  def step(states: train.TrainState, data):
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


def make_multi_eval_step(run: train.Run, impl: str = "auto"):
  """eval_step(states, images, labels, mask) -> per-model sums (leading axis k), the
  models vmapped or unrolled as in `make_multi_step`."""
  single = train.make_eval_step(run.model)
  if resolve_impl(impl) == "vmap":
    return jax.jit(jax.vmap(single, in_axes=(0, None, None, None)))

  def unrolled(states, images, labels, mask):
    k = jax.tree.leaves(states.params)[0].shape[0]
    return stack([single(jax.tree.map(lambda a, i=i: a[i], states), images, labels, mask)
                  for i in range(k)])

  return jax.jit(unrolled)


def evaluate_all(runs: Sequence[train.Run], states: train.TrainState,
                 eval_step) -> list[dict[str, float]]:
  """Loss and top-1/top-5 error of each model on its own evaluation split."""
  cfg = runs[0].config
  bs = cfg.train.get("eval_batch_size") or cfg.train.batch_size
  groups: dict[int, list[int]] = {}
  for i, r in enumerate(runs):
    groups.setdefault(id(r.dataset), []).append(i)
  results: list[Optional[dict[str, float]]] = [None] * len(runs)
  for members in groups.values():
    ds = runs[members[0]].dataset
    sub = states if len(members) == len(runs) else jax.tree.map(
        lambda x: x[np.asarray(members)], states)
    totals = None
    for images, labels, mask in data_lib.eval_batches(ds.eval, bs, mean=ds.mean,
                                                      std=ds.std,
                                                      out_size=runs[0].out_size):
      sums = eval_step(sub, jnp.asarray(images), jnp.asarray(labels, jnp.int32),
                       jnp.asarray(mask, jnp.float32))
      totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    totals = jax.device_get(totals)
    for j, i in enumerate(members):
      n = max(float(totals["count"][j]), 1.0)
      results[i] = {"loss": float(totals["loss"][j]) / n,
                    "top1_error": 1.0 - float(totals["top1"][j]) / n,
                    "top5_error": 1.0 - float(totals["top5"][j]) / n}
  return results  # type: ignore[return-value]


def _restore(runs, workdirs, checkpointers, fresh: train.TrainState) -> train.TrainState:
  """The stacked states of the workdirs' latest checkpoints, or `fresh` if none has one;
  `UnalignedResume` if their steps differ."""
  k = len(runs)
  singles = unstack(fresh, k)
  abstract = jax.eval_shape(lambda: singles[0])
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


def fit_multi(configs: Sequence[ml_collections.ConfigDict],
              workdirs: Sequence[str | pathlib.Path], *,
              stop_after: Optional[int] = None, impl: str = "auto") -> list[dict[str, Any]]:
  """Trains k configs that differ only in seed together; workdir i gets run i.

  `impl` picks how the k models share the program (`make_multi_step`). Returns each
  model's last logged metrics with ``status`` ("done", "preempted", or
  "halted" for a model whose loss went non-finite in "stop" mode: it is frozen at its
  last good state while the others train on, and gets no final.json).
  """
  if len(configs) != len(workdirs):
    raise ConfigError(f"fit_multi got {len(configs)} configs but {len(workdirs)} workdirs.")
  workdirs = [pathlib.Path(w) for w in workdirs]
  runs = build_runs(configs)
  k = len(runs)
  tc = configs[0].train
  for c, w in zip(configs, workdirs):
    train.prepare_workdir(w, c)
  checkpointers = [ckpt_lib.Checkpointer(w, keep=tc.get("keep_checkpoints", 3),
                                         best_metric=tc.get("best_metric"),
                                         best_mode=tc.get("best_mode", "min"))
                   for w in workdirs]
  try:
    states = _restore(runs, workdirs, checkpointers, init_states(runs))
  except ConfigError:
    for c in checkpointers:
      c.close()
    raise
  writers = [metrics_lib.MetricWriter(w, tensorboard=tc.get("tensorboard", True))
             for w in workdirs]
  step = int(states.step[0])
  for writer in writers:
    writer.truncate_after(step)
  train_step = make_multi_step(runs, impl)
  eval_step = make_multi_eval_step(runs[0], impl)
  data, placed = [], {}
  for r in runs:
    key = id(r.dataset)
    if key not in placed:
      placed[key] = (jnp.asarray(r.dataset.train.x),
                     jnp.asarray(np.asarray(r.dataset.train.y, np.int32)))
    data.append(placed[key])
  data = tuple(data)

  total = tc.steps
  spe = data_lib.steps_per_epoch(len(runs[0].dataset.train.y), tc.batch_size)
  eval_every, log_every = tc.get("eval_every", 0), tc.get("log_every", 100)
  ckpt_every = tc.get("checkpoint_every", 0)
  plateau = configs[0].schedule.get("name") == "plateau"
  progress = metrics_lib.ProgressBar(total, quiet=tc.get("quiet", False))
  last: list[dict[str, Any]] = [{} for _ in range(k)]
  halted = [False] * k
  status = "done"
  window_start, window_step, calls = time.time(), step, 0
  with train._Preemption() as preemption:  # noqa: SLF001 -- the engine's SIGTERM flag
    while step < total:
      states, _ = train_step(states, data)
      step += 1
      calls += 1
      at_log = step % log_every == 0 or step == total
      at_eval = bool(eval_every) and (step % eval_every == 0 or step == total)
      at_ckpt = bool(ckpt_every) and step % ckpt_every == 0
      stopping = preemption.requested or (stop_after is not None and calls >= stop_after)
      if not (at_log or at_eval or at_ckpt or stopping):
        continue
      halted_at = np.asarray(states.halted_at)
      for i in np.flatnonzero(halted_at >= 0):
        if not halted[i]:
          halted[i] = True
          print(f"error: {workdirs[i]}: non-finite loss or gradient at step "
                f"{int(halted_at[i])}; this model stays at its last good state.",
                file=sys.stderr)
      window = jax.device_get(states.window)
      elapsed = time.time() - window_start
      evals = evaluate_all(runs, states, eval_step) if at_eval else [None] * k
      singles = unstack(states, k)
      lr_scale = np.asarray(states.lr_scale)
      for i in range(k):
        count = max(float(window["count"][i]), 1.0)
        record = {"epoch": step / spe,
                  "lr": float(runs[i].schedule(step - 1)) * float(lr_scale[i]),
                  **{(n if "/" in n else f"train_{n}"): float(v[i]) / count
                     for n, v in window.items() if n != "count"},
                  "img_per_s": (step - window_step) * tc.batch_size / max(elapsed, 1e-9),
                  "skipped_steps": int(singles[i].skipped)}
        if evals[i] is not None:
          record.update({f"eval_{n}": v for n, v in evals[i].items()})
          if plateau:
            singles[i] = train._plateau_step(singles[i], record,  # noqa: SLF001
                                             configs[i].schedule)
          if not halted[i]:
            checkpointers[i].save_best(step, singles[i], record)
        if (at_log or at_eval) and not halted[i]:
          writers[i].write(step, record)
        if not halted[i]:
          last[i] = {"step": step, **record}
        if (at_ckpt or stopping or step == total) and not halted[i]:
          checkpointers[i].save(step, singles[i])
      if plateau and at_eval:
        states = stack(singles)
      progress.update(step, loss=float(np.mean(window["loss"]) / max(
          float(np.max(window["count"])), 1.0)), img_s=k * (step - window_step) *
          tc.batch_size / max(elapsed, 1e-9))
      window_start, window_step = time.time(), step
      if stopping:
        status = "preempted"
        break
  progress.close()
  for c, w in zip(checkpointers, writers):
    c.close()
    w.close()
  for i in range(k):
    last[i]["status"] = "halted" if halted[i] else status
    if last[i]["status"] == "done":
      (workdirs[i] / "final.json").write_text(json.dumps(last[i], indent=2) + "\n")
  return last

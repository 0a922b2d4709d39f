"""The training engine: train state, train and eval steps, and the fit loop.

Reads top to bottom: the state, the loss, the two step builders (``jit`` over a mesh,
and the per-device ``shard_map`` variant), evaluation, then `fit`, the only loop.

The train state holds everything a run needs to continue exactly where it stopped:
parameters, batch-norm statistics, optimizer state, the rng, the step (which is also
the position in the data: the batch at step s is a pure function of the seed and s),
the plateau schedule's scale, and the non-finite bookkeeping.
"""
from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import os
import pathlib
import re
import signal
import sys
import time
from typing import Any, Callable, Iterator, Optional

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from cnn import checkpoint as ckpt_lib
from cnn import config as config_lib
from cnn import data as data_lib
from cnn import metrics as metrics_lib
from cnn import models
from cnn import optim
from cnn import sharding
from cnn import tasks
from cnn import transfer
from cnn.errors import ConfigError, unknown_choice

Batch = tuple[jax.Array, jax.Array]


@flax.struct.dataclass
class TrainState:
  step: jax.Array            # int32; also the position in the data
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jax.Array             # typed PRNG key
  lr_scale: jax.Array        # float32; 1 unless the plateau schedule cut the rate
  plateau_best: jax.Array    # float32; best monitored eval metric so far
  plateau_bad: jax.Array     # int32; evaluations since it last improved
  skipped: jax.Array         # int32; updates skipped for non-finite gradients
  halted_at: jax.Array       # int32; first non-finite step in "stop" mode, else -1
  bad_groups: jax.Array      # bool[groups]; parameter groups non-finite at that step
  window: Any                # sums of train metrics since the last log boundary


def param_groups(params: Any) -> list[str]:
  """Top-level parameter names (layers/blocks), the unit of non-finite reports."""
  return sorted(params.keys())


def stage_of(group: str) -> str:
  """The stage a top-level module belongs to: 'stage2_block3' -> 'stage2' (ResNets),
  'stage3_layer7' -> 'stage3' (DenseNet); other names are their own group."""
  return re.split(r"_(?:block|layer|transition)", group, maxsplit=1)[0]


def metric_names(params: Any, log_grad_norms: bool,
                 task: str = "classification") -> list[str]:
  """The train metrics a step accumulates: the task's, the gradient norm, and
  per-stage gradient norms on request."""
  names = [*tasks.get(task).train_metric_names(), "grad_norm"]
  if log_grad_norms:
    names += sorted({f"grad_norm/{stage_of(g)}" for g in param_groups(params)})
  return names


def create_train_state(model: nn.Module, tx: optax.GradientTransformation,
                       rng: jax.Array, input_shape: tuple[int, ...],
                       log_grad_norms: bool = False,
                       task: str = "classification") -> TrainState:
  """Initialises parameters (in eval mode, on a dummy batch) and the optimizer."""
  init_rng, state_rng = jax.random.split(rng)
  variables = model.init({"params": init_rng, "dropout": init_rng},
                         jnp.zeros(input_shape, jnp.float32), train=False)
  params = variables["params"]
  return TrainState(
      step=jnp.zeros([], jnp.int32), params=params,
      batch_stats=variables.get("batch_stats", {}), opt_state=tx.init(params),
      rng=state_rng, lr_scale=jnp.ones([], jnp.float32),
      plateau_best=jnp.array(jnp.inf, jnp.float32), plateau_bad=jnp.zeros([], jnp.int32),
      skipped=jnp.zeros([], jnp.int32), halted_at=jnp.array(-1, jnp.int32),
      bad_groups=jnp.zeros([len(param_groups(params))], bool),
      window={k: jnp.zeros([], jnp.float32)
              for k in metric_names(params, log_grad_norms, task) + ["count"]})


# ----------------------------------------------------------------------------------
# Loss and update: shared by both step variants
# ----------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class StepConfig:
  """What a train step needs besides the state: fixed for a run."""
  weight_decay_in_loss: float = 0.0
  label_smoothing: float = 0.0
  nonfinite: str = "stop"          # "stop" | "skip"
  log_grad_norms: bool = False
  log_every: int = 100             # the metric window restarts at multiples of it
  task: str = "classification"     # a cnn.tasks name: the loss and its train metrics


def loss_fn(params, batch_stats, images, labels, rng, *, model, cfg: StepConfig):
  """The task's loss (`cnn.tasks`) + the papers' L2 term; aux = (metrics, new stats)."""
  task = tasks.get(cfg.task)
  output, new_stats = task.forward_train(
      model, {"params": params, "batch_stats": batch_stats}, images, labels, rng)
  loss, metrics = task.loss(output, labels, label_smoothing=cfg.label_smoothing)
  return loss + optim.l2_penalty(params, cfg.weight_decay_in_loss), (metrics, new_stats)


def _finite(tree) -> jax.Array:
  """One bool: every element of every leaf of `tree` is finite."""
  leaves = jax.tree.leaves(tree)
  if not leaves:
    return jnp.array(True)
  # One reduction over the concatenated leaves, not one per leaf: XLA:CPU compiles
  # every reduction as its own kernel, and the copy (a few MB) takes well under 1 ms.
  flat = jnp.concatenate([jnp.ravel(x).astype(jnp.float32) for x in leaves])
  return jnp.all(jnp.isfinite(flat))


def _sum_squares(tree) -> jax.Array:
  """The squared L2 norm of all leaves, as one reduction (see `_finite`)."""
  leaves = jax.tree.leaves(tree)
  if not leaves:
    return jnp.zeros([], jnp.float32)
  flat = jnp.concatenate([jnp.ravel(x).astype(jnp.float32) for x in leaves])
  return jnp.sum(jnp.square(flat))


def _nonfinite_groups(grads, new_params, groups: list[str]) -> jax.Array:
  """bool[groups]: the groups with a non-finite gradient or new parameter.

  One running count over all the groups' values, read at each group's end, rather
  than a reduction per group: only a bad step runs it, but every step compiles it.
  """
  per_group = [jax.tree.leaves((grads[g], new_params[g])) for g in groups]
  flat = jnp.concatenate([jnp.ravel(x).astype(jnp.float32)
                          for leaves in per_group for x in leaves])
  ends = np.cumsum([sum(x.size for x in leaves) for leaves in per_group]) - 1
  counts = jnp.cumsum((~jnp.isfinite(flat)).astype(jnp.int32))[ends]
  return jnp.diff(counts, prepend=0) > 0


def apply_update(state: TrainState, grads, new_stats, metrics, *, tx, schedule,
                 cfg: StepConfig) -> tuple[TrainState, dict[str, jax.Array]]:
  """The optimizer update, guarded against non-finite losses, gradients and updates.

  A non-finite step leaves the state untouched. In "skip" mode it is counted and
  training goes on; in "stop" mode the step is recorded in ``halted_at`` (with the
  parameter groups whose gradients were non-finite) and every later step is a no-op,
  so the loop can stop with the last good state and checkpoints intact.
  """
  groups = param_groups(grads)
  updates, new_opt_state = tx.update(grads, state.opt_state, state.params)
  updates = jax.tree.map(lambda u: u * state.lr_scale.astype(u.dtype), updates)
  new_params = optax.apply_updates(state.params, updates)
  live = state.halted_at < 0
  # Finite gradients can still overflow in the update (a huge learning rate): the
  # new parameters are checked too, so no checkpoint ever holds a non-finite one.
  # One global flag; which groups were bad is worked out only on a bad step (below).
  ok = _finite((grads, new_params)) & jnp.isfinite(metrics["loss"]) & live

  def take(new_params, new_stats, new_opt_state, bad_groups):
    return new_params, new_stats, new_opt_state, bad_groups

  def keep(new_params, new_stats, new_opt_state, bad_groups):
    # The first bad step records its non-finite groups; later ones (after a "stop",
    # or further skips) keep the first record.
    bad_groups = jnp.where(live, _nonfinite_groups(grads, new_params, groups),
                           bad_groups)
    return state.params, state.batch_stats, state.opt_state, bad_groups

  # One conditional, not a `where(ok, new, old)` per leaf: XLA:CPU compiled that select,
  # gated by reductions over the same new values, 3-14x slower than this whole update
  # (benchmarks/engine_step.py --compile_table); at run time it only picks buffers.
  params, batch_stats, opt_state, bad_groups = jax.lax.cond(
      ok, take, keep, new_params, new_stats, new_opt_state, state.bad_groups)
  new_state = state.replace(
      step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state,
      skipped=state.skipped + (~ok).astype(jnp.int32),
      halted_at=jnp.where(~ok & live & (cfg.nonfinite == "stop"), state.step,
                          state.halted_at),
      bad_groups=bad_groups)
  metrics = dict(metrics)
  if cfg.log_grad_norms:
    by_stage: dict[str, list] = {}
    for g in groups:
      by_stage.setdefault(stage_of(g), []).append(grads[g])
    squares = {stage: _sum_squares(trees) for stage, trees in by_stage.items()}
    for stage, sq in squares.items():
      metrics[f"grad_norm/{stage}"] = jnp.sqrt(sq)
    # The global norm from the stages' sums: no second pass over the gradients.
    metrics["grad_norm"] = jnp.sqrt(sum(squares.values()))
  else:
    metrics["grad_norm"] = jnp.sqrt(_sum_squares(grads))
  # The window of logged means lives in the state, so a resumed run logs exactly what
  # an uninterrupted one would.
  # Skipped (non-finite) steps do not enter the means.
  fresh = state.step % cfg.log_every == 0
  window = {k: jnp.where(fresh, 0.0, v)
            + jnp.where(ok, metrics[k] if k != "count" else 1.0, 0.0)
            for k, v in state.window.items()}
  new_state = new_state.replace(window=window)
  metrics["lr"] = schedule(state.step) * state.lr_scale
  return new_state, metrics


# ----------------------------------------------------------------------------------
# Step builders
# ----------------------------------------------------------------------------------

def make_train_step(model, tx, schedule, cfg: StepConfig) -> Callable:
  """train_step(state, images, labels) -> (state, metrics); plain function to jit.

  Under ``jax.jit`` with the batch sharded over the mesh's data axis, XLA computes the
  batch-norm statistics over the global batch.
  """

  def train_step(state: TrainState, images, labels):
    rng = jax.random.fold_in(state.rng, state.step)
    grad_fn = jax.value_and_grad(functools.partial(loss_fn, model=model, cfg=cfg),
                                 has_aux=True)
    (_, (metrics, new_stats)), grads = grad_fn(
        state.params, state.batch_stats, images, labels, rng)
    return apply_update(state, grads, new_stats, metrics, tx=tx, schedule=schedule,
                        cfg=cfg)

  return train_step


def make_shard_map_train_step(model, tx, schedule, cfg: StepConfig, mesh) -> Callable:
  """The per-device variant (what pmap users know), built with `jax.shard_map`.

  Each device computes the loss on its share of the batch; batch-norm statistics are
  those of that share ("ghost batch", as multi-GPU papers trained) unless the model
  was built with ``bn_axis_name="data"``, which averages them over devices. Gradients,
  metrics and the new running statistics are averaged over the data axis, then the
  same update as the jit variant runs on every device.
  """
  axis = sharding.DATA

  def local(state: TrainState, images, labels):
    rng = jax.random.fold_in(jax.random.fold_in(state.rng, state.step),
                             jax.lax.axis_index(axis))
    grad_fn = jax.value_and_grad(functools.partial(loss_fn, model=model, cfg=cfg),
                                 has_aux=True)
    (_, (metrics, new_stats)), grads = grad_fn(
        state.params, state.batch_stats, images, labels, rng)
    grads = jax.lax.pmean(grads, axis)
    new_stats = jax.lax.pmean(new_stats, axis)
    metrics = jax.lax.pmean(metrics, axis)
    return apply_update(state, grads, new_stats, metrics, tx=tx, schedule=schedule,
                        cfg=cfg)

  # The state is replicated (P()), the batch split; outputs are identical on all
  # devices after the pmeans, so they come back replicated.
  return jax.shard_map(local, mesh=mesh, in_specs=(P(), P(axis), P(axis)),
                       out_specs=(P(), P()), check_vma=False)


def make_eval_step(model, task: str = "classification") -> Callable:
  """eval_step(state, images, labels, mask) -> the task's sums over one batch (for
  classification: loss, top-1/5 correct, count)."""
  t = tasks.get(task)

  def eval_step(state: TrainState, images, labels, mask):
    return t.eval_batch(model, {"params": state.params, "batch_stats": state.batch_stats},
                        images, labels, mask)

  return eval_step


def evaluate(eval_step: Callable, state: TrainState, split, *, batch_size: int, mean,
             std, mesh, out_size=None, task: str = "classification") -> dict[str, Any]:
  """The task's scores over the whole split, exactly once per example (for
  classification: loss and top-1/top-5 error)."""
  t = tasks.get(task)
  totals, batches = None, []
  shard = sharding.batch_sharding(mesh)
  for images, labels, mask in data_lib.eval_batches(split, batch_size, mean=mean, std=std,
                                                    out_size=out_size):
    batch = jax.device_put((np.asarray(images), np.asarray(labels, np.int32),
                            np.asarray(mask, np.float32)), shard)
    out = eval_step(state, *batch)
    if t.sum_on_device:     # sums stay on the device: one transfer per evaluation
      totals = out if totals is None else jax.tree.map(jnp.add, totals, out)
    else:
      batches.append(jax.device_get(out))
  return t.eval_scores([jax.device_get(totals)] if t.sum_on_device else batches)


# ----------------------------------------------------------------------------------
# Building a run from its config
# ----------------------------------------------------------------------------------

@dataclasses.dataclass
class Run:
  """Everything built from a config before the first step."""
  config: ml_collections.ConfigDict
  mesh: Any
  dataset: Any
  model: nn.Module
  schedule: Callable
  tx: optax.GradientTransformation
  step_cfg: StepConfig
  input_shape: tuple[int, ...]
  out_size: Optional[tuple[int, int]]


def build_model(config, num_classes: int) -> nn.Module:
  """The model named in ``config.model`` with its extra keys as arguments."""
  kwargs = {k: v for k, v in config.model.items() if k != "name"}
  kwargs = {k: (v.to_dict() if hasattr(v, "to_dict") else v) for k, v in kwargs.items()}
  if config.train.get("precision", "float32") == "bfloat16":
    kwargs["dtype"] = jnp.bfloat16
  return models.create(config.model.name, num_classes=num_classes, **kwargs)


def _example_shape(split, out_size) -> tuple[int, int, int]:
  """(H, W, C) of the images the model sees."""
  if not split.streamed:
    h, w, c = split.x.shape[1:]
  else:
    image, _ = split.example(0)
    (h, w), c = split.image_size or image.shape[:2], image.shape[-1]
  return (*(out_size or (h, w)), c)


def _check_input_pipeline(config, dataset, mesh, out_size) -> None:
  """Input mistakes that would otherwise surface only when the steps are compiled (an
  unknown augmentation, a crop larger than the images, a batch larger than the data,
  an eval batch the devices cannot split) raise here, before `fit` writes anything."""
  tc, augment = config.train, config.data.get("augment", "none")
  sharding.check_batch_size(tc.get("eval_batch_size") or tc.batch_size, mesh,
                            "train.eval_batch_size")
  data_lib.steps_per_epoch(len(dataset.train), tc.batch_size)
  if dataset.train.streamed:
    if augment not in data_lib.HOST_AUGMENTATIONS:
      raise unknown_choice("data.augment", augment, data_lib.HOST_AUGMENTATIONS)
    return
  batch_fn = data_lib.make_train_batch_fn(
      len(dataset.train), tc.batch_size, augment=augment, mean=dataset.mean,
      std=dataset.std, seed=config.seed, out_size=out_size)
  x, y = dataset.train.x, dataset.train.y
  jax.eval_shape(batch_fn, jax.ShapeDtypeStruct(x.shape, x.dtype),
                 jax.ShapeDtypeStruct(y.shape, jnp.int32),
                 jax.ShapeDtypeStruct((), jnp.int32))


def build_run(config) -> Run:
  """Validates the config and builds data, model, optimizer; writes nothing."""
  config_lib.validate(config)
  mesh = sharding.make_mesh(config.train.get("model_parallel", 1))
  sharding.check_batch_size(config.train.batch_size, mesh)
  d, task = config.data, tasks.get(config.task)
  dataset = task.load_data(config)
  model = build_model(config, dataset.num_classes)
  # Dense labels (masks) are loaded at data.image_size; images alone are cropped or
  # resized to it on the device.
  out_size = tuple(d.image_size) if d.image_size and not task.dense_labels else None
  h, w, c = _example_shape(dataset.train, out_size)
  input_shape = (config.train.batch_size // sharding.data_size(mesh), h, w, c)
  models.output_shape(model, input_shape)   # too small an input -> one sentence
  _check_input_pipeline(config, dataset, mesh, out_size)
  steps = config.train.steps
  schedule = optim.make_schedule(config.schedule, config.optim.learning_rate, steps)
  tx = optim.make_optimizer(config.optim, schedule)
  tx = transfer.wrap_optimizer(tx, config, model, input_shape)  # frozen / per-group lr
  wd = float(config.optim.get("weight_decay", 0.0) or 0.0)
  step_cfg = StepConfig(
      weight_decay_in_loss=wd if optim.uses_l2_in_loss(config.optim) else 0.0,
      label_smoothing=float(config.train.get("label_smoothing", 0.0)),
      nonfinite=config.train.get("nonfinite", "stop"),
      log_grad_norms=bool(config.train.get("log_grad_norms", False)),
      log_every=int(config.train.log_every), task=task.name)
  return Run(config, mesh, dataset, model, schedule, tx, step_cfg, input_shape, out_size)


def init_state(run: Run) -> tuple[TrainState, Any]:
  """A fresh train state placed with its shardings, and those shardings."""
  rng = jax.random.key(run.config.seed)
  create = functools.partial(create_train_state, run.model, run.tx,
                             input_shape=run.input_shape,
                             log_grad_norms=run.step_cfg.log_grad_norms,
                             task=run.step_cfg.task)
  abstract = jax.eval_shape(create, rng)
  shardings = sharding.state_shardings(abstract, run.mesh)
  state = jax.jit(create, out_shardings=shardings)(rng)
  return state, shardings


def compile_steps(run: Run, shardings) -> tuple[Callable, Callable, Any]:
  """(train_step(state, x_all, y_all), eval_step, device data) with the input pipeline
  fused into the train step: batch selection, augmentation and normalisation run on
  the devices, inside the same program."""
  cfg, ds, mesh = run.config, run.dataset, run.mesh
  if cfg.train.get("step_impl", "jit") == "shard_map":
    core = make_shard_map_train_step(run.model, run.tx, run.schedule, run.step_cfg, mesh)
  else:
    core = make_train_step(run.model, run.tx, run.schedule, run.step_cfg)
  batch_sharding = sharding.batch_sharding(mesh)
  eval_step = jax.jit(make_eval_step(run.model, run.step_cfg.task),
                      in_shardings=(shardings, batch_sharding, batch_sharding,
                                    batch_sharding))
  if ds.train.streamed:
    # Too big for the devices: batches come from the host (`feed`), same schedule.
    train_step = jax.jit(core, in_shardings=(shardings, batch_sharding, batch_sharding),
                         out_shardings=(shardings, sharding.replicated(mesh)),
                         donate_argnums=0)
    return train_step, eval_step, None
  batch_fn = data_lib.make_train_batch_fn(
      len(ds.train), cfg.train.batch_size, augment=cfg.data.get("augment", "none"),
      mean=ds.mean, std=ds.std, seed=cfg.seed, out_size=run.out_size)

  def fused(state, x_all, y_all):
    images, labels = batch_fn(x_all, y_all, state.step)
    images = jax.lax.with_sharding_constraint(images, batch_sharding)
    labels = jax.lax.with_sharding_constraint(labels, batch_sharding)
    return core(state, images, labels)

  device_data = data_lib.put_on_devices(ds.train, mesh)
  replicated = sharding.replicated(mesh)
  train_step = jax.jit(fused, in_shardings=(shardings, replicated, replicated),
                       out_shardings=(shardings, replicated), donate_argnums=0)
  return train_step, eval_step, device_data


def feed(run: Run, device_data, start: int) -> Iterator[tuple[Any, ...]]:
  """The data arguments of each train step from `start` on: the whole on-device
  dataset every time (the step picks its batch), or host-built streamed batches."""
  if device_data is not None:
    return itertools.repeat(device_data)
  cfg, ds = run.config, run.dataset
  batches = data_lib.StreamingBatches(
      ds.train, cfg.train.batch_size, cfg.data.get("augment", "none"), mean=ds.mean,
      std=ds.std, seed=cfg.seed, out_size=run.out_size, mesh=run.mesh)
  return batches.iterate(start)


# ----------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------

class _Preemption:
  """Turns SIGTERM (the usual pre-emption notice) into a flag the loop checks."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not in the main thread: no handler, nothing to restore
      self._previous = None
    return self

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def check_workdir(workdir: pathlib.Path, config, *, overwrite: bool = False,
                  fork: bool = False) -> None:
  """Refuses a workdir whose run has another configuration (unless overwriting or
  forking it). Reads only."""
  saved = workdir / "config.json"
  if saved.is_file() and not (overwrite or fork):
    try:
      previous = json.loads(saved.read_text())
    except (OSError, ValueError):
      raise ConfigError(f"{saved} is unreadable; use another --workdir, or --overwrite "
                        "to start afresh there.") from None
    differing = config_lib.differing_keys(config_lib.with_defaults(previous),
                                          config_lib.with_defaults(config.to_dict()))
    if differing:
      raise ConfigError(
          f"{workdir} holds a run with a different configuration "
          f"({', '.join(differing[:6])}{' ...' if len(differing) > 6 else ''} differ); "
          "use another --workdir, --overwrite to start afresh, or --fork to continue "
          "from its checkpoint with the new settings.")


def write_atomic(path: pathlib.Path, text: str) -> None:
  """Writes `text` so that a kill leaves either the old file or the new one."""
  tmp = path.with_name(f".{path.name}.tmp")
  tmp.write_text(text)
  os.replace(tmp, path)


def prepare_workdir(workdir: pathlib.Path, config, *, overwrite: bool = False,
                    fork: bool = False) -> None:
  """Creates the workdir (emptied with `overwrite`), or checks that the one there holds
  this same configuration; `fork` keeps its checkpoints and takes the new config."""
  check_workdir(workdir, config, overwrite=overwrite, fork=fork)
  saved = workdir / "config.json"
  if overwrite and workdir.is_dir():
    import shutil
    for sub in ("checkpoints", "best", "tensorboard", "metrics.jsonl", "config.json",
                "final.json", ckpt_lib.UNREADABLE):
      path = workdir / sub
      if path.is_dir():
        shutil.rmtree(path)
      elif path.exists():
        path.unlink()
  try:
    workdir.mkdir(parents=True, exist_ok=True)
    write_atomic(saved, json.dumps(config.to_dict(), indent=2, sort_keys=True) + "\n")
  except OSError as e:
    raise ConfigError(f"Cannot write to workdir {workdir} ({e.strerror}); choose a "
                      "writable --workdir.") from None


def fit(config, workdir: str | pathlib.Path, *, overwrite: bool = False,
        fork: bool = False, stop_after: Optional[int] = None) -> dict[str, Any]:
  """Trains `config` in `workdir`, resuming from its latest checkpoint if any.

  Returns the last logged metrics (with ``status``: "done", "preempted" or "halted").
  `stop_after` stops (with a checkpoint) after that many steps of this call: for tests
  and for sweeps that interleave runs.
  """
  workdir = pathlib.Path(workdir)
  run = build_run(config)           # every config mistake surfaces before any write
  tc = config.train
  check_workdir(workdir, config, overwrite=overwrite, fork=fork)
  state, shardings = init_state(run)
  if not overwrite:                 # a checkpoint of another model: refuse, still unwritten
    ckpt_lib.check_compatible(workdir, ckpt_lib.abstract_like(state, shardings))
  prepare_workdir(workdir, config, overwrite=overwrite, fork=fork)
  checkpointer = ckpt_lib.Checkpointer(
      workdir, keep=tc.get("keep_checkpoints", 3), best_metric=tc.get("best_metric"),
      best_mode=tc.get("best_mode", "min"))
  start, restored = checkpointer.restore_latest(ckpt_lib.abstract_like(state, shardings))
  if restored is not None:
    state = restored
    print(f"resumed from step {start} in {workdir}", file=sys.stderr)
  else:
    state = transfer.warm_start(state, run)   # transfer.init_from's parameters, if set
  writer = metrics_lib.MetricWriter(workdir, tensorboard=tc.get("tensorboard", True))
  writer.truncate_after(int(state.step))
  train_step, eval_step, device_data = compile_steps(run, shardings)
  inputs = feed(run, device_data, int(state.step))
  total = tc.steps
  ds = run.dataset
  steps_per_epoch = data_lib.steps_per_epoch(len(ds.train), tc.batch_size)
  progress = metrics_lib.ProgressBar(total, quiet=tc.get("quiet", False))
  eval_every, log_every = tc.get("eval_every", 0), tc.get("log_every", 100)
  ckpt_every = tc.get("checkpoint_every", 0)
  eval_bs = tc.get("eval_batch_size") or tc.batch_size
  sharding.check_batch_size(eval_bs, run.mesh, "train.eval_batch_size")
  plateau = config.schedule.get("name") == "plateau"

  def run_eval(state) -> dict[str, float]:
    return evaluate(eval_step, state, ds.eval, batch_size=eval_bs, mean=ds.mean,
                    std=ds.std, mesh=run.mesh, out_size=run.out_size,
                    task=run.step_cfg.task)

  last: dict[str, Any] = {}
  status = "done"
  step = int(state.step)
  window_start, window_step = time.time(), step
  calls = 0
  with _Preemption() as preemption:
    while step < total:
      state, _ = train_step(state, *next(inputs))
      step += 1
      calls += 1
      at_log = step % log_every == 0 or step == total
      at_eval = bool(eval_every) and (step % eval_every == 0 or step == total)
      at_ckpt = bool(ckpt_every) and step % ckpt_every == 0
      stopping = preemption.requested or (stop_after is not None and calls >= stop_after)
      if not (at_log or at_eval or at_ckpt or stopping):
        continue
      # Everything below syncs with the devices; it runs only at these boundaries.
      halted_at = int(state.halted_at)
      if halted_at >= 0:
        status = "halted"
        raise_nonfinite(state, halted_at, checkpointer)
      window = jax.device_get(state.window)
      count = max(float(window.pop("count")), 1.0)
      elapsed = time.time() - window_start
      record = {"epoch": step / steps_per_epoch,
                "lr": float(run.schedule(step - 1)) * float(state.lr_scale),
                **{(k if "/" in k else f"train_{k}"): float(v) / count
                   for k, v in window.items()},
                "img_per_s": (step - window_step) * tc.batch_size / max(elapsed, 1e-9),
                "skipped_steps": int(state.skipped)}
      if at_eval:
        ev = run_eval(state)
        record.update({f"eval_{k}": v for k, v in ev.items() if k != "examples"})
        if plateau:
          state = _plateau_step(state, record, config.schedule)
        checkpointer.save_best(step, state, record)
      if at_log or at_eval:  # not at a pre-emption: a resumed run logs the same lines
        writer.write(step, record)
      last = {"step": step, **record}
      progress.update(step, loss=record["train_loss"], img_s=record["img_per_s"])
      if at_ckpt or stopping or step == total:
        checkpointer.save(step, state)
      window_start, window_step = time.time(), step
      if stopping:
        status = "preempted"
        break
  progress.close()
  if step >= total and int(state.step) >= total:
    checkpointer.save(step, state)
  checkpointer.close()
  writer.close()
  if not last and writer.enabled:   # resumed at the end: nothing ran, report the last log
    rows = metrics_lib.read_jsonl(writer.path)
    last = dict(rows[-1]) if rows else {"step": step}
  last["status"] = status
  if status == "done":
    write_atomic(workdir / "final.json", json.dumps(last, indent=2) + "\n")
  return last


def _plateau_step(state: TrainState, record: dict[str, Any], schedule_cfg) -> TrainState:
  metric = record.get(schedule_cfg.get("monitor", "eval_top1_error"))
  if metric is None:
    return state
  scale, best, bad = optim.update_plateau(
      float(state.lr_scale), float(state.plateau_best), int(state.plateau_bad), metric,
      factor=schedule_cfg.get("factor", 0.1), patience=schedule_cfg.get("patience", 1),
      mode=schedule_cfg.get("mode", "min"))
  return state.replace(lr_scale=jnp.full_like(state.lr_scale, scale),
                       plateau_best=jnp.full_like(state.plateau_best, best),
                       plateau_bad=jnp.full_like(state.plateau_bad, bad))


class NonFiniteError(RuntimeError):
  """Training met a non-finite loss or gradient in "stop" mode."""


def raise_nonfinite(state: TrainState, step: int, checkpointer) -> None:
  """`step` is ``state.halted_at``, the 0-based index of the bad update; the message
  counts updates from 1, as metrics.jsonl and the checkpoint names do."""
  groups = param_groups(state.params)
  bad = [g for g, b in zip(groups, np.asarray(state.bad_groups)) if b]
  checkpointer.close()
  last_good = checkpointer.steps()[-1] if checkpointer.steps() else None
  where = f"; the last good checkpoint is step {last_good}" if last_good is not None else ""
  raise NonFiniteError(
      f"Non-finite loss or gradient at step {step + 1} (parameter groups with non-finite "
      f"gradients or updates: {', '.join(bad) or 'none; the loss itself'}){where}. Lower "
      "the learning rate, or set train.nonfinite='skip' to skip such updates.")

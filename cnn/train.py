"""The training engine: train state, train and eval steps, and the fit loop.

Reads top to bottom: the state, the loss, the two step builders (``jit`` over a mesh,
and the per-device ``shard_map`` variant), evaluation, then `fit`, the only loop.

The train state holds everything a run needs to continue exactly where it stopped:
parameters, batch-norm statistics, optimizer state, the rng, the step (which is also
the position in the data: the batch at step s is a pure function of the seed and s),
the plateau schedule's scale, and the non-finite bookkeeping.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import json
import os
import pathlib
import signal
import sys
import threading
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
from cnn import errors
from cnn import metrics as metrics_lib
from cnn import models
from cnn import multi
from cnn import optim
from cnn import sharding
from cnn import tasks
from cnn import transfer
from cnn import workdir as workdir_lib
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


def metric_names(params: Any, log_grad_norms: bool,
                 task: str = "classification") -> list[str]:
  """The train metrics a step accumulates: the task's, the gradient norm, and
  per-stage gradient norms on request."""
  names = [*tasks.get(task).train_metric_names(), "grad_norm"]
  if log_grad_norms:
    names += sorted({f"grad_norm/{models.stage_of(g)}" for g in param_groups(params)})
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


def _flat(tree) -> jax.Array:
  """Every element of every leaf of `tree` in one float32 vector (empty for none).

  The guards reduce over it once instead of once per leaf: XLA:CPU compiles every
  reduction as its own kernel, and the copy (a few MB) takes well under 1 ms.
  """
  leaves = jax.tree.leaves(tree)
  if not leaves:
    return jnp.zeros([0], jnp.float32)
  return jnp.concatenate([jnp.ravel(x).astype(jnp.float32) for x in leaves])


def _sum_squares(tree) -> jax.Array:
  """The squared L2 norm of all leaves, as one reduction."""
  return jnp.sum(jnp.square(_flat(tree)))


def _nonfinite_groups(flat_grads: jax.Array, flat_params: jax.Array,
                      group_ends: np.ndarray) -> jax.Array:
  """bool[groups]: the groups with a non-finite gradient or new parameter, from the
  flat vectors of both (groups are contiguous there: `param_groups` is sorted, as
  leaves are) and the index of each group's last element.

  One running count over all the values, read at each group's end, rather than a
  reduction per group: only a bad step runs it, but every step compiles it.
  """
  bad = (~jnp.isfinite(flat_grads)).astype(jnp.int32) + ~jnp.isfinite(flat_params)
  counts = jnp.cumsum(bad)[group_ends]
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
  # Each tree is flattened once, for this flag, the groups and the global gradient
  # norm (per-stage norms, when asked for, sum their own stages).
  flat_grads, flat_params = _flat(grads), _flat(new_params)
  ok = (jnp.all(jnp.isfinite(flat_grads)) & jnp.all(jnp.isfinite(flat_params))
        & jnp.isfinite(metrics["loss"]) & live)
  group_ends = np.cumsum([sum(x.size for x in jax.tree.leaves(grads[g]))
                          for g in groups]) - 1

  def take(new_params, new_stats, new_opt_state, bad_groups):
    return new_params, new_stats, new_opt_state, bad_groups

  def keep(new_params, new_stats, new_opt_state, bad_groups):
    # The first bad step records its non-finite groups; later ones (after a "stop",
    # or further skips) keep the first record.
    bad_groups = jnp.where(live, _nonfinite_groups(flat_grads, flat_params,
                                                   group_ends), bad_groups)
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
      by_stage.setdefault(models.stage_of(g), []).append(grads[g])
    squares = {stage: _sum_squares(trees) for stage, trees in by_stage.items()}
    for stage, sq in squares.items():
      metrics[f"grad_norm/{stage}"] = jnp.sqrt(sq)
    # The global norm from the stages' sums: no second pass over the gradients.
    metrics["grad_norm"] = jnp.sqrt(sum(squares.values()))
  else:
    metrics["grad_norm"] = jnp.sqrt(jnp.sum(jnp.square(flat_grads)))
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
  shard = sharding.batch_sharding(mesh)
  # Each process builds and places only the rows its devices hold.
  rows = data_lib.process_rows(shard, batch_size)

  def outputs():
    for images, labels, mask in data_lib.eval_batches(split, batch_size, mean=mean,
                                                      std=std, out_size=out_size,
                                                      rows=rows):
      batch = data_lib.place_batch((np.asarray(images), np.asarray(labels, np.int32),
                                    np.asarray(mask, np.float32)), shard, batch_size)
      yield eval_step(state, *batch)

  t = tasks.get(task)
  return t.eval_scores(t.gather(outputs()))


def evaluate_run(run: Run, state: TrainState, split=None, eval_step=None
                 ) -> dict[str, Any]:
  """`evaluate` of a run's state on `split` (default its evaluation split) with the
  run's eval batch size, statistics, mesh and task; `eval_step` defaults to the jitted
  `make_eval_step` of its model."""
  if eval_step is None:
    eval_step = jax.jit(make_eval_step(run.model, run.step_cfg.task))
  tc, ds = run.config.train, run.dataset
  return evaluate(eval_step, state, ds.eval if split is None else split,
                  batch_size=tc.eval_batch_size or tc.batch_size, mean=ds.mean,
                  std=ds.std, mesh=run.mesh, out_size=run.out_size,
                  task=run.step_cfg.task)


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
  if config.train.precision == "bfloat16":
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


def train_batch_fn(config, dataset, out_size) -> Callable:
  """The on-device batch function of a run: its seed's order, ``data.augment``, the
  dataset's statistics (`cnn.data.make_train_batch_fn`)."""
  return data_lib.make_train_batch_fn(
      len(dataset.train), config.train.batch_size, augment=config.data.augment,
      mean=dataset.mean, std=dataset.std, seed=config.seed, out_size=out_size)


def _check_input_pipeline(config, dataset, mesh, out_size) -> None:
  """Input mistakes that would otherwise surface only when the steps are compiled (an
  unknown augmentation, a crop larger than the images, a batch larger than the data,
  an eval batch the devices cannot split) raise here, before `fit` writes anything."""
  tc, augment = config.train, config.data.augment
  sharding.check_batch_size(tc.eval_batch_size or tc.batch_size, mesh,
                            "train.eval_batch_size")
  data_lib.steps_per_epoch(len(dataset.train), tc.batch_size)
  if dataset.train.streamed:
    if augment not in data_lib.HOST_AUGMENTATIONS:
      raise unknown_choice("data.augment", augment, data_lib.HOST_AUGMENTATIONS)
    return
  batch_fn = train_batch_fn(config, dataset, out_size)
  x, y = dataset.train.x, dataset.train.y
  jax.eval_shape(batch_fn, jax.ShapeDtypeStruct(x.shape, x.dtype),
                 jax.ShapeDtypeStruct(y.shape, jnp.int32),
                 jax.ShapeDtypeStruct((), jnp.int32))


def build_run(config) -> Run:
  """Validates the config and builds data, model, optimizer; writes nothing. The
  run's config is the complete one (every key, defaults filled in)."""
  config_lib.validate(config)
  config = config_lib.complete(config)
  mesh = sharding.make_mesh(config.train.model_parallel)
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
  wd = float(config.optim.weight_decay)
  step_cfg = StepConfig(
      weight_decay_in_loss=wd if optim.uses_l2_in_loss(config.optim) else 0.0,
      label_smoothing=float(config.train.label_smoothing),
      nonfinite=config.train.nonfinite,
      log_grad_norms=bool(config.train.log_grad_norms),
      log_every=int(config.train.log_every), task=task.name)
  return Run(config, mesh, dataset, model, schedule, tx, step_cfg, input_shape, out_size)


def init_state(run: Run) -> tuple[TrainState, Any]:
  """A fresh train state placed with its shardings, and those shardings."""
  rng = jax.random.key(run.config.seed)
  create = functools.partial(state_factory, run)
  abstract = jax.eval_shape(create, rng)
  shardings = sharding.state_shardings(abstract, run.mesh)
  state = jax.jit(create, out_shardings=shardings)(rng)
  return state, shardings


def compile_steps(run: Run, shardings) -> tuple[Callable, Callable, Any]:
  """(train_step(state, x_all, y_all), eval_step, device data) with the input pipeline
  fused into the train step: batch selection, augmentation and normalisation run on
  the devices, inside the same program."""
  cfg, ds, mesh = run.config, run.dataset, run.mesh
  if cfg.train.step_impl == "shard_map":
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
  batch_fn = train_batch_fn(cfg, ds, run.out_size)

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
      ds.train, cfg.train.batch_size, cfg.data.augment, mean=ds.mean,
      std=ds.std, seed=cfg.seed, out_size=run.out_size, mesh=run.mesh)
  return batches.iterate(start)


# ----------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------

class _Preemption:
  """Turns SIGTERM (the usual pre-emption notice) into a flag the loop checks, and
  makes sure SIGTERM still ends a process that cannot get back to the loop.

  A Python signal handler runs only between bytecodes of the main thread: while that
  thread waits in a collective whose peer died, the flag is never even set. Python's
  C-level handler still writes the signal number to the wakeup fd, so a watcher
  thread reading it ends the process (status 143, one line on stderr) on a second
  SIGTERM (a second or more after the first: one notice delivered twice, to the
  process and forwarded by a parent, is one), or when the loop has not stopped
  `grace_s` seconds after the first (default ``CNN_SIGTERM_GRACE_S`` or 120). A single
  process has no peer to wait for: it has no watcher unless `grace_s` is given.
  """

  def __init__(self, grace_s: Optional[float] = None):
    self.requested = False
    if grace_s is None and jax.process_count() > 1:
      grace_s = float(os.environ.get("CNN_SIGTERM_GRACE_S", "120"))
    self.grace_s = grace_s
    self._previous = None
    self._previous_fd = -1
    self._pipe: Optional[tuple[int, int]] = None
    self._done = threading.Event()
    self._timer: Optional[threading.Timer] = None

  def __enter__(self):
    # A SIGTERM during start-up whose exception Python swallowed ends the run here,
    # as one that was not would have.
    errors.raise_if_terminated()
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not in the main thread: no handler, nothing to restore
      self._previous = None
      return self
    if self.grace_s is None:
      return self
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    self._pipe = (read_fd, write_fd)
    self._previous_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    threading.Thread(target=self._watch, args=(read_fd,), daemon=True,
                     name="sigterm-watch").start()
    return self

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

  def _watch(self, read_fd: int) -> None:
    """Counts the SIGTERMs written to the wakeup fd, whatever the main thread does."""
    first = None
    while True:
      try:
        data = os.read(read_fd, 64)
      except OSError:
        return
      if not data:                # the write end closed: the loop is over
        os.close(read_fd)
        return
      if bytes([signal.SIGTERM]) not in data:
        continue
      if first is not None and time.monotonic() - first >= 1.0:
        self._die("a second SIGTERM")
      elif first is None:
        first = time.monotonic()
        self._timer = threading.Timer(
            self.grace_s, self._die,
            (f"SIGTERM, and the loop did not stop within {self.grace_s:g} s "
             "(blocked in a collective: a peer process may have died)",))
        self._timer.daemon = True
        self._timer.start()

  def _die(self, why: str) -> None:
    if self._done.is_set():
      return
    # os.write, not print: sys.stderr's lock may be held by the stuck main thread.
    os.write(2, f"error: exiting after {why}; the last checkpoint stays, run the "
                "same command again to resume.\n".encode())
    os._exit(128 + signal.SIGTERM)

  def __exit__(self, *exc):
    self._done.set()
    if self._timer is not None:
      self._timer.cancel()
    if self._previous is not None:
      signal.set_wakeup_fd(self._previous_fd)
      signal.signal(signal.SIGTERM, self._previous)
    if self._pipe is not None:
      os.close(self._pipe[1])     # the watcher reads end-of-file and returns


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


# ----------------------------------------------------------------------------------
# When the loop stops to log, evaluate and checkpoint
# ----------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Due:
  """What is due after a step. The loop syncs with the devices only when one is."""
  log: bool
  eval: bool
  checkpoint: bool

  @property
  def any(self) -> bool:
    return self.log or self.eval or self.checkpoint


def due_after(step: int, tc) -> Due:
  """After `step` updates: a log line every ``train.log_every``, an evaluation every
  ``train.eval_every`` and a checkpoint every ``train.checkpoint_every`` steps (0:
  never before the end); the last step does all three."""
  last = step == tc.steps
  every = lambda n: bool(n) and step % n == 0  # noqa: E731
  return Due(log=last or every(tc.log_every), eval=last or every(tc.eval_every),
             checkpoint=last or every(tc.checkpoint_every))


def train_record(run: Run, state: TrainState, step: int, img_per_s: float
                 ) -> dict[str, Any]:
  """The logged line of one run: epoch, lr, the means of its metric window.

  A window in which every step was skipped (non-finite, "skip" mode) has no means:
  its train metrics are None (null in metrics.jsonl), not 0.
  """
  window = jax.device_get(state.window)
  count = float(window.pop("count"))
  spe = data_lib.steps_per_epoch(len(run.dataset.train), run.config.train.batch_size)
  return {"epoch": step / spe,
          "lr": float(run.schedule(step - 1)) * float(state.lr_scale),
          **{(k if "/" in k else f"train_{k}"): (float(v) / count if count else None)
             for k, v in window.items()},
          "img_per_s": img_per_s, "skipped_steps": int(state.skipped)}


# ----------------------------------------------------------------------------------
# The loop: one run, or k runs that differ only in seed, in one program
# ----------------------------------------------------------------------------------

@dataclasses.dataclass
class Member:
  """One run of the loop with its workdir and what it writes there."""
  run: Run
  workdir: pathlib.Path
  checkpointer: Any
  writer: Any
  last: dict[str, Any] = dataclasses.field(default_factory=dict)
  halted_at: int = -1              # the 0-based bad update, once non-finite ("stop")


@dataclasses.dataclass
class Program:
  """The compiled pieces the loop drives; `states` is one TrainState, or k stacked."""
  step: Callable                   # (states, *inputs) -> (states, metrics)
  inputs: Iterator                 # the data arguments of each step
  evaluate: Callable               # states -> [the task's scores of run i]
  unstack: Callable                # states -> [the TrainState of run i]
  stack: Callable                  # [the TrainState of run i] -> states


def open_members(runs: list[Run], workdirs, *, overwrite: bool, fork: bool,
                 abstract) -> list[Member]:
  """Checks every workdir (configuration, checkpoint compatibility), then prepares
  them: nothing is written before all have passed.

  With several processes every one checks (reading only), they agree on the outcome
  (`sharding.agree`: the same ConfigError everywhere, or none), process 0 alone
  prepares the workdirs, and only then do all construct orbax's managers, which
  create their directories and synchronise by themselves: each process must find
  the directories in the same state, or orbax's barriers disagree.
  """

  def check():
    for run, w in zip(runs, workdirs):
      check_workdir(w, run.config, overwrite=overwrite, fork=fork)
      if not overwrite:   # a checkpoint of another model: refuse, still unwritten
        ckpt_lib.check_compatible(w, abstract)

  def prepare():
    for run, w in zip(runs, workdirs):
      prepare_workdir(w, run.config, overwrite=overwrite, fork=fork)

  sharding.agree(check)
  sharding.agree(prepare, primary_only=True)
  members = []
  for run, w in zip(runs, workdirs):
    tc = run.config.train
    members.append(Member(
        run, w, ckpt_lib.Checkpointer(w, keep=tc.keep_checkpoints,
                                      best_metric=tc.best_metric, best_mode=tc.best_mode),
        metrics_lib.MetricWriter(w, tensorboard=tc.tensorboard)))
  return members


def run_loop(program: Program, states, members: list[Member], *,
             stop_after: Optional[int] = None):
  """Trains until ``train.steps``, a SIGTERM or `stop_after` steps of this call.

  Returns (states, status) with status "done", "preempted" or "halted" (every run
  non-finite in "stop" mode). A halted run of several is frozen at its last good state
  by its step (every later update is a no-op) and stops logging and checkpointing.
  """
  run0 = members[0].run
  tc, k = run0.config.train, len(members)
  plateau = run0.config.schedule.name == "plateau"
  first = program.unstack(states)[0]
  step = int(first.step)
  if step >= tc.steps:
    return states, "done"
  say = (lambda *a, **kw: None) if tc.quiet or jax.process_index() else functools.partial(
      print, file=sys.stderr, flush=True)
  n_params = sum(x.size for x in jax.tree.leaves(first.params))
  say(f"training {run0.config.model.name} ({n_params:,} parameters"
      f"{f', {k} seeds in one program' if k > 1 else ''}) in "
      f"{', '.join(str(m.workdir) for m in members)}")
  train_step, inputs = _compiled(program, states, say)
  progress = metrics_lib.ProgressBar(tc.steps, quiet=tc.quiet)
  status, calls = "done", 0
  window_start, window_step = time.time(), step   # after compiling: img/s is training
  with _Preemption() as preemption:
    while step < tc.steps:
      states, _ = train_step(states, *next(inputs))
      step += 1
      calls += 1
      progress.update(step)
      due = due_after(step, tc)
      stopping = (_stop_agreed(preemption, step, due)
                  or (stop_after is not None and calls >= stop_after))
      if not (due.any or stopping):
        continue
      # Everything below syncs with the devices; it runs only at these boundaries.
      singles = program.unstack(states)
      _note_halts(members, singles)
      if all(m.halted_at >= 0 for m in members):
        status = "halted"
        break
      img_per_s = (step - window_step) * tc.batch_size / max(time.time() - window_start,
                                                              1e-9)
      scores = program.evaluate(states) if due.eval else [None] * k
      for i, (m, state, ev) in enumerate(zip(members, singles, scores)):
        if m.halted_at >= 0:
          continue
        record = train_record(m.run, state, step, img_per_s)
        if ev is not None:
          record.update({f"eval_{n}": v for n, v in ev.items() if n != "examples"})
          if plateau:
            singles[i] = state = _plateau_step(state, record, m.run.config.schedule)
          m.checkpointer.save_best(step, state, record)
        if due.log or due.eval:  # not at a pre-emption: a resumed run logs the same lines
          m.writer.write(step, record)
        m.last = {"step": step, **record}
        if due.checkpoint or stopping:
          m.checkpointer.save(step, state)
      if plateau and due.eval:
        states = program.stack(singles)
      losses = [m.last["train_loss"] for m in members
                if m.halted_at < 0 and m.last.get("train_loss") is not None]
      progress.update(step, loss=float(np.mean(losses)) if losses else float("nan"),
                      img_s=k * img_per_s)
      window_start, window_step = time.time(), step
      if stopping:
        status = "preempted"
        break
  progress.close()
  return states, status


# With several processes, how often (in steps) they agree on whether to stop.
STOP_CHECK_EVERY = 10


def _stop_agreed(preemption: _Preemption, step: int, due: Due) -> bool:
  """Whether the loop stops after `step` for a SIGTERM. One process decides alone;
  several must stop at the same step (the checkpoint they then write together is a
  collective), so every `STOP_CHECK_EVERY` steps and at each log, eval or checkpoint
  boundary (the same steps on every process) they stop if any was signalled."""
  if jax.process_count() == 1:
    return preemption.requested
  if not (due.any or step % STOP_CHECK_EVERY == 0):
    return False
  return sharding.any_process(preemption.requested)


def _compiled(program: Program, states, say) -> tuple[Callable, Iterator]:
  """The program's step compiled ahead of the loop (so the first timed window holds
  no compilation) and the step inputs, the first one included."""
  inputs = program.inputs
  args = next(inputs)
  say("compiling the train step ...")
  start = time.time()
  train_step = program.step.lower(states, *args).compile()
  say(f"compiled in {time.time() - start:.1f} s")
  return train_step, itertools.chain([args], inputs)


def _note_halts(members: list[Member], singles: list[TrainState]) -> None:
  """Records (and, when others train on, reports) the runs that went non-finite."""
  for m, state in zip(members, singles):
    halted_at = int(state.halted_at)
    if halted_at >= 0 and m.halted_at < 0:
      m.halted_at = halted_at
      if len(members) > 1:
        print(f"error: {m.workdir}: non-finite loss or gradient at step {halted_at + 1}; "
              "this model stays at its last good state.", file=sys.stderr)


def close_members(members: list[Member], singles: list[TrainState],
                  status: str) -> list[dict[str, Any]]:
  """Final checkpoints, closed writers, final.json of each finished run; returns each
  run's last logged record with its ``status``."""
  results = []
  for m, state in zip(members, singles):
    step, total = int(state.step), m.run.config.train.steps
    if m.halted_at < 0 and step >= total:   # also when resumed at the end
      m.checkpointer.save(step, state)
    m.checkpointer.close()
    m.writer.close()
    last = m.last
    if not last and m.writer.enabled:   # nothing ran in this call: report the last log
      rows = metrics_lib.read_jsonl(m.writer.path)
      last = dict(rows[-1]) if rows else {"step": step}
    last["status"] = "halted" if m.halted_at >= 0 else status
    if last["status"] == "done" and jax.process_index() == 0:
      write_atomic(m.workdir / "final.json", metrics_lib.strict_json(last, indent=2) + "\n")
    results.append(last)
  return results


def single_program(run: Run, state: TrainState, shardings) -> Program:
  """The program of one run: the jitted (or shard_map) step over the mesh."""
  train_step, eval_step, device_data = compile_steps(run, shardings)

  def evaluate_one(state):
    return [evaluate_run(run, state, eval_step=eval_step)]

  return Program(train_step, feed(run, device_data, int(state.step)), evaluate_one,
                 unstack=lambda s: [s], stack=lambda singles: singles[0])


def stacked_program(runs: list[Run], impl: str) -> Program:
  """The program of k runs: their states stacked, one step for all (cnn.multi)."""
  run, k = runs[0], len(runs)
  core = make_train_step(run.model, run.tx, run.schedule, run.step_cfg)
  batch_fns = [train_batch_fn(r.config, r.dataset, r.out_size) for r in runs]
  placed: dict[int, Any] = {}
  data = tuple(placed.setdefault(id(r.dataset), (
      jnp.asarray(r.dataset.train.x), jnp.asarray(np.asarray(r.dataset.train.y, np.int32))))
      for r in runs)
  eval_step = multi.make_multi_eval_step(make_eval_step(run.model, run.step_cfg.task), impl)
  return Program(multi.make_multi_step(core, batch_fns, impl), itertools.repeat((data,)),
                 functools.partial(multi.evaluate_all, runs, eval_step=eval_step),
                 unstack=lambda s: multi.unstack(s, k), stack=multi.stack)


def build_runs(configs) -> list[Run]:
  """One Run per config of a group that differs only in seed; the dataset is loaded
  once unless the seed picks a different validation split."""
  multi.check_same_but_seed(configs)
  first = build_run(configs[0])
  if len(configs) > 1 and first.dataset.train.streamed:
    raise ConfigError("Training several seeds in one program needs an in-memory dataset; "
                      "train streamed datasets (imagenet2012) one run at a time.")
  runs = [first]
  for c in configs[1:]:
    if c.data.validation_size:
      runs.append(build_run(c))
    else:
      config_lib.validate(c)
      runs.append(dataclasses.replace(first, config=config_lib.complete(c)))
  return runs


def fit(config, workdir: str | pathlib.Path, *, overwrite: bool = False,
        fork: bool = False, stop_after: Optional[int] = None) -> dict[str, Any]:
  """Trains `config` in `workdir`, resuming from its latest checkpoint if any.

  Returns the last logged metrics (with ``status``: "done" or "preempted"); a
  non-finite loss in "stop" mode raises NonFiniteError. `stop_after` stops (with a
  checkpoint) after that many steps of this call: for tests and for sweeps that
  interleave runs.
  """
  return fit_group([config], [workdir], overwrite=overwrite, fork=fork,
                   stop_after=stop_after)[0]


def fit_group(configs, workdirs, *, overwrite: bool = False, fork: bool = False,
              stop_after: Optional[int] = None, multi_impl: str = "auto"
              ) -> list[dict[str, Any]]:
  """Trains k configs in workdirs[i], one program for all; `fit` is k = 1.

  For k > 1 the configs may differ only in ``seed``: their states are stacked and one
  compiled step trains all (`cnn.multi`, `multi_impl` "vmap", "unroll" or "auto"),
  model i seeing exactly the data, dropout and initialisation of a separate run with
  seed i. Every workdir gets what a single run writes; a group resumes when its latest
  checkpoints are at the same step. A run of several that goes non-finite ("stop"
  mode) is frozen, reported and returned with status "halted"; the others go on.
  """
  if len(configs) != len(workdirs) or not configs:
    raise ConfigError(f"fit_group needs one workdir per config, got {len(configs)} "
                      f"configs and {len(workdirs)} workdirs.")
  workdirs = [pathlib.Path(w) for w in workdirs]
  # One run per workdir: a second one on a busy workdir is refused at once.
  with contextlib.ExitStack() as held:
    for w in workdirs:
      held.enter_context(workdir_lib.lock(w))
    return _fit_locked(configs, workdirs, overwrite=overwrite, fork=fork,
                       stop_after=stop_after, multi_impl=multi_impl)


def _fit_locked(configs, workdirs: list[pathlib.Path], *, overwrite: bool, fork: bool,
                stop_after: Optional[int], multi_impl: str) -> list[dict[str, Any]]:
  """`fit_group` once every workdir is locked."""
  runs = build_runs(configs)        # every config mistake surfaces before any write
  if len(runs) == 1:
    state, shardings = init_state(runs[0])
    abstract = ckpt_lib.abstract_like(state, shardings)
  else:
    multi.check_one_device(configs)
    state = init_stacked(runs)
    abstract = jax.eval_shape(functools.partial(state_factory, runs[0]),
                              jax.random.key(0))
  members = open_members(runs, workdirs, overwrite=overwrite, fork=fork, abstract=abstract)
  try:
    if len(runs) == 1:
      start, restored = members[0].checkpointer.restore_latest(abstract)
      if restored is not None and jax.process_index() == 0:
        print(f"resumed from step {start} in {workdirs[0]}", file=sys.stderr)
      state = restored if restored is not None else transfer.warm_start(state, runs[0])
    else:
      state = multi.restore_stacked([m.checkpointer for m in members], abstract,
                                    workdirs, state)
  except ConfigError:
    for m in members:
      m.checkpointer.close()
    raise
  start = int(np.asarray(state.step).reshape(-1)[0])   # one step, or k equal ones
  for m in members:
    m.writer.truncate_after(start)
    if start == 0:
      m.writer.write_hparams(m.run.config.to_dict())
  program = (single_program(runs[0], state, shardings) if len(runs) == 1
             else stacked_program(runs, multi_impl))
  states, status = run_loop(program, state, members, stop_after=stop_after)
  singles = program.unstack(states)
  results = close_members(members, singles, status)
  if len(runs) == 1 and members[0].halted_at >= 0:
    raise_nonfinite(singles[0], members[0].halted_at, members[0].checkpointer)
  return results


def state_factory(run: Run, rng) -> TrainState:
  """`create_train_state` for `run`'s model and optimizer."""
  return create_train_state(run.model, run.tx, rng, input_shape=run.input_shape,
                            log_grad_norms=run.step_cfg.log_grad_norms,
                            task=run.step_cfg.task)


def init_stacked(runs: list[Run]) -> TrainState:
  """The fresh states of a group's runs, stacked (run i from key(seed_i))."""
  return multi.init_states(functools.partial(state_factory, runs[0]),
                           [r.config.seed for r in runs])


def _plateau_step(state: TrainState, record: dict[str, Any], schedule_cfg) -> TrainState:
  metric = record.get(schedule_cfg.monitor)
  if metric is None:
    return state
  scale, best, bad = optim.update_plateau(
      float(state.lr_scale), float(state.plateau_best), int(state.plateau_bad), metric,
      factor=schedule_cfg.factor, patience=schedule_cfg.patience, mode=schedule_cfg.mode)
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

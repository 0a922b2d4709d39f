"""Semantic segmentation: pixel-wise loss, FCN's metrics, data, and a train loop.

The course (optimisation lecture, case study 3): the output is a pixel-level class
map, the loss a pixel-level classification loss. The models are FCN-32s/16s/8s and
U-Net (cnn/models/segmentation.py); they output logits (N, H, W, classes).

Metrics (Long et al. 2015, section 5, with n_ij the pixels of class i predicted as
class j and t_i = sum_j n_ij the pixels of class i):

    pixel accuracy   sum_i n_ii / sum_i t_i
    mean accuracy    (1 / n_cl) sum_i n_ii / t_i
    mean IU          (1 / n_cl) sum_i n_ii / (t_i + sum_j n_ji - n_ii)
    frequency-weighted IU  (sum_k t_k)^-1 sum_i t_i n_ii / (t_i + sum_j n_ji - n_ii)

A class that is absent from both the labels and the predictions has an undefined
IU and is left out of the means (the FCN code's ``nanmean``). Pixels labelled below
0 (-1: outside the image after an augmentation's crop) are ignored by the loss and
the metrics.

Data (``data.source``):

* ``canvas``, ``canvas:mnist``, ``canvas:digits``: a segmentation task built from real
  digits: 1 to 3 digits pasted at random, non-overlapping places on a 48x48 black
  canvas; each pixel is labelled 0 (background) or 1 + its digit's class where the
  digit's ink is at least half the maximum (11 classes). MNIST digits are cut to the
  20x20 box their ink fits in (LeCun et al. size-normalised every digit to 20x20
  before centring it by mass in 28x28), scikit-learn's digits (used when MNIST is
  absent, or asked for) are their 24x24 upsampled scans. Generated deterministically
  from ``config.seed``; train canvases use training digits only, test canvases test
  digits only. Sizes in the config's ``segmentation`` section.
* ``tfds:oxford_iiit_pet``: the pets with their trimaps (pet, background, border; 3
  classes), read by cnn.data at ``data.image_size``.

Training reuses the engine's pieces (TrainState, the guarded update, optimizers and
schedules, the on-device input pipeline, sharding, checkpoints, metrics.jsonl) with
its own loss and evaluation:

    python -m cnn.segmentation --config experiments/segmentation_digits.py --workdir W
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from cnn.errors import ConfigError, exit_on_user_error, unknown_choice

# The digit canvases live in cnn.data.canvas; these names stay importable from here.
from cnn.data.canvas import (CANVAS_SOURCES, INK_FRACTION, MNIST_BOX,  # noqa: F401
                             canvas_digits, ink_boxes, load_canvas, place_digits)

# The per-pixel loss and FCN's metrics live in cnn.metrics (the engine's tasks use them
# without importing this module's loop); these names stay importable from here.
from cnn.metrics import (IGNORE, confusion_matrix, mean_pixel_cross_entropy,  # noqa: F401
                         pixel_cross_entropy, pixel_topk_correct)
from cnn.metrics import segmentation_scores as scores  # noqa: F401


# ----------------------------------------------------------------------------------
# Configs
# ----------------------------------------------------------------------------------

def defaults() -> ml_collections.ConfigDict:
  """The engine's config plus a ``segmentation`` section (canvas sizes)."""
  from cnn import config as config_lib  # pylint: disable=import-outside-toplevel
  c = config_lib.defaults()
  c.data.source = "canvas"
  c.model = ml_collections.ConfigDict({"name": "unet", "width": 16, "depth": 2,
                                       "batch_norm": True})
  c.train.best_metric = "eval_mean_iou"
  c.train.best_mode = "max"
  c.segmentation = ml_collections.ConfigDict({
      "canvas_size": 48, "min_digits": 1, "max_digits": 3,
      "train_size": 6000, "test_size": 500,
  })
  return c


def validate(config) -> None:
  """The engine's checks on everything but the ``segmentation`` section, then it."""
  from cnn import config as config_lib  # pylint: disable=import-outside-toplevel
  plain = config.to_dict()
  section = plain.pop("segmentation", None)
  config_lib.validate(ml_collections.ConfigDict(plain))
  reference = defaults().segmentation
  for key in (section or {}):
    if key not in reference:
      raise unknown_choice("config key", f"segmentation.{key}",
                           [f"segmentation.{k}" for k in reference.keys()])
  source = config.data.source
  if source not in CANVAS_SOURCES and not source.startswith("tfds:"):
    raise ConfigError(f"Segmentation data.source {source!r} is not supported; use "
                      f"{', '.join(CANVAS_SOURCES)} or tfds:oxford_iiit_pet.")
  if config.train.get("step_impl", "jit") != "jit":
    raise ConfigError("Segmentation training supports train.step_impl='jit' only.")


def load_data(config):
  """The Dataset a segmentation config names."""
  from cnn import data as data_lib  # pylint: disable=import-outside-toplevel
  d = config.data
  if d.source in CANVAS_SOURCES:
    s = {**defaults().segmentation.to_dict(),
         **(config.segmentation.to_dict() if "segmentation" in config else {})}
    return load_canvas(d.source, size=int(s["canvas_size"]), min_digits=int(s["min_digits"]),
                       max_digits=int(s["max_digits"]), train_size=int(s["train_size"]),
                       test_size=int(s["test_size"]), seed=config.seed,
                       data_dir=d.get("data_dir"))
  return data_lib.load(d.source, data_dir=d.get("data_dir"), task="segmentation",
                       validation_size=d.get("validation_size", 0), seed=config.seed,
                       image_size=d.get("image_size"), channels=d.get("channels"))


# ----------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------

def build_run(config):
  """A cnn.train.Run for a segmentation config (data, model, optimizer)."""
  from cnn import models, optim, sharding, train, transfer  # pylint: disable=import-outside-toplevel
  validate(config)
  mesh = sharding.make_mesh(config.train.get("model_parallel", 1))
  sharding.check_batch_size(config.train.batch_size, mesh)
  dataset = load_data(config)
  model = train.build_model(config, dataset.num_classes)
  out_size = None              # images and masks are loaded at data.image_size
  h, w, c = dataset.train.x.shape[1:]
  input_shape = (config.train.batch_size // sharding.data_size(mesh), h, w, c)
  models.output_shape(model, input_shape)
  schedule = optim.make_schedule(config.schedule, config.optim.learning_rate,
                                 config.train.steps)
  tx = optim.make_optimizer(config.optim, schedule)
  tx = transfer.wrap_optimizer(tx, config, model, input_shape)
  wd = float(config.optim.get("weight_decay", 0.0) or 0.0)
  step_cfg = train.StepConfig(
      weight_decay_in_loss=wd if optim.uses_l2_in_loss(config.optim) else 0.0,
      nonfinite=config.train.get("nonfinite", "stop"),
      log_grad_norms=bool(config.train.get("log_grad_norms", False)),
      log_every=int(config.train.log_every), task="segmentation")
  return train.Run(config, mesh, dataset, model, schedule, tx, step_cfg, input_shape,
                   out_size)


def compile_steps(run, shardings):
  """(train_step(state, x_all, y_all), eval_step, (x_all, y_all)) with the input
  pipeline fused into the jitted train step, as the engine does."""
  from cnn import data as data_lib, sharding  # pylint: disable=import-outside-toplevel
  cfg, ds, mesh = run.config, run.dataset, run.mesh
  from cnn import train  # pylint: disable=import-outside-toplevel
  core = train.make_train_step(run.model, run.tx, run.schedule, run.step_cfg)
  batch_fn = data_lib.make_train_batch_fn(
      len(ds.train), cfg.train.batch_size, augment=cfg.data.get("augment", "none"),
      mean=ds.mean, std=ds.std, seed=cfg.seed, out_size=run.out_size,
      sharding=sharding.batch_sharding(mesh))

  def fused(state, x_all, y_all):
    return core(state, *batch_fn(x_all, y_all, state.step))

  replicated = sharding.replicated(mesh)
  train_step = jax.jit(fused, in_shardings=(shardings, replicated, replicated),
                       out_shardings=(shardings, replicated), donate_argnums=0)
  batch = sharding.batch_sharding(mesh)
  eval_step = jax.jit(train.make_eval_step(run.model, "segmentation"),
                      in_shardings=(shardings, batch, batch, batch))
  return train_step, eval_step, data_lib.put_on_devices(ds.train, mesh)


def fit(config, workdir: str | pathlib.Path, *, overwrite: bool = False) -> dict[str, Any]:
  """Trains a segmentation config in `workdir` (resuming from its latest checkpoint);
  writes config.json, metrics.jsonl, checkpoints/, best/ and final.json like the
  engine. Returns the last logged record."""
  from cnn import checkpoint as ckpt_lib, metrics as metrics_lib, train, transfer  # pylint: disable=import-outside-toplevel
  workdir = pathlib.Path(workdir)
  run = build_run(config)
  tc = config.train
  train.prepare_workdir(workdir, config, overwrite=overwrite)
  state, shardings = train.init_state(run)
  checkpointer = ckpt_lib.Checkpointer(
      workdir, keep=tc.get("keep_checkpoints", 3), best_metric=tc.get("best_metric"),
      best_mode=tc.get("best_mode", "max"))
  _, restored = checkpointer.restore_latest(ckpt_lib.abstract_like(state, shardings))
  state = restored if restored is not None else transfer.warm_start(state, run)
  writer = metrics_lib.MetricWriter(workdir, tensorboard=tc.get("tensorboard", True))
  writer.truncate_after(int(state.step))
  train_step, eval_step, (x_all, y_all) = compile_steps(run, shardings)
  ds = run.dataset
  eval_bs = tc.get("eval_batch_size") or tc.batch_size
  progress = metrics_lib.ProgressBar(tc.steps, quiet=tc.get("quiet", False))
  step, last = int(state.step), {}
  window_start, window_step = time.time(), step
  while step < tc.steps:
    state, _ = train_step(state, x_all, y_all)
    step += 1
    at_log = step % tc.log_every == 0 or step == tc.steps
    at_eval = (bool(tc.eval_every) and step % tc.eval_every == 0) or step == tc.steps
    at_ckpt = bool(tc.checkpoint_every) and step % tc.checkpoint_every == 0
    if not (at_log or at_eval or at_ckpt):
      continue
    if int(state.halted_at) >= 0:
      train.raise_nonfinite(state, int(state.halted_at), checkpointer)
    window = jax.device_get(state.window)
    count = max(float(window.pop("count")), 1.0)
    record = {"lr": float(run.schedule(step - 1)),
              **{f"train_{k}": float(v) / count for k, v in window.items()},
              "img_per_s": (step - window_step) * tc.batch_size /
                           max(time.time() - window_start, 1e-9)}
    if at_eval:
      ev = train.evaluate(eval_step, state, ds.eval, batch_size=eval_bs, mean=ds.mean,
                          std=ds.std, mesh=run.mesh, out_size=run.out_size,
                          task="segmentation")
      record.update({f"eval_{k}": v for k, v in ev.items() if k != "iou"})
      checkpointer.save_best(step, state, record)
      last_iou = ev["iou"]
    writer.write(step, record)
    last = {"step": step, **record}
    progress.update(step, loss=record["train_loss"], img_s=record["img_per_s"])
    if at_ckpt or step == tc.steps:
      checkpointer.save(step, state)
    window_start, window_step = time.time(), step
  progress.close()
  checkpointer.close()
  writer.close()
  last["status"] = "done"
  if "eval_mean_iou" in last:
    last["eval_iou_per_class"] = last_iou
  (workdir / "final.json").write_text(json.dumps(last, indent=2) + "\n")
  return last


def restore_state(workdir: str | pathlib.Path, *, best: bool = False):
  """(run, state, step) of a segmentation workdir's latest (or best) checkpoint."""
  from cnn import evaluation  # pylint: disable=import-outside-toplevel
  return evaluation.restore_state(pathlib.Path(workdir), best=best, build_run=build_run,
                                  trainer="cnn.segmentation")


def is_segmentation_run(workdir: str | pathlib.Path) -> bool:
  """Whether a workdir's config.json is a segmentation config."""
  saved = pathlib.Path(workdir) / "config.json"
  return saved.exists() and "segmentation" in json.loads(saved.read_text())


def predict(run, state, images: np.ndarray) -> np.ndarray:
  """Label maps (N, H, W) for normalised images (N, H, W, C)."""
  apply = jax.jit(lambda v, x: jnp.argmax(run.model.apply(v, x, train=False), -1))
  return np.asarray(apply({"params": state.params, "batch_stats": state.batch_stats},
                          jnp.asarray(images, jnp.float32)))


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m cnn.segmentation",
      description="Train a segmentation config (experiments/segmentation_*.py).")
  parser.add_argument("--config", required=True, help="experiments/<x>.py[:preset]")
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--overwrite", action="store_true")
  args, rest = parser.parse_known_args(argv)
  unknown = [a for a in rest if not a.startswith("--config.")]
  if unknown:
    parser.error(f"unrecognized arguments: {' '.join(unknown)}")
  with exit_on_user_error():
    from cnn import config as config_lib  # pylint: disable=import-outside-toplevel
    config = config_lib.load(args.config, [a for a in rest if a.startswith("--config.")])
    result = fit(config, args.workdir, overwrite=args.overwrite)
  if "eval_mean_iou" in result:
    from cnn import tasks  # pylint: disable=import-outside-toplevel
    print(tasks.SegmentationTask().summary(result))
  return 0


if __name__ == "__main__":
  sys.exit(main())

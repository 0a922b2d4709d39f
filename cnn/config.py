"""Experiment configs: ml_collections ConfigDicts built from `experiments/*.py`.

Every experiment file defines ``get_config(preset="")`` returning a ConfigDict that
starts from `defaults()`; a file may also define ``get_sweep(config)`` (see
`cnn.sweep`). A config is named on the command line as ``experiments/x.py`` or
``experiments/x.py:preset`` and changed by ``--config.section.key=value`` overrides.

The sections and their keys are fixed here (`defaults`), so a typo is caught with the
valid choices; ``model`` is open: its keys besides ``name`` are the model's arguments.
"""
from __future__ import annotations

import ast
import importlib.util
import math
import pathlib
from typing import Any, Iterable, Optional

import ml_collections

from cnn.errors import ConfigError, unknown_choice


def defaults() -> ml_collections.ConfigDict:
  """Every key a config may set, with its default."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.task = "classification"      # classification | segmentation | detection (cnn/tasks.py)
  c.model = ml_collections.ConfigDict({"name": "lenet5"})
  c.data = ml_collections.ConfigDict({
      "source": "digits",          # digits | npz:<glob>[|<glob>] | mnist | cifar10 | tfds:<name>
      "data_dir": None,
      "validation_size": 0,        # examples (int) or fraction carved out of train
      "augment": "none",           # none | flip | cifar | imagenet | e.g. crop+flip+rotate30
      "image_size": None,          # (H, W) to resize/crop to, or None
      "channels": None,
      "num_classes": None,         # default: the dataset's own (or max label + 1)
      "canvas": ml_collections.ConfigDict({   # data.source="canvas": digits on a canvas
          "size": 48, "min_digits": 1, "max_digits": 3,
          "train_size": 6000, "test_size": 500,
      }),
  })
  c.optim = ml_collections.ConfigDict({
      "name": "momentum",          # sgd | momentum | nesterov | adagrad | rmsprop | adam | adamw
      "learning_rate": 0.1,
      "momentum": 0.9,
      "nesterov": False,
      "weight_decay": 0.0,
      "decoupled_weight_decay": False,
      "grad_clip_norm": 0.0,
      "b1": 0.9, "b2": 0.999, "eps": None, "decay": 0.9, "initial_accumulator": 0.0,
  })
  c.schedule = ml_collections.ConfigDict({
      "name": "constant",          # constant | piecewise | exponential | cosine | plateau
      "boundaries": [], "decay": 0.1,           # piecewise
      "warmup_steps": 0, "warmup_lr": None,     # all
      "every": 1, "rate": 0.96,                 # exponential
      "decay_steps": None,                      # cosine (default: train.steps)
      "monitor": "eval_top1_error", "factor": 0.1, "patience": 1, "mode": "min",  # plateau
  })
  c.train = ml_collections.ConfigDict({
      "batch_size": 128,
      "eval_batch_size": None,     # default: batch_size
      "steps": 1000,
      "log_every": 100,
      "eval_every": 0,             # 0: only at the end
      "checkpoint_every": 0,       # 0: only at the end (and on pre-emption)
      "keep_checkpoints": 3,
      "best_metric": "eval_top1_error",
      "best_mode": "min",
      "label_smoothing": 0.0,
      "precision": "float32",      # float32 | bfloat16 (compute; params stay fp32)
      "step_impl": "jit",          # jit | shard_map
      "model_parallel": 1,
      "nonfinite": "stop",         # stop | skip
      "log_grad_norms": False,
      "tensorboard": True,
      "quiet": False,
  })
  c.transfer = ml_collections.ConfigDict({   # fine-tuning; see cnn/transfer.py
      "init_from": None,           # workdir of a trained run to start from
      "checkpoint": "latest",      # latest | best
      "reinit": "auto",            # regex of params initialised afresh; auto: the head
      "freeze": "",                # regex of params kept fixed; "backbone": all but reinit
      "freeze_depth": 0,           # also freeze the first k top-level layers
      "backbone_lr": 1.0,          # lr multiplier of trainable params not re-initialised
  })
  return c


CHOICES = {
    ("train", "precision"): ("float32", "bfloat16"),
    ("train", "step_impl"): ("jit", "shard_map"),
    ("train", "nonfinite"): ("stop", "skip"),
    ("train", "best_mode"): ("min", "max"),
    ("schedule", "mode"): ("min", "max"),
}
POSITIVE = {("train", "batch_size"), ("train", "steps"), ("optim", "learning_rate"),
            ("train", "log_every")}
NON_NEGATIVE = {("train", "eval_every"), ("train", "checkpoint_every"),
                ("optim", "weight_decay"), ("train", "label_smoothing"),
                ("schedule", "warmup_steps"), ("optim", "grad_clip_norm")}
# Keys that may change between a run and its resumption without making it another run.
RESUMABLE_KEYS = {"train.steps", "train.quiet", "train.log_every", "train.tensorboard"}


def load(spec: str, overrides: Iterable[str] = ()) -> ml_collections.ConfigDict:
  """The config of ``path.py[:preset]`` with ``section.key=value`` overrides applied."""
  path, _, preset = spec.partition(":")
  module = _import_file(path)
  if not hasattr(module, "get_config"):
    raise ConfigError(f"{path} has no get_config() function; an experiment file must "
                      "define one.")
  config = module.get_config(preset) if preset else module.get_config()
  for override in overrides:
    apply_override(config, override)
  return config


def _import_file(path: str):
  file = pathlib.Path(path)
  if not file.is_file():
    raise ConfigError(f"Config file {path} does not exist; pass an experiments/*.py file.")
  spec = importlib.util.spec_from_file_location(f"_experiment_{file.stem}", file)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def experiment_module(spec: str):
  """The imported experiment file of ``path.py[:preset]`` (for its get_sweep)."""
  return _import_file(spec.partition(":")[0])


def apply_override(config: ml_collections.ConfigDict, override: str) -> None:
  """Sets ``a.b=value``; the value is parsed as a Python literal and must fit the
  existing key's type. Unknown keys (outside ``model``) are refused with the choices."""
  key, sep, raw = override.partition("=")
  key = key.removeprefix("--").removeprefix("config.")
  if not sep:
    raise ConfigError(f"Override {override!r} must look like --config.{key}=VALUE.")
  *parents, leaf = key.split(".")
  node = config
  for i, part in enumerate(parents):
    if part not in node:
      raise unknown_choice("config section", ".".join(parents[:i + 1]), node.keys())
    node = node[part]
  value = _parse(raw)
  if leaf not in node:
    if parents[:1] == ["model"]:  # model keys are the model's own arguments
      node[leaf] = value
      return
    raise unknown_choice("config key", key, [f"{'.'.join(parents)}.{k}" for k in node.keys()])
  node[leaf] = _coerce(key, node[leaf], value)


def _parse(raw: str) -> Any:
  try:
    return ast.literal_eval(raw)
  except (ValueError, SyntaxError):
    return raw  # a bare word: a string


def _coerce(key: str, current: Any, value: Any) -> Any:
  if current is None or value is None:
    return value
  if isinstance(current, bool):
    if isinstance(value, bool):
      return value
  elif isinstance(current, int) and isinstance(value, int) and not isinstance(value, bool):
    return value
  elif isinstance(current, float) and isinstance(value, (int, float)) and not isinstance(value, bool):
    return float(value)
  elif isinstance(current, str) and isinstance(value, str):
    return value
  elif isinstance(current, (list, tuple)) and isinstance(value, (list, tuple)):
    return type(current)(value)
  elif isinstance(current, ml_collections.ConfigDict) and isinstance(value, dict):
    return value
  raise ConfigError(f"config.{key} must be of type {type(current).__name__}, got "
                    f"{value!r} ({type(value).__name__}).")


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks a whole config against `defaults()`: unknown sections or keys, types,
  choices and ranges. Names of models, data sources, optimizers and schedules are
  checked by the registries that own them when the run is built."""
  reference = defaults()
  for section in config.keys():
    if section not in reference:
      raise unknown_choice("config section", section, reference.keys())
  for section in ("data", "optim", "schedule", "train", "transfer"):
    if section not in config:
      continue
    for key in config[section].keys():
      if key not in reference[section]:
        raise unknown_choice("config key", f"{section}.{key}",
                             [f"{section}.{k}" for k in reference[section].keys()])
  if "name" not in config.model:
    raise ConfigError("config.model.name is missing; name a registered model.")
  for (section, key), choices in CHOICES.items():
    value = config[section].get(key, reference[section][key])
    if value not in choices:
      raise unknown_choice(f"{section}.{key}", value, choices)
  for section, key in POSITIVE:
    value = config[section].get(key)
    if (isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0
        or not math.isfinite(value)):
      raise ConfigError(f"config.{section}.{key} must be a positive finite number, got "
                        f"{value!r}.")
  for section, key in NON_NEGATIVE:
    value = config[section].get(key)
    if value is not None and (not isinstance(value, (int, float)) or not value >= 0
                              or not math.isfinite(value)):
      raise ConfigError(f"config.{section}.{key} must be finite and >= 0, got {value!r}.")
  if not isinstance(config.seed, int) or isinstance(config.seed, bool):
    raise ConfigError(f"config.seed must be an int, got {config.seed!r}.")


def with_defaults(saved: dict[str, Any]) -> dict[str, Any]:
  """A saved config.json read as a full config: keys added to `defaults()` since it
  was written take their default values (so old runs stay resumable)."""
  full = defaults().to_dict()
  for section, values in saved.items():
    if isinstance(values, dict) and isinstance(full.get(section), dict):
      full[section] = {**full[section], **values}
    else:
      full[section] = values
  return full


def differing_keys(saved: dict[str, Any], current: dict[str, Any],
                   prefix: str = "") -> list[str]:
  """Dotted keys whose values differ between two config dicts (ignoring the keys a
  resumed run may change, such as train.steps)."""
  out = []
  for key in sorted(set(saved) | set(current)):
    name = f"{prefix}{key}"
    a, b = saved.get(key, "<missing>"), current.get(key, "<missing>")
    if isinstance(a, dict) and isinstance(b, dict):
      out.extend(differing_keys(a, b, name + "."))
    elif name not in RESUMABLE_KEYS and _normal(a) != _normal(b):
      out.append(name)
  return out


def _normal(value: Any) -> Any:
  return list(value) if isinstance(value, tuple) else value


def to_dict(config: Optional[ml_collections.ConfigDict]) -> dict[str, Any]:
  return {} if config is None else config.to_dict()

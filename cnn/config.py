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
import copy
import dataclasses
import json
import importlib.util
import math
import numbers
import pathlib
from typing import Any, Iterable, Optional, Sequence

import ml_collections

from cnn.errors import ConfigError, unknown_choice


# ----------------------------------------------------------------------------------
# The schema: every key, its default, its type and the values it may take
# ----------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Range:
  """An interval of numbers; None ends are open to infinity."""
  low: Optional[float] = None
  high: Optional[float] = None
  low_open: bool = False      # True: low itself is excluded
  high_open: bool = False

  def __contains__(self, value: float) -> bool:
    if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
      return False
    return self.high is None or (value < self.high or
                                 (not self.high_open and value == self.high))

  def describe(self) -> str:
    """The interval in words, e.g. ">= 0", "in [0, 1)"."""
    if self.low is not None and self.high is not None:
      return (f"in {'(' if self.low_open else '['}{self.low}, {self.high}"
              f"{')' if self.high_open else ']'}")
    if self.low is not None:
      return f"{'>' if self.low_open else '>='} {self.low}"
    return f"{'<' if self.high_open else '<='} {self.high}" if self.high is not None else ""


POSITIVE = Range(0, low_open=True)
NON_NEGATIVE = Range(0)
AT_LEAST_1 = Range(1)
UNIT = Range(0, 1)                      # [0, 1]
UNIT_OPEN = Range(0, 1, high_open=True)  # [0, 1)
KINDS = ("bool", "int", "float", "str", "size", "ints", "count_or_fraction")


@dataclasses.dataclass(frozen=True)
class Key:
  """One config key. `kind` is one of KINDS; `allowed` is a Range, a tuple of choices or
  a function returning them (for registries imported lazily); `optional` lets the key
  be None (which then means the behaviour `doc` names)."""
  default: Any
  kind: str
  allowed: Any = None
  optional: bool = False
  doc: str = ""

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f"Key kind {self.kind!r} is not one of {KINDS}.")


def _task_names() -> list[str]:
  from cnn import tasks  # pylint: disable=import-outside-toplevel  (tasks imports jax)
  return tasks.names()


_MIN_MAX = ("min", "max")

# Sections are dicts; ``model`` is open (its other keys are the model's arguments).
SCHEMA: dict[str, Any] = {
    "seed": Key(0, "int", NON_NEGATIVE, doc="the run's one seed (init, data order)"),
    "task": Key("classification", "str", _task_names, doc="a cnn/tasks.py name"),
    "model": {"name": Key("lenet5", "str", doc="a registered model")},
    "data": {
        "source": Key("digits", "str",
                      doc="digits | npz:<glob>[|<glob>] | mnist | cifar10 | tfds:<name>"),
        "data_dir": Key(None, "str", optional=True, doc="npz root or TFDS data_dir"),
        "validation_size": Key(0, "count_or_fraction",
                               doc="examples (int) or fraction carved out of train"),
        "train_size": Key(None, "int", AT_LEAST_1, optional=True,
                          doc="the first N training examples only; default all"),
        "augment": Key("none", "str", doc="none | flip | cifar | imagenet | shift | "
                       "deck 5 stages joined by +, e.g. crop+flip+rotate30"),
        "image_size": Key(None, "size", optional=True,
                          doc="the data's own size"),   # resized/cropped to
        "channels": Key(None, "int", (1, 3), optional=True, doc="the data's own"),
        "num_classes": Key(None, "int", AT_LEAST_1, optional=True,
                           doc="the dataset's own, or max label + 1"),
        "canvas": {     # data.source="canvas": digits on a canvas (cnn/data/canvas.py)
            "size": Key(48, "int", AT_LEAST_1),
            "min_digits": Key(1, "int", AT_LEAST_1),
            "max_digits": Key(3, "int", AT_LEAST_1),
            "train_size": Key(6000, "int", AT_LEAST_1),
            "test_size": Key(500, "int", AT_LEAST_1),
            "seed": Key(0, "int", doc="the canvases' own; a run's seed changes init "
                                      "and order, not the data"),
        },
    },
    "optim": {
        "name": Key("momentum", "str",
                    doc="sgd | momentum | nesterov | adagrad | rmsprop | adam | adamw"),
        "learning_rate": Key(0.1, "float", POSITIVE),
        "momentum": Key(0.9, "float", UNIT),
        "nesterov": Key(False, "bool"),
        "weight_decay": Key(0.0, "float", NON_NEGATIVE),
        "decoupled_weight_decay": Key(False, "bool"),
        "grad_clip_norm": Key(0.0, "float", NON_NEGATIVE, doc="0: no clipping"),
        "b1": Key(0.9, "float", UNIT_OPEN),
        "b2": Key(0.999, "float", UNIT_OPEN),
        "eps": Key(None, "float", NON_NEGATIVE, optional=True, doc="1e-8"),
        "decay": Key(0.9, "float", UNIT),
        "initial_accumulator": Key(0.0, "float", NON_NEGATIVE),
    },
    "schedule": {
        "name": Key("constant", "str",
                    doc="constant | piecewise | exponential | cosine | plateau"),
        "boundaries": Key([], "ints", POSITIVE, doc="piecewise: steps, increasing"),
        "decay": Key(0.1, "float", POSITIVE),
        "warmup_steps": Key(0, "int", NON_NEGATIVE),
        "warmup_lr": Key(None, "float", NON_NEGATIVE, optional=True,
                         doc="0.1 x learning_rate"),
        "every": Key(1, "int", AT_LEAST_1),
        "rate": Key(0.96, "float", POSITIVE),
        "decay_steps": Key(None, "int", AT_LEAST_1, optional=True, doc="train.steps"),
        "monitor": Key("eval_top1_error", "str"),
        "factor": Key(0.1, "float", POSITIVE),
        "patience": Key(1, "int", NON_NEGATIVE),
        "mode": Key("min", "str", _MIN_MAX),
    },
    "train": {
        "batch_size": Key(128, "int", POSITIVE),
        "eval_batch_size": Key(None, "int", POSITIVE, optional=True, doc="batch_size"),
        "steps": Key(1000, "int", POSITIVE),
        "log_every": Key(100, "int", POSITIVE),
        "eval_every": Key(0, "int", NON_NEGATIVE, doc="0: only at the end"),
        "checkpoint_every": Key(0, "int", NON_NEGATIVE,
                                doc="0: only at the end (and on pre-emption)"),
        "keep_checkpoints": Key(3, "int", AT_LEAST_1),
        "best_metric": Key("eval_top1_error", "str", optional=True,
                           doc="no best checkpoint"),
        "best_mode": Key("min", "str", _MIN_MAX),
        "label_smoothing": Key(0.0, "float", UNIT_OPEN),
        "precision": Key("float32", "str", ("float32", "bfloat16"),
                         doc="compute dtype; params stay fp32"),
        "step_impl": Key("jit", "str", ("jit", "shard_map")),
        "model_parallel": Key(1, "int", AT_LEAST_1),
        "nonfinite": Key("stop", "str", ("stop", "skip")),
        "log_grad_norms": Key(False, "bool"),
        "tensorboard": Key(True, "bool"),
        "quiet": Key(False, "bool"),
    },
    "transfer": {   # fine-tuning; see cnn/transfer.py
        "init_from": Key(None, "str", optional=True,
                         doc="workdir of a trained run to start from"),
        "checkpoint": Key("latest", "str", ("latest", "best")),
        "reinit": Key("auto", "str", doc="regex of params initialised afresh; auto: the head"),
        "freeze": Key("", "str", doc='regex of params kept fixed; "backbone": all but reinit'),
        "freeze_depth": Key(0, "int", NON_NEGATIVE),
        "backbone_lr": Key(1.0, "float", NON_NEGATIVE),
    },
}
OPEN_SECTIONS = ("model",)


def defaults() -> ml_collections.ConfigDict:
  """Every key a config may set, with its default (built from `SCHEMA`)."""
  return ml_collections.ConfigDict(_default_values(SCHEMA))


def _default_values(schema: dict[str, Any]) -> dict[str, Any]:
  return {name: (_default_values(entry) if isinstance(entry, dict)
                 else copy.deepcopy(entry.default)) for name, entry in schema.items()}


def schema_key(dotted: str) -> Optional[Key]:
  """The Key of ``section.key`` (or None: a section, or an open model argument)."""
  node: Any = SCHEMA
  for part in dotted.split("."):
    if not isinstance(node, dict) or part not in node:
      return None
    node = node[part]
  return node if isinstance(node, Key) else None


def _or(items: Sequence[Any]) -> str:
  """'a, b or c' of reprs (numbers plain)."""
  words = [repr(i) for i in items]
  return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} or {words[-1]}"


def describe(key: Key) -> str:
  """What a key accepts, in words: "a positive int", "None or 1 or 3", ..."""
  bounds = key.allowed.describe() if isinstance(key.allowed, Range) else ""
  if key.kind == "bool":
    what = "True or False"
  elif key.kind in ("int", "float"):
    noun = {"int": "an int", "float": "a finite float"}[key.kind]
    if isinstance(key.allowed, tuple):
      what = _or(key.allowed)
    elif key.allowed is POSITIVE:
      what = f"a positive {'int' if key.kind == 'int' else 'finite float'}"
    else:
      what = f"{noun} {bounds}".strip()
  elif key.kind == "str":
    what = f"one of {_or(key.allowed)}" if isinstance(key.allowed, tuple) else "a string"
  elif key.kind == "size":
    what = "a positive int n (for n x n) or a (height, width) pair of positive ints"
  elif key.kind == "ints":
    what = f"a list of ints {bounds}".strip()
  else:  # count_or_fraction
    what = "an int >= 0 (examples) or a float in [0, 1) (a fraction of train)"
  if key.optional:
    what = f"None ({key.doc or 'the default'}) or {what}"
  return what


def _is_int(value: Any) -> bool:
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
  return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_value(name: str, key: Key, value: Any) -> Any:
  """`value` checked against `key` and normalised (ints as float for float keys, an int
  image size as (n, n), lists as lists); raises ConfigError naming ``config.<name>``
  and what it accepts."""
  if value is None:
    if key.optional:
      return None
    raise _wrong(name, key, value)
  if key.kind == "bool":
    ok = isinstance(value, bool)
  elif key.kind == "int":
    ok = _is_int(value)
    value = int(value) if ok else value
  elif key.kind == "float":
    ok = _is_number(value) and math.isfinite(value)
    value = float(value) if ok else value
  elif key.kind == "str":
    ok = isinstance(value, str)
  elif key.kind == "size":
    value = (value, value) if _is_int(value) else value
    ok = (isinstance(value, (list, tuple)) and len(value) == 2
          and all(_is_int(v) and v >= 1 for v in value))
    value = (int(value[0]), int(value[1])) if ok else value
  elif key.kind == "ints":
    ok = isinstance(value, (list, tuple)) and all(_is_int(v) for v in value)
    value = [int(v) for v in value] if ok else value
    if ok and isinstance(key.allowed, Range):
      ok = all(v in key.allowed for v in value)
  else:  # count_or_fraction
    ok = (_is_int(value) and value >= 0) or (
        isinstance(value, float) and math.isfinite(value) and value in UNIT_OPEN)
  if not ok:
    raise _wrong(name, key, value)
  allowed = key.allowed() if callable(key.allowed) else key.allowed
  if key.kind in ("int", "float") and isinstance(allowed, Range) and value not in allowed:
    raise _wrong(name, key, value)
  if isinstance(allowed, (tuple, list)) and value not in allowed:
    if key.kind == "str":
      raise unknown_choice(name, value, allowed)
    raise _wrong(name, key, value)
  return value


def _wrong(name: str, key: Key, value: Any) -> ConfigError:
  kind = "" if value is None else f" ({type(value).__name__})"
  return ConfigError(f"config.{name} must be {describe(key)}, got {value!r}{kind}.")


# Keys that may change between a run and its resumption without making it another run.
RESUMABLE_KEYS = {"train.steps", "train.quiet", "train.log_every", "train.tensorboard"}


def load(spec: str, overrides: Iterable[str] = ()) -> ml_collections.ConfigDict:
  """The config of ``path.py[:preset]`` with ``section.key=value`` overrides applied.

  Anything wrong with the experiment file (it does not import, raises, has no
  get_config, returns something else than a ConfigDict, or does not know the preset)
  is a one-sentence ConfigError naming the file.
  """
  path, _, preset = spec.partition(":")
  module = _import_file(path)
  if not hasattr(module, "get_config"):
    raise ConfigError(f"{path} has no get_config() function; an experiment file must "
                      "define one.")
  presets = getattr(module, "PRESETS", None)
  if preset and presets is not None and preset not in presets:
    named = [p for p in presets if p]
    if not named:
      raise ConfigError(f"{path} has no presets; use it without ':{preset}'.")
    message = str(unknown_choice("preset", preset, named))
    raise ConfigError(message.replace(f"preset {preset!r};", f"preset {preset!r} of {path};", 1))
  try:
    config = module.get_config(preset) if preset else module.get_config()
  except ConfigError:
    raise
  except Exception as e:  # noqa: BLE001 -- any failure of the user's file: one sentence
    raise ConfigError(f"{path}: get_config({preset!r}) raised {_gist(e)}; fix the "
                      "experiment file or pick another preset.") from None
  if not isinstance(config, ml_collections.ConfigDict):
    raise ConfigError(f"{path}: get_config({preset!r}) returned {type(config).__name__}, "
                      "not a ConfigDict; start from cnn.config.defaults() and return it.")
  for override in overrides:
    apply_override(config, override)
  return config


def _gist(error: BaseException) -> str:
  """'TypeError: message' on one line (the first line of the message)."""
  text = str(error).strip().splitlines()
  return f"{type(error).__name__}: {text[0][:200]}" if text else type(error).__name__


def _import_file(path: str):
  """Imports an experiment file; its failures are one-sentence ConfigErrors."""
  file = pathlib.Path(path)
  if not file.is_file():
    raise ConfigError(f"Config file {path} does not exist; pass an experiments/*.py file.")
  spec = importlib.util.spec_from_file_location(f"_experiment_{file.stem}", file)
  if spec is None or spec.loader is None:
    raise ConfigError(f"Config file {path} is not a Python file; pass an "
                      "experiments/*.py file.")
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
  except SyntaxError as e:
    raise ConfigError(f"{path} has a syntax error at line {e.lineno} ({e.msg}); fix the "
                      "experiment file.") from None
  except ImportError as e:
    raise ConfigError(f"{path} does not import ({_gist(e)}); fix its imports or install "
                      "what it needs.") from None
  except ConfigError:
    raise
  except Exception as e:  # noqa: BLE001 -- any failure of the user's file: one sentence
    raise ConfigError(f"{path} raised {_gist(e)} while being imported; fix the "
                      "experiment file.") from None
  return module


def experiment_module(spec: str):
  """The imported experiment file of ``path.py[:preset]`` (for its get_sweep)."""
  return _import_file(spec.partition(":")[0])


def apply_override(config: ml_collections.ConfigDict, override: str) -> None:
  """Sets ``a.b=value``; the value is parsed as a Python literal and must fit the
  key's schema entry (or, for model arguments, the type already there). Unknown keys
  (outside ``model``) are refused with the choices."""
  key, sep, raw = override.partition("=")
  key = key.removeprefix("--").removeprefix("config.")
  if not sep:
    raise ConfigError(f"Override {override!r} must look like --config.{key}=VALUE.")
  *parents, leaf = key.split(".")
  node = config
  for i, part in enumerate(parents):
    if part not in node or not isinstance(node[part], ml_collections.ConfigDict):
      raise unknown_choice("config section", ".".join(parents[:i + 1]), node.keys())
    node = node[part]
  value = _parse(raw)
  if leaf not in node:
    if parents[:1] == ["model"]:  # model keys are the model's own arguments
      node[leaf] = value
      return
    raise unknown_choice("config key", key, [f"{'.'.join(parents)}.{k}" for k in node.keys()])
  entry = schema_key(key)
  value = check_value(key, entry, value) if entry else _coerce(key, node[leaf], value)
  with node.ignore_type():   # e.g. an int image size stored as an (n, n) tuple
    node[leaf] = value


def _parse(raw: str) -> Any:
  try:
    return ast.literal_eval(raw)
  except (ValueError, SyntaxError):
    return raw  # a bare word: a string


def _coerce(key: str, current: Any, value: Any) -> Any:
  """A model argument's new value, which must have the type of its current one."""
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
  """Checks a whole config against `SCHEMA`: unknown sections or keys, types, choices
  and ranges, and normalises values in place (``data.image_size=40`` -> (40, 40)).
  Names of models, data sources, optimizers and schedules are checked by the
  registries that own them when the run is built."""
  _check_section(config, SCHEMA, "")
  if "name" not in config.get("model", {}):
    raise ConfigError("config.model.name is missing; name a registered model.")
  canvas = config.get("data", {}).get("canvas", {})
  low, high = canvas.get("min_digits", 1), canvas.get("max_digits", 3)
  if low > high:
    raise ConfigError(f"config.data.canvas.min_digits ({low}) must be <= "
                      f"data.canvas.max_digits ({high}).")


def _check_section(node: ml_collections.ConfigDict, schema: dict[str, Any],
                   prefix: str) -> None:
  """Checks the keys of one section (recursively); absent keys keep their defaults."""
  for name in node.keys():
    if name not in schema and prefix.rstrip(".") not in OPEN_SECTIONS:
      kind = "config section" if not prefix else "config key"
      choices = [f"{prefix}{k}" for k in schema] if prefix else list(schema)
      raise unknown_choice(kind, f"{prefix}{name}" if prefix else name, choices)
  for name, entry in schema.items():
    if name not in node:
      continue
    dotted = f"{prefix}{name}"
    if isinstance(entry, dict):
      if not isinstance(node[name], ml_collections.ConfigDict):
        raise ConfigError(f"config.{dotted} must be a section with keys "
                          f"{', '.join(entry)}, got {node[name]!r}.")
      _check_section(node[name], entry, dotted + ".")
      continue
    value = check_value(dotted, entry, node[name])
    if value is not node[name]:
      with node.ignore_type():
        node[name] = value


def with_defaults(saved: dict[str, Any]) -> dict[str, Any]:
  """A saved config.json read as a full config: keys added to `defaults()` since it
  was written take their default values (so old runs stay resumable)."""
  return _merged(defaults().to_dict(), _migrated(saved))


def _merged(full: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
  """`full` with `values` written over it, section by section at every depth."""
  out = dict(full)
  for key, value in values.items():
    if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "model":
      out[key] = _merged(out[key], value)
    else:
      out[key] = value
  return out


def _migrated(saved: dict[str, Any]) -> dict[str, Any]:
  """Configs of earlier versions in today's keys: the segmentation runs' own
  ``segmentation`` section became ``task`` and ``data.canvas``."""
  if "segmentation" not in saved:
    return saved
  saved = dict(saved)
  section = saved.pop("segmentation") or {}
  canvas = {("size" if k == "canvas_size" else k): v for k, v in section.items()}
  saved["task"] = "segmentation"
  saved["data"] = {**saved.get("data", {}),
                   "canvas": {**saved.get("data", {}).get("canvas", {}), **canvas}}
  return saved


def complete(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config` with every key of `defaults()` present (a config built by hand may leave
  keys out), so the engine reads ``config.train.x`` and never restates a default."""
  return ml_collections.ConfigDict(with_defaults(config.to_dict()))


def load_saved(workdir) -> ml_collections.ConfigDict:
  """The complete config of a run from its workdir's config.json."""
  saved = pathlib.Path(workdir) / "config.json"
  if not saved.exists():
    raise ConfigError(f"{workdir} holds no config.json; pass the workdir of a run made "
                      "by scripts.train.")
  try:
    return ml_collections.ConfigDict(with_defaults(json.loads(saved.read_text())))
  except (OSError, ValueError):
    raise ConfigError(f"{saved} is unreadable; pass the workdir of a run made by "
                      "scripts.train.") from None


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

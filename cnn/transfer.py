"""Transfer learning: start from a trained run, replace the head, freeze, fine-tune.

The course's recipe (optimisation lecture, "Pre-trained models"): truncate the last
layer of a pre-trained network, freeze the remaining weights, add a new classifier and
train it, then fine-tune the whole network or its deepest layers with a smaller
learning rate; or use the network as a fixed feature extractor.

Everything is driven by the ``transfer`` section of a config, so fine-tuned runs are
ordinary runs of the engine (resumable, evaluated, checkpointed):

    transfer.init_from     workdir of a trained run whose parameters start this one
    transfer.checkpoint    "latest" or "best" checkpoint of that run
    transfer.reinit        regex of the parameter paths that are NOT copied but freshly
                           initialised (the new head); "auto": the last layer that has
                           parameters (LeNet-5's fc5, a ResNet's head); "": none
    transfer.freeze        regex of parameter paths kept fixed; "backbone": everything
                           that is not re-initialised (train the new head only)
    transfer.freeze_depth  also freeze the first k top-level layers or blocks that have
                           parameters, in execution order (conv1, conv2, ... )
    transfer.backbone_lr   learning-rate multiplier of the trainable parameters that are
                           not re-initialised (e.g. 0.1: the copied layers learn 10x
                           slower than the new head)

A parameter path is its module path and name joined by "/", e.g. ``conv1/kernel`` or
``stage1_block0/bn1/bn/scale``; patterns are matched with `re.search`.

The optimizer is split into groups with `optax.multi_transform`: ``head`` (the
re-initialised parameters) gets the configured rule, ``backbone`` the same rule with
its updates scaled by `backbone_lr` (for SGD, momentum and Adam alike this is the same
as a learning rate `backbone_lr` times smaller), ``frozen`` gets `optax.set_to_zero`,
so frozen parameters stay bit-identical. Batch-norm running statistics of frozen
layers still follow the batches (they are statistics, not parameters).

Feature extraction: `capture` returns the input or output of any named layer, e.g.
the penultimate activations (the input of the head: LeNet-5's 84 ReLU units after
fc4) that `extract_features` writes for a whole split.
"""
from __future__ import annotations

import functools
import pathlib
import re
import sys
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from cnn.errors import ConfigError, unknown_choice

HEAD, BACKBONE, FROZEN = "head", "backbone", "frozen"
CHECKPOINTS = ("latest", "best")
AUTO, FREEZE_BACKBONE = "auto", "backbone"


# ----------------------------------------------------------------------------------
# Paths and the order in which layers run
# ----------------------------------------------------------------------------------

def path_name(path: Sequence[Any]) -> str:
  """'conv1/kernel' from a jax key path or a tuple of names."""
  return "/".join(str(getattr(k, "key", k)) for k in path)


def param_paths(params: Any) -> list[str]:
  """Every leaf of a parameter tree as a 'module/.../name' path."""
  return [path_name(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]


@functools.lru_cache(maxsize=32)
def _call_order(model: nn.Module, input_shape: tuple[int, ...]) -> tuple[tuple[str, ...], ...]:
  """Module paths in the order their __call__ first runs (traced, nothing computed)."""
  order: list[tuple[str, ...]] = []

  def record(f, args, kwargs, context):
    path = tuple(context.module.path)
    if context.method_name == "__call__" and path and path not in order:
      order.append(path)
    return f(*args, **kwargs)

  def init(x):
    with nn.intercept_methods(record):
      return model.init({"params": jax.random.key(0), "dropout": jax.random.key(1)},
                        x, train=False)

  jax.eval_shape(init, jax.ShapeDtypeStruct((1, *input_shape[-3:]), jnp.float32))
  return tuple(order)


@functools.lru_cache(maxsize=32)
def _abstract_params(model: nn.Module, input_shape: tuple[int, ...]) -> Any:
  return jax.eval_shape(
      lambda x: model.init({"params": jax.random.key(0), "dropout": jax.random.key(1)},
                           x, train=False),
      jax.ShapeDtypeStruct((1, *input_shape[-3:]), jnp.float32))["params"]


def layer_order(model: nn.Module, input_shape: Sequence[int]) -> list[str]:
  """Top-level layers (or blocks) that own parameters, in execution order.

  For LeNet-5: conv1, conv2, conv3, fc4, fc5. `input_shape` is (H, W, C) or NHWC.
  """
  owners = set(_abstract_params(model, tuple(input_shape)[-3:]).keys())
  seen: list[str] = []
  for path in _call_order(model, tuple(input_shape)[-3:]):
    if path[0] in owners and path[0] not in seen:
      seen.append(path[0])
  # Parameters of modules evaluation never calls (auxiliary heads) come last.
  return seen + sorted(owners - set(seen))


def module_paths(model: nn.Module, input_shape: Sequence[int]) -> list[str]:
  """Every module that runs, at any depth, as 'a/b' paths in execution order."""
  return ["/".join(p) for p in _call_order(model, tuple(input_shape)[-3:])]


def head_name(model: nn.Module, input_shape: Sequence[int]) -> str:
  """The classifier: the last top-level layer with parameters that runs."""
  order = layer_order(model, input_shape)
  run = {p[0] for p in _call_order(model, tuple(input_shape)[-3:])}
  ran = [name for name in order if name in run]
  if not ran:
    raise ConfigError("The model has no parameters, so it has no head to replace.")
  return ran[-1]


# ----------------------------------------------------------------------------------
# Parameter groups and the optimizer
# ----------------------------------------------------------------------------------

def _compile(pattern: str, key: str) -> Optional[re.Pattern]:
  if not pattern:
    return None
  try:
    return re.compile(pattern)
  except re.error as e:
    raise ConfigError(f"transfer.{key}={pattern!r} is not a valid regular expression "
                      f"({e}); write a Python regex such as 'conv1|conv2'.") from None


def reinit_pattern(reinit: str, head: Optional[str]) -> Optional[re.Pattern]:
  """The compiled `transfer.reinit`; "auto" means the head's parameters."""
  if reinit == AUTO:
    return re.compile(f"^{re.escape(head)}(/|$)") if head else None
  return _compile(reinit, "reinit")


def param_labels(params: Any, *, reinit: Optional[re.Pattern] = None,
                 freeze: str = "", frozen_layers: Sequence[str] = ()) -> Any:
  """The tree of group names ('head', 'backbone', 'frozen') matching `params`.

  A parameter is 'head' if its path matches `reinit`, 'frozen' if it matches `freeze`
  (or `freeze` is "backbone" and it is not head) or lies in one of `frozen_layers`,
  and 'backbone' otherwise. A re-initialised parameter cannot be frozen.
  """
  freeze_re = None if freeze == FREEZE_BACKBONE else _compile(freeze, "freeze")
  frozen_layers = set(frozen_layers)

  def label(path, _):
    name = path_name(path)
    is_head = bool(reinit is not None and reinit.search(name))
    frozen = (name.split("/")[0] in frozen_layers
              or (freeze == FREEZE_BACKBONE and not is_head)
              or bool(freeze_re is not None and freeze_re.search(name)))
    if is_head and frozen:
      raise ConfigError(
          f"Parameter {name} is both re-initialised (transfer.reinit) and frozen "
          "(transfer.freeze / freeze_depth), so it would stay random; exclude it from "
          "one of them.")
    return FROZEN if frozen else HEAD if is_head else BACKBONE

  return jax.tree_util.tree_map_with_path(label, params)


def make_optimizer(tx: optax.GradientTransformation, labels: Any,
                   backbone_lr: float = 1.0) -> optax.GradientTransformation:
  """`tx` for the head, `tx` scaled by `backbone_lr` for the backbone, zero updates
  for frozen parameters. `labels` is a tree like the params or a function of them."""
  if backbone_lr < 0:
    raise ConfigError(f"transfer.backbone_lr must be >= 0, got {backbone_lr}.")
  backbone = tx if backbone_lr == 1.0 else optax.chain(tx, optax.scale(backbone_lr))
  return optax.multi_transform({HEAD: tx, BACKBONE: backbone,
                                FROZEN: optax.set_to_zero()}, labels)


def _section(config) -> dict[str, Any]:
  """The ``transfer`` section with `cnn.config.defaults()` for the keys not set."""
  from cnn import config as config_lib  # pylint: disable=import-outside-toplevel
  return config_lib.complete(config).transfer.to_dict()


def check_section(t: dict[str, Any]) -> None:
  """One-sentence errors for a bad ``transfer`` section."""
  if t["checkpoint"] not in CHECKPOINTS:
    raise unknown_choice("transfer.checkpoint", t["checkpoint"], CHECKPOINTS)
  depth = t["freeze_depth"]
  if isinstance(depth, bool) or not isinstance(depth, int) or depth < 0:
    raise ConfigError(f"transfer.freeze_depth must be an int >= 0, got {depth!r}.")
  lr = t["backbone_lr"]
  if isinstance(lr, bool) or not isinstance(lr, (int, float)) or lr < 0:
    raise ConfigError(f"transfer.backbone_lr must be a number >= 0, got {lr!r}.")
  for key in ("reinit", "freeze"):
    if not isinstance(t[key], str):
      raise ConfigError(f"transfer.{key} must be a string (a regex), got {t[key]!r}.")
  if t["reinit"] != AUTO:
    _compile(t["reinit"], "reinit")
  if t["freeze"] != FREEZE_BACKBONE:
    _compile(t["freeze"], "freeze")


def groups_active(t: dict[str, Any]) -> bool:
  """Whether the config splits the parameters into optimizer groups at all."""
  return bool(t["freeze"]) or t["freeze_depth"] > 0 or float(t["backbone_lr"]) != 1.0


def wrap_optimizer(tx: optax.GradientTransformation, config, model: nn.Module,
                   input_shape: Sequence[int]) -> optax.GradientTransformation:
  """The run's optimizer with the ``transfer`` section's groups (unchanged without)."""
  t = _section(config)
  check_section(t)
  if t["init_from"] and not (pathlib.Path(t["init_from"]) / "config.json").is_file():
    raise ConfigError(f"transfer.init_from={t['init_from']!r} holds no run (no "
                      "config.json); pass the workdir of a trained run.")
  if not groups_active(t):
    return tx
  order = layer_order(model, input_shape)
  if t["freeze_depth"] > len(order):
    raise ConfigError(
        f"transfer.freeze_depth={t['freeze_depth']} exceeds the {len(order)} layers with "
        f"parameters ({', '.join(order)}); use at most {len(order)}.")
  head = head_name(model, input_shape)
  reinit = reinit_pattern(t["reinit"], head)
  labels = functools.partial(param_labels, reinit=reinit, freeze=t["freeze"],
                             frozen_layers=tuple(order[:t["freeze_depth"]]))
  labels(_abstract_params(model, tuple(input_shape)[-3:]))  # conflicts surface here
  return make_optimizer(tx, labels, float(t["backbone_lr"]))


# ----------------------------------------------------------------------------------
# Reading a trained run and starting from it
# ----------------------------------------------------------------------------------

def read_variables(workdir: str | pathlib.Path, *, best: bool = False
                   ) -> tuple[dict[str, Any], dict[str, Any], int]:
  """(params, batch_stats, step) of a run's latest (or best) checkpoint as numpy.

  Only these two items are read, without building the run (its data, its optimizer),
  so any run of this codebase can start another one.
  """
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  from cnn import checkpoint as ckpt_lib  # pylint: disable=import-outside-toplevel
  from cnn import config as config_lib  # pylint: disable=import-outside-toplevel
  workdir = pathlib.Path(workdir)
  if not workdir.is_dir():
    raise ConfigError(f"transfer.init_from={str(workdir)!r} is not a directory; pass the "
                      "workdir of a trained run.")
  config = config_lib.load_saved(workdir)
  metric = config.train.best_metric
  checkpointer = ckpt_lib.Checkpointer(workdir, best_metric=metric,
                                       best_mode=config.train.best_mode,
                                       read_only=True)
  if best:
    steps = [checkpointer.best.best_step()] if (
        checkpointer.best is not None and checkpointer.best.all_steps()) else []
    folder = workdir / "best"
  else:
    steps = list(reversed(checkpointer.steps()))
    folder = workdir / "checkpoints"
  handler = ocp.PyTreeCheckpointHandler()
  for step in steps:
    path = (folder / str(step) / "default").resolve()
    try:
      tree = handler.metadata(path).tree
      wanted = {k: tree.get(k, {}) for k in ("params", "batch_stats")}
      item = jax.tree.map(lambda m: np.zeros(m.shape, m.dtype), wanted)
      args = jax.tree.map(lambda m: ocp.RestoreArgs(restore_type=np.ndarray), wanted)
      with ocp.Checkpointer(ocp.PyTreeCheckpointHandler()) as reader:
        out = reader.restore(path, args=ocp.args.PyTreeRestore(
            item=item, restore_args=args, partial_restore=True))
      return out["params"], out.get("batch_stats") or {}, int(step)
    except Exception as e:  # noqa: BLE001 -- an unreadable checkpoint: try the previous
      print(f"warning: checkpoint {step} in {folder} is unreadable "
            f"({str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__}"
            "); trying the previous one.", file=sys.stderr)
  raise ConfigError(f"{workdir} has no readable {'best ' if best else ''}checkpoint; "
                    "train it first with scripts.train.")


def merge_params(target: Any, source: Any, reinit: Optional[re.Pattern], *,
                 what: str = "parameter") -> tuple[Any, list[str]]:
  """`target` with every leaf not matching `reinit` replaced by `source`'s.

  Returns the merged tree and the copied paths. A leaf to copy that is missing from
  `source` or differs in shape is a ConfigError naming it.
  """
  flat_source = {path_name(p): v for p, v in jax.tree_util.tree_flatten_with_path(source)[0]}
  copied = []

  def pick(path, leaf):
    name = path_name(path)
    if reinit is not None and reinit.search(name):
      return leaf
    if name not in flat_source:
      raise ConfigError(
          f"The {what} {name} of this model is not in the checkpoint; add it to "
          "transfer.reinit to initialise it afresh.")
    value = flat_source[name]
    if tuple(value.shape) != tuple(leaf.shape):
      raise ConfigError(
          f"The {what} {name} has shape {tuple(value.shape)} in the checkpoint but "
          f"{tuple(leaf.shape)} here; add it to transfer.reinit to initialise it afresh.")
    copied.append(name)
    return jax.device_put(np.asarray(value, leaf.dtype), leaf.sharding) if hasattr(
        leaf, "sharding") else jnp.asarray(value, leaf.dtype)

  return jax.tree_util.tree_map_with_path(pick, target), copied


def warm_start(state, run):
  """The fresh train state of `run` with the parameters (and batch-norm statistics)
  of ``transfer.init_from`` copied in, except the re-initialised ones.

  The optimizer state is kept as initialised: every optax rule used here initialises
  from the parameters' shapes only (zero moments), so it is already right.
  """
  t = _section(run.config)
  if not t["init_from"]:
    return state
  check_section(t)
  params, stats, step = read_variables(t["init_from"], best=t["checkpoint"] == "best")
  head = head_name(run.model, run.input_shape)
  reinit = reinit_pattern(t["reinit"], head)
  new_params, copied = merge_params(state.params, params, reinit)
  new_stats, _ = merge_params(state.batch_stats, stats, reinit, what="batch statistic")
  fresh = [p for p in param_paths(state.params) if p not in copied]
  print(f"transfer: {len(copied)} parameter arrays from step {step} of "
        f"{t['init_from']}; initialised afresh: {', '.join(fresh) or 'none'}",
        file=sys.stderr)
  return state.replace(params=new_params, batch_stats=new_stats)


# ----------------------------------------------------------------------------------
# Features: what a layer sees or produces
# ----------------------------------------------------------------------------------

def capture(model: nn.Module, variables: Any, images: jax.Array, layer: str, *,
            what: str = "output") -> jax.Array:
  """The output (or first input, ``what="input"``) of the module at path `layer`
  ('conv1', 'stage2_block0/conv1') on `images`, in evaluation mode.

  The input of the head is the penultimate representation: LeNet-5's 84 activations
  after fc4 and its ReLU.
  """
  if what not in ("input", "output"):
    raise unknown_choice("capture point", what, ("input", "output"))
  target = tuple(layer.split("/"))
  seen: list[str] = []
  found: list[jax.Array] = []

  def record(f, args, kwargs, context):
    out = f(*args, **kwargs)
    path = tuple(context.module.path)
    if context.method_name == "__call__" and path:
      seen.append("/".join(path))
      if path == target and not found:
        found.append(args[0] if what == "input" else out)
    return out

  with nn.intercept_methods(record):
    model.apply(variables, images, train=False)
  if not found:
    names = list(dict.fromkeys(seen))
    raise ConfigError(f"No layer {layer!r} runs in this model; layers are: "
                      f"{', '.join(names[:40])}{' ...' if len(names) > 40 else ''}.")
  out = found[0]
  return out[0] if isinstance(out, (tuple, list)) else out


def penultimate(model: nn.Module, variables: Any, images: jax.Array,
                input_shape: Sequence[int]) -> jax.Array:
  """The features the classifier head receives (the network as a feature extractor)."""
  return capture(model, variables, images, head_name(model, input_shape), what="input")


SPLITS = ("train", "eval", "test")


def split_features(run, state, split, *, layer: Optional[str] = None,
                   what: str = "output", batch_size: int = 256) -> dict[str, np.ndarray]:
  """Features of every example of `split` (a cnn.data Split) under the run's model.

  Images are normalised with the run's own training statistics, as the network saw
  its inputs. Without `layer`: the penultimate features (the head's input).
  """
  from cnn import data as data_lib  # pylint: disable=import-outside-toplevel
  if batch_size <= 0:
    raise ConfigError(f"The batch size must be positive, got {batch_size}.")
  if layer is None:
    layer, what = head_name(run.model, run.input_shape), "input"
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  fn = jax.jit(lambda v, x: capture(run.model, v, x, layer, what=what))
  ds = run.dataset
  feats, labels = [], []
  for images, targets, mask in data_lib.eval_batches(split, batch_size, mean=ds.mean,
                                                     std=ds.std, out_size=run.out_size):
    keep = mask > 0
    feats.append(np.asarray(fn(variables, images))[keep])
    labels.append(np.asarray(targets)[keep])
  return {"features": np.concatenate(feats).astype(np.float32),
          "labels": np.concatenate(labels).astype(np.int32), "layer": np.asarray(layer)}

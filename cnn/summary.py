"""Per-layer summary of a model: output shape, parameters, multiply-accumulates, activations.

    rows = summarize(cnn.models.create("vgg16"), (224, 224, 3))
    print(render(rows, "table"))          # or "markdown", "csv", "json"
    totals(rows).params                   # 138,357,544

Like the course's VGG slide ("memory: 224x224x64 = 3.2M, params: (3x3x3)x64 = 1,728",
"TOTAL memory: ... / image (only forward!)"), one row per layer in execution order,
per image, then totals.

How rows are found. The model is traced abstractly (`jax.eval_shape` for the variables,
`jax.make_jaxpr` for the forward pass: nothing is allocated or computed, so ImageNet
models cost a trace, not a forward pass), in evaluation mode, batch 1:

- Every call of a known leaf layer (`LEAF_TYPES`: cnn.layers Conv, ConvTranspose,
  BatchNorm, MaxPool, AvgPool, GlobalAvgPool, LocalResponseNorm, Activation, Flatten,
  Dropout, and flax's Conv, ConvTranspose, Dense, BatchNorm, LayerNorm, GroupNorm,
  Dropout) is a row, found with `flax.linen.intercept_methods`. Its name is the module
  path ("stage1_block0/conv1"), its parameters those of its own variables.
- Pooling and activations written as plain functions (`layers.max_pool`, `nn.relu`,
  `jnp.tanh`, `layers.global_avg_pool`, ...) are rows too: every leaf call runs inside
  a `jax.named_scope` marker, and the operations of the traced program outside all
  markers are read off the jaxpr: reduce_window max/sum over spatial windows
  (max/average pooling) or over channels (`layers.local_response_norm`), a sum or max
  over the two spatial axes of an NHWC map (global pooling), and the activation
  functions of `jax.nn` and `jnp.tanh`. They are named after the enclosing module with
  flax's numbering ("stage1_block0/relu", "stage1_block0/relu_1"). Anything else outside
  a layer (residual additions, concatenation, reshapes, padding) is not a row.
- Parameters created directly by a composite module (``self.param`` outside any leaf)
  get a row of their own, named after that module, so the total is always every
  parameter of the model. A module called twice (shared weights) counts its parameters
  once, in its first row; its later calls are rows "path (call 2)", ... with their MACs.
  Parameters of modules the evaluation pass never calls (GoogLeNet's auxiliary
  classifiers) are rows "(not run in evaluation)" at the end, without MACs.
- Not recognised: activations written out from primitives rather than called from
  `jax.nn` (`jnp.maximum(x, 0)`, or GELU's tanh form, which shows as its Tanh) and
  softmax, which `jax.nn` traces inline.

What the columns count (per image):

- params: every entry of the 'params' collection (weights, biases, BN scale and shift);
  BN running statistics are state, not parameters (as in PyTorch and the papers).
- MACs, multiply-accumulates, the papers' "multiply-adds" (He et al.'s "FLOPs"):
  convolution H_out * W_out * C_out * (K_h * K_w * C_in / groups), i.e. output
  positions x kernel size; dense in * out (per output position for a Dense applied to
  a map); transposed convolution H_in * W_in * C_in * K_h * K_w * C_out, every input
  pixel scattering the whole kernel (fvcore's count; with cropping padding a few of
  those products fall outside the output and are still counted). Biases, BN, pooling,
  LRN and activations count 0: they are not multiply-adds of the papers' counts.
- activations: elements of the layer's output; bytes at `bytes_per_activation` each
  (float32: 4). The input image is the first row, as on the slide.
- in place: elementwise activations, dropout and flatten rows produce no new tensor in
  the slide's accounting (ReLU is applied in place on the CONV's output; the slide's
  CONV3-64 row is conv + ReLU), so `totals` leaves them out of the activation total.
  Their own column still shows their output size.
"""
from __future__ import annotations

import csv
import dataclasses
import inspect
import io
import json
import math
from collections.abc import Mapping
from typing import Any, Iterable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.extend import core as jax_core

from cnn import layers
from cnn.errors import ConfigError, unknown_choice

BYTES_PER_FLOAT32 = 4
FORMATS = ("table", "markdown", "csv", "json")

# Convolutions: MACs = output positions x kernel size.
CONV_TYPES = (layers.Conv, nn.Conv)
# Transposed convolutions: MACs = input positions x kernel size.
TRANSPOSED_CONV_TYPES = (layers.ConvTranspose, nn.ConvTranspose)
DENSE_TYPES = (nn.Dense,)
# Layers whose output takes no new memory in the slide's accounting.
IN_PLACE_TYPES = (layers.Activation, layers.Dropout, nn.Dropout, layers.Flatten)
LEAF_TYPES = CONV_TYPES + TRANSPOSED_CONV_TYPES + DENSE_TYPES + IN_PLACE_TYPES + (
    layers.BatchNorm, nn.BatchNorm, nn.LayerNorm, nn.GroupNorm, layers.MaxPool,
    layers.AvgPool, layers.GlobalAvgPool, layers.LocalResponseNorm)

# Activation functions recognised in the traced program: jitted jax.nn functions by
# their name, and primitives that are activations on their own.
FUNCTION_ACTIVATIONS = {
    "relu": "ReLU", "relu6": "ReLU6", "leaky_relu": "LeakyReLU", "elu": "ELU",
    "celu": "CELU", "selu": "SELU", "gelu": "GELU", "silu": "SiLU", "swish": "SiLU",
    "hard_swish": "HardSwish", "hard_silu": "HardSwish", "hard_sigmoid": "HardSigmoid",
    "hard_tanh": "HardTanh", "sigmoid": "Sigmoid", "softplus": "Softplus",
    "softmax": "Softmax", "log_softmax": "LogSoftmax", "mish": "Mish",
}
PRIMITIVE_ACTIVATIONS = {"tanh": "Tanh", "logistic": "Sigmoid"}
# Primitives whose sub-programs run a variable number of times: not looked into.
_OPAQUE_PRIMITIVES = ("scan", "while", "cond")

_SLOT_SCOPE = "summary_slot_"
_MODULE_SCOPE = "summary_module_"


@dataclasses.dataclass(frozen=True)
class Row:
  """One layer of the summary; shapes and counts are per image (no batch axis)."""
  name: str
  layer_type: str
  input_shape: tuple[int, ...]
  output_shape: tuple[int, ...]
  params: int
  macs: int
  activations: int
  activation_bytes: int
  in_place: bool = False


@dataclasses.dataclass(frozen=True)
class Totals:
  """Sums over the rows; activations leave out in-place rows (see the module doc)."""
  params: int
  macs: int
  activations: int
  activation_bytes: int

  @property
  def gmacs(self) -> float:
    return self.macs / 1e9


def totals(rows: Iterable[Row]) -> Totals:
  """Total parameters, MACs and forward activations (elements and bytes) per image."""
  rows = list(rows)
  stored = [r for r in rows if not r.in_place]
  return Totals(params=sum(r.params for r in rows), macs=sum(r.macs for r in rows),
                activations=sum(r.activations for r in stored),
                activation_bytes=sum(r.activation_bytes for r in stored))


# ----------------------------------------------------------------------------------
# Recording module calls
# ----------------------------------------------------------------------------------

@dataclasses.dataclass
class _Slot:
  """A row found by interception; placed in execution order from the jaxpr."""
  name: str
  layer_type: str
  input_shape: tuple[int, ...]
  output_shape: tuple[int, ...]
  params: int
  macs: int
  in_place: bool
  activations: Optional[int] = None   # None: the size of the output


def _module_path(module: nn.Module) -> str:
  return "/".join(module.scope.path) if module.scope is not None else ""


def _first_array(tree: Any) -> Optional[Any]:
  for leaf in jax.tree.leaves(tree):
    if hasattr(leaf, "shape"):
      return leaf
  return None


def _size(shape: Sequence[int]) -> int:
  return math.prod(int(d) for d in shape)


def _param_count(tree: Any) -> int:
  return sum(_size(leaf.shape) for leaf in jax.tree.leaves(tree))


def _kernel(params: Any) -> Optional[Any]:
  """The layer's 'kernel' parameter, at any depth (cnn ConvTranspose nests flax's)."""
  if not isinstance(params, Mapping):
    return None
  if "kernel" in params and not isinstance(params["kernel"], Mapping):
    return params["kernel"]
  for value in params.values():
    found = _kernel(value)
    if found is not None:
      return found
  return None


def layer_macs(module: nn.Module, kernel_shape: Optional[Sequence[int]],
               input_shape: Sequence[int], output_shape: Sequence[int]) -> int:
  """Multiply-accumulates of one call of `module` on one image (shapes without batch).

  Convolution and dense: output positions x kernel size (= H_out W_out C_out
  K_h K_w C_in / groups, or in * out). Transposed convolution: input positions x kernel
  size (= H_in W_in C_in K_h K_w C_out). Anything else: 0.
  """
  if kernel_shape is None:
    return 0
  kernel = _size(kernel_shape)
  if isinstance(module, TRANSPOSED_CONV_TYPES):
    return _size(input_shape[:-1]) * kernel
  if isinstance(module, CONV_TYPES + DENSE_TYPES):
    return _size(output_shape[:-1]) * kernel
  return 0


def _layer_type(module: nn.Module, in_channels: Optional[int]) -> str:
  if isinstance(module, layers.Activation):
    return FUNCTION_ACTIVATIONS.get(module.fn, module.fn)
  groups = getattr(module, "groups", None) or getattr(module, "feature_group_count", 1)
  if isinstance(module, CONV_TYPES) and groups > 1:
    kind = "depthwise" if groups == in_channels else f"groups={groups}"
    return f"{type(module).__name__} ({kind})"
  return type(module).__name__


class _Recorder:
  """Method interceptor: one slot per leaf call (and per composite with own params)."""

  def __init__(self):
    self.slots: list[Optional[_Slot]] = []
    self.containers: list[str] = []
    self.counted: set[str] = set()     # paths whose parameters have a row
    self.leaf_paths: set[str] = set()  # ... with all parameters below them
    self.calls: dict[str, int] = {}
    self.inside_leaf = 0

  def _open_slot(self) -> int:
    """Reserves the next slot and leaves a marker operation in the traced program."""
    index = len(self.slots)
    self.slots.append(None)
    with jax.named_scope(f"{_SLOT_SCOPE}{index}"):
      # Unused, but traced: it places the slot in the program's order even when the
      # layer itself adds no operation (dropout in evaluation is the identity).
      jnp.zeros((), jnp.float32) + 0.0  # pylint: disable=expression-not-assigned
    return index

  def _own_params(self, module: nn.Module, path: str, whole_subtree: bool) -> int:
    if path in self.counted:
      return 0
    params = module.variables.get("params", {})
    if not whole_subtree:
      params = {k: v for k, v in params.items() if not isinstance(v, Mapping)}
    count = _param_count(params)
    if count:
      self.counted.add(path)
      if whole_subtree:
        self.leaf_paths.add(path)
    return count

  def _row_name(self, module: nn.Module, path: str) -> str:
    """The module path; "path (call n)" for the n-th call of a shared module."""
    name = path or type(module).__name__
    self.calls[name] = self.calls.get(name, 0) + 1
    return name if self.calls[name] == 1 else f"{name} (call {self.calls[name]})"

  def __call__(self, next_fun, args, kwargs, context):
    if context.method_name != "__call__" or self.inside_leaf:
      return next_fun(*args, **kwargs)
    module = context.module
    path = _module_path(module)
    x = _first_array((args, kwargs))
    in_shape = tuple(x.shape[1:]) if x is not None else ()
    if isinstance(module, LEAF_TYPES):
      index = self._open_slot()
      with jax.named_scope(f"{_SLOT_SCOPE}{index}"):
        self.inside_leaf += 1
        try:
          out = next_fun(*args, **kwargs)
        finally:
          self.inside_leaf -= 1
      y = _first_array(out)
      out_shape = tuple(y.shape[1:]) if y is not None else ()
      kernel = _kernel(module.variables.get("params", {}))
      self.slots[index] = _Slot(
          name=self._row_name(module, path),
          layer_type=_layer_type(module, in_shape[-1] if in_shape else None),
          input_shape=in_shape, output_shape=out_shape,
          params=self._own_params(module, path, whole_subtree=True),
          macs=layer_macs(module, None if kernel is None else kernel.shape,
                          in_shape, out_shape),
          in_place=isinstance(module, IN_PLACE_TYPES))
      return out
    # A composite: its children are recorded on their own; its scope names the
    # functions (relu, pooling) it applies itself.
    scope = len(self.containers)
    self.containers.append(path)
    with jax.named_scope(f"{_MODULE_SCOPE}{scope}"):
      index = self._open_slot()
      out = next_fun(*args, **kwargs)
    own = self._own_params(module, path, whole_subtree=False)
    if own:
      # Parameters, not a layer: no output of its own.
      self.slots[index] = _Slot(
          name=path or type(module).__name__,
          layer_type=f"{type(module).__name__} (own parameters)", input_shape=(),
          output_shape=(), params=own, macs=0, in_place=False, activations=0)
    return out


# ----------------------------------------------------------------------------------
# Reading the traced program
# ----------------------------------------------------------------------------------

@dataclasses.dataclass
class _FunctionOp:
  """A pooling or activation applied as a function, outside every recorded layer."""
  snake: str             # base of the row name: relu, max_pool, ...
  layer_type: str
  container: Optional[int]
  input_shape: tuple[int, ...]
  output_shape: tuple[int, ...]
  in_place: bool


def _scopes(eqn) -> tuple[str, ...]:
  return tuple(s for s in str(eqn.source_info.name_stack).split("/") if s)


def _innermost(stack: Sequence[str], prefix: str) -> Optional[int]:
  for scope in reversed(stack):
    if scope.startswith(prefix) and scope[len(prefix):].isdigit():
      return int(scope[len(prefix):])
  return None


def _sub_jaxpr(eqn) -> Optional[Any]:
  if eqn.primitive.name in _OPAQUE_PRIMITIVES:
    return None
  for key in ("jaxpr", "call_jaxpr", "fun_jaxpr"):
    sub = eqn.params.get(key)
    if sub is not None:
      return getattr(sub, "jaxpr", sub)
  return None


def _classify(eqn, constant: set) -> Optional[tuple[str, str, bool]]:
  """(row name, layer type, in place) if `eqn` is a pooling or an activation."""
  prim = eqn.primitive.name
  name = eqn.params.get("name")
  if prim in ("jit", "pjit", "custom_jvp_call", "custom_vjp_call") and (
      name in FUNCTION_ACTIVATIONS):
    return name, FUNCTION_ACTIVATIONS[name], True
  if prim in PRIMITIVE_ACTIVATIONS:
    return prim, PRIMITIVE_ACTIVATIONS[prim], True
  operand = eqn.invars[0] if eqn.invars else None
  if prim in ("reduce_window_max", "reduce_window_sum"):
    # Average pooling without counting padded zeros also sums a window over a
    # constant array of ones (the divisor): that sum is not a layer.
    if operand in constant:
      return None
    window = tuple(eqn.params["window_dimensions"])
    if len(window) == 4 and window[0] == window[3] == 1:
      return ("max_pool", "MaxPool", False) if prim == "reduce_window_max" else (
          "avg_pool", "AvgPool", False)
    # `layers.local_response_norm` sums squares over a window of channels.
    if prim == "reduce_window_sum" and len(window) == 4 and window[:3] == (1, 1, 1):
      return "local_response_norm", "LocalResponseNorm", False
    return None
  if prim in ("reduce_sum", "reduce_max") and operand is not None:
    if len(operand.aval.shape) == 4 and tuple(eqn.params.get("axes", ())) == (1, 2):
      kind = "avg" if prim == "reduce_sum" else "max"
      return f"global_{kind}_pool", f"Global{kind.capitalize()}Pool", False
  return None


def _walk(jaxpr, prefix: tuple[str, ...], constant: set, events: list) -> None:
  """Appends ('slot', index) and ('op', _FunctionOp) events in program order."""
  for eqn in jaxpr.eqns:
    stack = prefix + _scopes(eqn)
    slot = _innermost(stack, _SLOT_SCOPE)
    if slot is not None:
      events.append(("slot", slot))
      continue
    if all(isinstance(v, jax_core.Literal) or v in constant for v in eqn.invars):
      constant.update(eqn.outvars)
      continue
    kind = _classify(eqn, constant)
    if kind is not None:
      snake, layer_type, in_place = kind
      out_shape = tuple(eqn.outvars[0].aval.shape[1:])
      # LRN's window sum reads a channel-padded copy; the layer's input is its output's
      # shape.
      in_shape = out_shape if snake == "local_response_norm" else tuple(
          eqn.invars[0].aval.shape[1:])
      events.append(("op", _FunctionOp(snake, layer_type, _innermost(stack, _MODULE_SCOPE),
                                       in_shape, out_shape, in_place)))
      continue
    sub = _sub_jaxpr(eqn)
    if sub is not None:
      inner_constant = {inner for inner, outer in zip(sub.invars, eqn.invars)
                        if not isinstance(outer, jax_core.Var) or outer in constant}
      _walk(sub, stack, inner_constant | set(sub.constvars), events)


def _unrun_params(params: Any, recorder: _Recorder) -> dict[str, int]:
  """Parameters without a row, by module path: those of modules the evaluation pass
  does not call (e.g. auxiliary classifiers used only in training)."""
  unrun: dict[str, int] = {}
  called = set(recorder.containers)
  for keys, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    names = [str(getattr(k, "key", k)) for k in keys]
    prefixes = ["/".join(names[:i]) for i in range(len(names))]
    if prefixes[-1] in recorder.counted or any(p in recorder.leaf_paths for p in prefixes):
      continue
    # Named after the outermost module that never ran.
    depth = max(i for i, p in enumerate(prefixes) if p in called or i == 0)
    module = "/".join(names[:depth + 1]) if depth + 1 < len(names) else prefixes[-1]
    unrun[module] = unrun.get(module, 0) + _size(leaf.shape)
  return unrun


def _unique(name: str, used: set[str]) -> str:
  """`name`, or flax's style name_1, name_2, ... when taken."""
  candidate, n = name, 0
  while candidate in used:
    n += 1
    candidate = f"{name}_{n}"
  used.add(candidate)
  return candidate


def _order(slots: list[Optional[_Slot]], events: list) -> list[Any]:
  """Slots and function ops in program order; a slot never seen in the program
  (impossible with the marker, but kept safe) follows the slot before it."""
  ordered, emitted = [], set()

  def emit_slot(index: int) -> None:
    for earlier in range(index + 1):
      if earlier not in emitted:
        emitted.add(earlier)
        if slots[earlier] is not None:
          ordered.append(slots[earlier])

  for kind, value in events:
    if kind == "slot":
      emit_slot(value)
    else:
      ordered.append(value)
  if slots:
    emit_slot(len(slots) - 1)
  return ordered


# ----------------------------------------------------------------------------------
# The summary
# ----------------------------------------------------------------------------------

def _check_input_shape(input_shape: Sequence[int]) -> tuple[int, ...]:
  try:
    shape = tuple(int(d) for d in input_shape)
    ok = len(shape) > 0 and all(d > 0 and d == orig for d, orig in zip(shape, input_shape))
  except (TypeError, ValueError):
    ok = False
  if not ok:
    raise ConfigError(
        f"Input shape must be positive integers (height, width, channels), got "
        f"{input_shape!r}; pass e.g. 224,224,3.")
  return shape


def _takes_train(model: nn.Module) -> bool:
  return "train" in inspect.signature(type(model).__call__).parameters


def summarize(model: nn.Module, input_shape: Sequence[int], *,
              bytes_per_activation: int = BYTES_PER_FLOAT32,
              include_input: bool = True) -> list[Row]:
  """The per-layer rows of `model` on one image of `input_shape` (H, W, C), in
  execution order, in evaluation mode. Nothing is computed: the model is traced.

  An input too small for the network raises the ConfigError of the first layer it
  does not fit (or, for layers without that check, of the first empty output).
  """
  shape = (1,) + _check_input_shape(input_shape)
  x = jax.ShapeDtypeStruct(shape, jnp.float32)
  kwargs = {"train": False} if _takes_train(model) else {}
  variables = jax.eval_shape(
      lambda x: model.init({"params": jax.random.key(0), "dropout": jax.random.key(1)},
                           x, **kwargs), x)
  recorder = _Recorder()

  def forward(variables, x):
    with nn.intercept_methods(recorder):
      return model.apply(variables, x, **kwargs)

  closed = jax.make_jaxpr(forward)(variables, x)
  events: list = []
  _walk(closed.jaxpr, (), set(closed.jaxpr.constvars), events)

  rows: list[Row] = []
  used: set[str] = set()

  def add(name, layer_type, in_shape, out_shape, params, macs, in_place, count=None):
    count = _size(out_shape) if count is None else count
    rows.append(Row(_unique(name, used), layer_type, tuple(in_shape), tuple(out_shape),
                    int(params), int(macs), count, count * bytes_per_activation,
                    in_place))

  if include_input:
    add("input", "Input", shape[1:], shape[1:], 0, 0, False)
  for item in _order(recorder.slots, events):
    if isinstance(item, _Slot):
      add(item.name, item.layer_type, item.input_shape, item.output_shape, item.params,
          item.macs, item.in_place, item.activations)
    else:
      parent = "" if item.container is None else recorder.containers[item.container]
      add(f"{parent}/{item.snake}" if parent else item.snake, item.layer_type,
          item.input_shape, item.output_shape, 0, 0, item.in_place)
  for path, count in _unrun_params(variables.get("params", {}), recorder).items():
    add(path or type(model).__name__, "(not run in evaluation)", (), (), count, 0, False, 0)
  for row in rows:
    if row.output_shape and _size(row.output_shape) == 0:
      raise ConfigError(
          f"Input {'x'.join(map(str, shape[1:]))} is too small for this model: layer "
          f"{row.name} outputs an empty {_shape_text(row.output_shape)} map; use a "
          "larger input.")
  return rows


def summarize_registered(name: str, input_shape: Optional[Sequence[int]] = None,
                         **create_kwargs: Any) -> list[Row]:
  """`summarize` for a model of the zoo by name, on its registered input shape
  unless `input_shape` is given; `create_kwargs` go to `cnn.models.create`."""
  from cnn import models  # the zoo imports cnn.layers, like this module; keep it lazy
  info = models.info(name)
  model = models.create(name, **create_kwargs)
  return summarize(model, info.input_shape if input_shape is None else input_shape)


# ----------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------

def _shape_text(shape: Sequence[int]) -> str:
  return "x".join(str(d) for d in shape) if shape else "-"


def _bytes_text(n_bytes: int) -> str:
  """Binary units, named as such: the slide's "93MB" leaves MB vs MiB open."""
  for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
    if n_bytes >= scale:
      return f"{n_bytes / scale:,.1f} {unit}"
  return f"{n_bytes} B"


def _count_text(n: int) -> str:
  for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
    if n >= scale:
      return f"{n / scale:.2f} {unit}"
  return str(n)


_HEADER = ("Layer", "Type", "Output", "Params", "MACs", "Activations", "Memory")


def _cells(row: Row, mark: str) -> tuple[str, ...]:
  activations = f"{row.activations:,}" + (mark if row.in_place else "")
  return (row.name, row.layer_type, _shape_text(row.output_shape), f"{row.params:,}",
          f"{row.macs:,}", activations, _bytes_text(row.activation_bytes))


def total_lines(rows: Sequence[Row], mark: str = "*") -> list[str]:
  """The totals as lines, in the slide's terms ("TOTAL memory: ... / image")."""
  t = totals(rows)
  per = next((r.activation_bytes // r.activations for r in rows if r.activations), 0)
  lines = [
      f"Total params: {t.params:,} ({_count_text(t.params)})",
      f"Total MACs: {t.macs:,} ({t.gmacs:.2f} G multiply-adds)",
      f"Total activations: {t.activations:,} ({_count_text(t.activations)}) per image",
      f"Total memory: {t.activations:,} * {per} bytes = {t.activation_bytes:,} bytes "
      f"~= {_bytes_text(t.activation_bytes)} / image (forward only; about twice that "
      "with the backward pass)",
  ]
  if any(r.in_place for r in rows):
    lines.append(f"{mark} in place (activation, dropout, flatten): not added to the "
                 "activation total.")
  return lines


def _table(rows: Sequence[Row], title: Optional[str]) -> str:
  cells = [_HEADER] + [_cells(r, "*") for r in rows]
  widths = [max(len(c[i]) for c in cells) for i in range(len(_HEADER))]
  left = {0, 1, 2}

  def line(c):
    return "  ".join(v.ljust(w) if i in left else v.rjust(w)
                     for i, (v, w) in enumerate(zip(c, widths))).rstrip()

  rule = "-" * len(line(cells[0]))
  out = ([title] if title else []) + [line(cells[0]), rule]
  out += [line(c) for c in cells[1:]] + [rule] + total_lines(rows)
  return "\n".join(out) + "\n"


def _markdown(rows: Sequence[Row], title: Optional[str]) -> str:
  def line(c):
    return "| " + " | ".join(v.replace("|", "\\|") for v in c) + " |"

  align = "|" + "|".join([" --- "] * 3 + [" ---: "] * 4) + "|"
  out = [title, ""] if title else []
  out += [line(_HEADER), align] + [line(_cells(r, "\\*")) for r in rows] + [""]
  out += [f"- {text}" for text in total_lines(rows, "\\*")]
  return "\n".join(out) + "\n"


def _csv(rows: Sequence[Row], title: Optional[str]) -> str:
  del title  # a CSV file is one table
  buffer = io.StringIO()
  fields = [f.name for f in dataclasses.fields(Row)]
  writer = csv.writer(buffer, lineterminator="\n")
  writer.writerow(fields)
  for row in rows:
    values = dataclasses.asdict(row)
    values["input_shape"] = _shape_text(row.input_shape)
    values["output_shape"] = _shape_text(row.output_shape)
    writer.writerow([values[f] for f in fields])
  t = totals(rows)
  writer.writerow(["TOTAL", "", "", "", t.params, t.macs, t.activations,
                   t.activation_bytes, ""])
  return buffer.getvalue()


def _json(rows: Sequence[Row], title: Optional[str]) -> str:
  doc = {"title": title} if title else {}
  doc.update(rows=[dataclasses.asdict(r) for r in rows],
             totals=dataclasses.asdict(totals(rows)))
  return json.dumps(doc, indent=1) + "\n"


_RENDERERS = {"table": _table, "markdown": _markdown, "csv": _csv, "json": _json}


def render(rows: Sequence[Row], fmt: str = "table", title: Optional[str] = None) -> str:
  """The rows and totals as an aligned text table, a Markdown table (for docs), CSV
  (one row per layer, then a TOTAL row) or JSON ({"rows": [...], "totals": {...}}).
  `title` heads the table, the Markdown and the JSON."""
  if fmt not in _RENDERERS:
    raise unknown_choice("format", fmt, FORMATS)
  return _RENDERERS[fmt](rows, title)

"""Pretrained torchvision weights: a torchvision ``state_dict`` -> this zoo's variables.

    model, variables = cnn.pretrained.load_torchvision("resnet18", "resnet18.pth")
    logits = model.apply(variables, images_nhwc, train=False)

The weights are whatever the user downloaded elsewhere (nothing is fetched here): a
``.pth`` file saved with ``torch.save(model.state_dict(), ...)`` (read with PyTorch,
imported only then), or a dict of arrays or tensors with torchvision's key names (a
dict of numpy arrays needs no PyTorch at all).

The conversion, layer by layer:

- Conv2d weight (O, I/groups, kh, kw) -> kernel (kh, kw, I/groups, O) (OIHW -> HWIO);
  grouped convolutions (ResNeXt) order their groups alike in both.
- Linear weight (out, in) -> kernel (in, out). The first Linear after the flatten of
  VGG (fc6) and AlexNet (fc6) is also permuted: PyTorch flattens an NCHW map as
  (c, h, w), this codebase an NHWC one as (h, w, c).
- BatchNorm2d weight, bias, running_mean, running_var -> scale, bias (params) and mean,
  var (batch_stats); ``num_batches_tracked`` is dropped. torchvision's VGG-BN
  convolutions have a bias that ours drop (the BN shift replaces it); it is folded
  into the running mean (BN(x + b) with mean m is BN(x) with mean m - b), which is
  exact in evaluation and in training (batch statistics cancel a constant shift).

Conventions that match, so the logits agree (tests/test_pretrained.py compares them
with a re-implementation of torchvision's modules): BatchNorm epsilon 1e-5 and
momentum 0.1 (Flax's 0.9 is the weight of the old value); ResNet's 7x7/2 conv (pad 3),
its 3x3/2 max-pool (pad 1) and strided 3x3s (pad 1) all place their windows as
PyTorch (`cnn.models.resnet.centered_same_padding`); the stride of a bottleneck is on
its 3x3 (torchvision's "v1.5"). One difference that does not change evaluation
logits: in training PyTorch updates running_var with the unbiased batch variance,
Flax with the biased one (a factor n / (n - 1) on the update, n = N * H * W).

Models built here differ from the registry's defaults where torchvision's do:

- VGG: ``classifier="torchvision"``, an adaptive average pool to 7x7 before fc6 (as
  torchvision's ``AdaptiveAvgPool2d``), so fc6 keeps its 25,088 inputs at any input
  side that is a multiple of 32 (our pools reject fractional sizes where PyTorch's
  floor them); at 224x224 it is the registry's "paper" classifier exactly.
  A fine-tuning config starting from such weights sets ``model.classifier``
  accordingly (the CLI's config.json records it).
- AlexNet: torchvision's is not the course's AlexNet (96/256/384/384/256 filters,
  conv1 unpadded, LRN, a 227x227 input) but the one-tower net of Krizhevsky's "One
  weird trick" (64/192/384/256/256 filters, conv1 pad 2, no LRN, adaptive 6x6 pool,
  PyTorch's floor rounding): our ``alexnet_torchvision``.

Names that do not match (`load_torchvision` refuses them in one sentence): see
`NOT_MATCHING`. The mobilenet family here is MobileNet v1, which torchvision does
not have; torchvision's MobileNet v2/v3 are inverted-residual networks (expansion
1x1, depthwise 3x3, linear bottleneck; v3 also squeeze-excitation and hard-swish)
that this codebase does not implement. Its GoogLeNet has no batch norm but LRN
(the paper's, as in Caffe), torchvision's has BN after every convolution and no LRN.
"""
from __future__ import annotations

import dataclasses
import pathlib
import sys
from typing import Any, Callable, Mapping, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from cnn import models
from cnn.errors import ConfigError, unknown_choice
from cnn.models import vgg as vgg_lib

TORCH_CLASSES = 1000     # every torchvision ImageNet classifier


class Layer(NamedTuple):
  """One torchvision module and the layer of ours it becomes."""
  torch: str                       # module prefix: 'layer1.0.conv1', 'features.0'
  ours: str                        # module path: 'stage1_block0/conv1', 'conv1_1'
  kind: str                        # 'conv', 'bn' or 'linear'
  torch_bias: bool = True          # conv/linear: the torch module has a bias
  flat_chw: Optional[tuple[int, int, int]] = None   # linear after a (C, H, W) flatten
  bias_into: Optional[str] = None  # conv: our BN (its bias folded into the mean)


@dataclasses.dataclass(frozen=True)
class Spec:
  """A torchvision model: the model of ours it becomes and how its layers map."""
  model: str                       # registry name
  kwargs: tuple[tuple[str, Any], ...]   # extra model arguments (config.model keys)
  layers: Callable[[Any], list[Layer]]  # from our abstract params
  head: str                        # the torch classifier's prefix
  ours_head: str                   # ours


@dataclasses.dataclass
class Converted:
  """What `convert` returns."""
  name: str                        # the torchvision name
  model: Any                       # the Flax module
  variables: dict[str, Any]        # {'params': ..., 'batch_stats': ...} as jax arrays
  model_config: dict[str, Any]     # config.model of a run of it: name + arguments
  num_classes: int
  fresh: list[str]                 # parameter paths initialised afresh (a new head)
  input_shape: tuple[int, int, int]


# ----------------------------------------------------------------------------------
# Layer maps, one per family
# ----------------------------------------------------------------------------------

def _resnet_layers(params: Any) -> list[Layer]:
  """torchvision's ResNet/ResNeXt names: conv1, bn1, layer{s}.{b}.conv{k}/bn{k},
  layer{s}.{b}.downsample.0/.1 (the projection), fc."""
  out = [Layer("conv1", "conv1", "conv", torch_bias=False), Layer("bn1", "bn1", "bn")]
  for top in params:
    if not top.startswith("stage"):
      continue
    stage, block = top[len("stage"):].split("_block")
    prefix = f"layer{stage}.{block}"
    for name in params[top]:
      if name.startswith("conv"):
        out.append(Layer(f"{prefix}.{name}", f"{top}/{name}", "conv", torch_bias=False))
      elif name.startswith("bn"):
        out.append(Layer(f"{prefix}.{name}", f"{top}/{name}", "bn"))
      elif name == "proj_conv":
        out.append(Layer(f"{prefix}.downsample.0", f"{top}/{name}", "conv",
                         torch_bias=False))
      elif name == "proj_bn":
        out.append(Layer(f"{prefix}.downsample.1", f"{top}/{name}", "bn"))
      else:
        raise AssertionError(f"unmapped ResNet layer {top}/{name}")
  return out + [Layer("fc", "head", "linear")]


def _vgg_layers(config: str, batch_norm: bool) -> Callable[[Any], list[Layer]]:
  """torchvision's VGG names: features.N (conv, [BN], ReLU per convolution, a max-pool
  after each stage, numbered in that order), classifier.0/.3/.6 (fc6, fc7, fc8)."""
  def layers(params: Any) -> list[Layer]:
    out, index = [], 0
    for s, stage in enumerate(vgg_lib.CONFIGS[config], start=1):
      for i, _ in enumerate(stage, start=1):
        if batch_norm:
          out.append(Layer(f"features.{index}", f"conv{s}_{i}", "conv",
                           bias_into=f"bn{s}_{i}"))
          out.append(Layer(f"features.{index + 1}", f"bn{s}_{i}", "bn"))
        else:
          out.append(Layer(f"features.{index}", f"conv{s}_{i}", "conv"))
        index += 3 if batch_norm else 2    # conv, [BN], ReLU
      index += 1                           # the stage's max-pool
    channels = params["fc6"]["kernel"].shape[0] // (7 * 7)
    return out + [Layer("classifier.0", "fc6", "linear", flat_chw=(channels, 7, 7)),
                  Layer("classifier.3", "fc7", "linear"),
                  Layer("classifier.6", "fc8", "linear")]
  return layers


def _alexnet_layers(params: Any) -> list[Layer]:
  """torchvision's AlexNet names: features.0/3/6/8/10 (conv1..conv5; ReLUs and pools
  between), classifier.1/.4/.6 (fc6, fc7, fc8; dropouts at .0 and .3)."""
  convs = [Layer(f"features.{i}", f"conv{k}", "conv")
           for k, i in enumerate((0, 3, 6, 8, 10), start=1)]
  channels = params["fc6"]["kernel"].shape[0] // (6 * 6)
  return convs + [Layer("classifier.1", "fc6", "linear", flat_chw=(channels, 6, 6)),
                  Layer("classifier.4", "fc7", "linear"),
                  Layer("classifier.6", "fc8", "linear")]


def _resnet(model: str, **kwargs: Any) -> Spec:
  return Spec(model, tuple(kwargs.items()), _resnet_layers, "fc", "head")


SPECS: dict[str, Spec] = {
    **{f"resnet{d}": _resnet(f"resnet{d}") for d in (18, 34, 50, 101, 152)},
    "resnext50_32x4d": _resnet("resnext50_32x4d"),
    "resnext101_32x8d": _resnet("imagenet_resnet", depth=101, groups=32,
                                width_per_group=8),
    "resnext101_64x4d": _resnet("imagenet_resnet", depth=101, groups=64,
                                width_per_group=4),
    "wide_resnet50_2": _resnet("imagenet_resnet", depth=50, width_per_group=128),
    "wide_resnet101_2": _resnet("imagenet_resnet", depth=101, width_per_group=128),
    **{f"{name}{bn}": Spec(f"{name}{bn}", (("classifier", "torchvision"),),
                           _vgg_layers(config, bool(bn)), "classifier.6", "fc8")
       for name, config in (("vgg11", "A"), ("vgg13", "B"), ("vgg16", "D"),
                            ("vgg19", "E"))
       for bn in ("", "_bn")},
    "alexnet": Spec("alexnet_torchvision", (), _alexnet_layers, "classifier.6", "fc8"),
}

# torchvision names whose architecture this codebase does not have (or has otherwise).
NOT_MATCHING: dict[str, str] = {
    **{n: "torchvision's MobileNet v2/v3 are inverted-residual networks; this "
          "codebase has MobileNet v1 only, which torchvision does not ship"
       for n in ("mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small")},
    "mobilenet_v1": "torchvision has no MobileNet v1 weights",
    "googlenet": "torchvision's GoogLeNet has batch norm after every convolution and "
                 "no LRN, ours is the paper's (LRN, no batch norm)",
    **{n: "this converter does not map DenseNet's names (not checked against ours)"
       for n in ("densenet121", "densenet161", "densenet169", "densenet201")},
}


def supported() -> list[str]:
  """The torchvision names `load_torchvision` converts."""
  return sorted(SPECS)


def spec(name: str) -> Spec:
  """The Spec of a torchvision name; one sentence for any other name."""
  if name in NOT_MATCHING:
    raise ConfigError(f"torchvision's {name} does not match a model of this codebase "
                      f"({NOT_MATCHING[name]}); convertible names are: "
                      f"{', '.join(supported())}.")
  if name not in SPECS:
    raise unknown_choice("torchvision model", name, SPECS)
  return SPECS[name]


# ----------------------------------------------------------------------------------
# Reading a state_dict
# ----------------------------------------------------------------------------------

def _as_numpy(key: str, value: Any) -> np.ndarray:
  """A tensor (moved to the CPU, half precisions widened) or array as numpy."""
  if hasattr(value, "detach"):          # a torch.Tensor, without importing torch
    value = value.detach().cpu()
    if value.is_floating_point():
      value = value.float()
    value = value.numpy()
  try:
    return np.asarray(value)
  except Exception:  # noqa: BLE001 -- anything that is not an array
    raise ConfigError(f"The state_dict entry {key!r} is a {type(value).__name__}, not "
                      "an array or tensor; pass torchvision's model.state_dict().") from None


def read_state_dict(source: Mapping[str, Any] | str | pathlib.Path) -> dict[str, np.ndarray]:
  """The state_dict `source` (a mapping, or the path of a ``.pth`` file) as numpy.

  A file is read with ``torch.load(..., weights_only=True)``, importing PyTorch only
  here. A checkpoint that wraps the state_dict as its ``state_dict`` or ``model``
  entry, and the ``module.`` prefix of a DataParallel model, are accepted.
  """
  if isinstance(source, Mapping):
    state = source
  else:
    path = pathlib.Path(source)
    if not path.is_file():
      raise ConfigError(f"No weights file {str(path)!r}; pass the path of a .pth file "
                        "holding a torchvision state_dict (saved with torch.save).")
    try:
      import torch  # pylint: disable=import-outside-toplevel -- only to read .pth
    except ImportError:
      raise ConfigError(f"Reading {str(path)!r} needs PyTorch (pip install "
                        "torch==2.13.0); or pass a dict of numpy arrays.") from None
    try:
      state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 -- any unreadable file: one sentence
      # torch's own messages run to paragraphs (about weights_only); its type says enough.
      raise ConfigError(f"{str(path)!r} does not load as a PyTorch state_dict "
                        f"({type(e).__name__}; only tensors are read, not a pickled "
                        "model or any other file); pass a file saved with "
                        "torch.save(model.state_dict(), path).") from None
  if not isinstance(state, Mapping):
    raise ConfigError(f"The weights are a {type(state).__name__}, not a state_dict; pass "
                      "a dict of tensors such as torchvision's model.state_dict().")
  for wrapper in ("state_dict", "model"):   # never a torchvision key itself
    if isinstance(state.get(wrapper), Mapping):
      state = state[wrapper]
  if state and all(str(k).startswith("module.") for k in state):
    state = {str(k)[len("module."):]: v for k, v in state.items()}
  return {str(k): _as_numpy(str(k), v) for k, v in state.items()}


# ----------------------------------------------------------------------------------
# Converting
# ----------------------------------------------------------------------------------

def _node(tree: Any, path: str) -> Any:
  for part in path.split("/"):
    tree = tree[part]
  return tree


def _set(tree: dict, path: str, value: Any) -> None:
  *parents, last = path.split("/")
  for part in parents:
    tree = tree.setdefault(part, {})
  tree[last] = value


def _expected(layer: Layer, params: Any) -> dict[str, tuple[int, ...]]:
  """torch key -> shape that `layer` needs, from the shapes of our parameters."""
  p = f"{layer.torch}."
  if layer.kind == "bn":
    (c,) = _node(params, layer.ours)["bn"]["scale"].shape
    return {p + k: (c,) for k in ("weight", "bias", "running_mean", "running_var")}
  kernel = _node(params, layer.ours)["kernel"].shape
  if layer.kind == "conv":
    kh, kw, i, o = kernel
    out = {p + "weight": (o, i, kh, kw)}
  else:
    i, o = kernel
    out = {p + "weight": (o, i)}
  if layer.torch_bias:
    out[p + "bias"] = (o,)
  return out


def expected_keys(name: str, num_classes: int = TORCH_CLASSES) -> dict[str, tuple[int, ...]]:
  """Every key (but num_batches_tracked) and shape of torchvision's `name` state_dict."""
  s = spec(name)
  model = _build(s, num_classes)
  params = _abstract(model, models.info(s.model).input_shape)["params"]
  out: dict[str, tuple[int, ...]] = {}
  for layer in s.layers(params):
    out.update(_expected(layer, params))
  return out


def _build(s: Spec, num_classes: int) -> Any:
  return models.create(s.model, num_classes=num_classes, **dict(s.kwargs))


def _abstract(model: Any, input_shape: tuple[int, int, int]) -> Any:
  return jax.eval_shape(
      lambda x: model.init({"params": jax.random.key(0), "dropout": jax.random.key(1)},
                           x, train=False),
      jax.ShapeDtypeStruct((1, *input_shape), jnp.float32))


def _check_keys(name: str, state: dict[str, np.ndarray],
                expected: dict[str, tuple[int, ...]], skip: set[str]) -> None:
  """One sentence for the first missing, mis-shaped or unexpected key."""
  for key, shape in expected.items():
    if key not in state:
      raise ConfigError(f"The state_dict has no {key!r}, which torchvision's {name} has; "
                        f"pass the state_dict of torchvision's {name}.")
    if key not in skip and tuple(state[key].shape) != shape:
      raise ConfigError(f"The state_dict's {key!r} has shape {tuple(state[key].shape)} "
                        f"but torchvision's {name} has {shape}; pass the state_dict of "
                        f"torchvision's {name}.")
  for key in state:
    if key not in expected and not key.endswith(".num_batches_tracked"):
      raise ConfigError(f"The state_dict has a key {key!r} that torchvision's {name} does "
                        f"not have; pass the state_dict of torchvision's {name}.")


def _convert_layer(layer: Layer, state: dict[str, np.ndarray], params: dict,
                   stats: dict) -> None:
  p = f"{layer.torch}."
  if layer.kind == "bn":
    _set(params, f"{layer.ours}/bn/scale", state[p + "weight"])
    _set(params, f"{layer.ours}/bn/bias", state[p + "bias"])
    _set(stats, f"{layer.ours}/bn/mean", state[p + "running_mean"])
    _set(stats, f"{layer.ours}/bn/var", state[p + "running_var"])
    return
  weight = state[p + "weight"]
  if layer.kind == "conv":
    kernel = weight.transpose(2, 3, 1, 0)                     # OIHW -> HWIO
  elif layer.flat_chw is not None:
    c, h, w = layer.flat_chw                                  # (c, h, w) -> (h, w, c)
    kernel = weight.reshape(-1, c, h, w).transpose(2, 3, 1, 0).reshape(h * w * c, -1)
  else:
    kernel = weight.T
  _set(params, f"{layer.ours}/kernel", kernel)
  if layer.bias_into is not None:       # applied after its BN is set (see convert)
    return
  if layer.torch_bias:
    _set(params, f"{layer.ours}/bias", state[p + "bias"])


def _fold_biases(layers: list[Layer], state: dict[str, np.ndarray], stats: dict) -> None:
  """A conv bias followed by BN: BN(x + b) with running mean m is BN(x) with m - b."""
  for layer in layers:
    if layer.bias_into is not None:
      path = f"{layer.bias_into}/bn/mean"
      _set(stats, path, _node(stats, path) - state[f"{layer.torch}.bias"])


def _fresh_head(model: Any, head: str, input_shape: tuple[int, int, int],
                seed: int) -> dict[str, Any]:
  """The head's parameters as the model initialises them. Under jit only the head's
  part of init is computed (the rest is dead code), even for VGG's 138M."""
  init = jax.jit(lambda key: model.init(
      {"params": key, "dropout": key}, jnp.zeros((1, *input_shape)), train=False
  )["params"][head])
  return jax.device_get(init(jax.random.key(seed)))


def convert(name: str, state_dict_or_path: Mapping[str, Any] | str | pathlib.Path,
            num_classes: Optional[int] = None, *, seed: int = 0) -> Converted:
  """torchvision's `name` with the weights of `state_dict_or_path`, as our model.

  `num_classes` other than the state_dict's own builds the model with that many
  classes and leaves its head initialised afresh (listed in `Converted.fresh`).
  """
  s = spec(name)
  state = read_state_dict(state_dict_or_path)
  head_weight = state.get(f"{s.head}.weight")
  own = int(head_weight.shape[0]) if head_weight is not None and head_weight.ndim else None
  if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(
      num_classes, (int, np.integer)) or num_classes < 1):
    raise ConfigError(f"num_classes must be a positive int, got {num_classes!r}.")
  classes = int(num_classes or own or TORCH_CLASSES)
  keep_head = classes == own
  model = _build(s, classes)
  input_shape = models.info(s.model).input_shape
  abstract = _abstract(model, input_shape)
  layers = s.layers(abstract["params"])
  expected: dict[str, tuple[int, ...]] = {}
  for layer in layers:
    expected.update(_expected(layer, abstract["params"]))
  # A new head replaces the torch one whatever its class count; the rest must match.
  head_keys = {f"{s.head}.weight", f"{s.head}.bias"}
  _check_keys(name, state, expected, set() if keep_head else head_keys)
  params: dict[str, Any] = {}
  stats: dict[str, Any] = {}
  for layer in layers:
    if keep_head or layer.ours != s.ours_head:
      _convert_layer(layer, state, params, stats)
  _fold_biases(layers, state, stats)
  fresh: list[str] = []
  if not keep_head:
    params[s.ours_head] = _fresh_head(model, s.ours_head, input_shape, seed)
    fresh = [f"{s.ours_head}/{k}" for k in sorted(params[s.ours_head])]
  variables = {"params": params, "batch_stats": stats}

  def leaf(ref, value):
    value = np.asarray(value, np.float32)
    assert value.shape == ref.shape, (value.shape, ref.shape)   # shapes checked above
    return jnp.asarray(value)

  # The tree of the model's own init (a missing or extra leaf fails here), float32.
  variables = jax.tree.map(leaf, {k: abstract.get(k, {}) for k in variables}, variables)
  return Converted(name, model, variables, {"name": s.model, **dict(s.kwargs)}, classes,
                   fresh, input_shape)


def load_torchvision(name: str, state_dict_or_path: Mapping[str, Any] | str | pathlib.Path,
                     num_classes: Optional[int] = None) -> tuple[Any, dict[str, Any]]:
  """(model, variables) of torchvision's `name` with the given weights.

  `state_dict_or_path`: a dict of arrays/tensors with torchvision's key names, or the
  path of a ``.pth`` file. `num_classes` other than the state_dict's (1000) builds the
  model with that many outputs and leaves the head initialised afresh; the fresh
  parameters are reported on stderr.
  """
  out = convert(name, state_dict_or_path, num_classes)
  if out.fresh:
    print(f"pretrained: {name} with a new {out.num_classes}-way head; initialised "
          f"afresh: {', '.join(out.fresh)}", file=sys.stderr)
  return out.model, out.variables


# ----------------------------------------------------------------------------------
# A run directory holding the converted weights
# ----------------------------------------------------------------------------------

def run_config(converted: Converted, config) -> Any:
  """`config` (the run the weights belong to: its data, its recipe) with the
  converted model as ``config.model`` and its class count as ``data.num_classes``."""
  import ml_collections  # pylint: disable=import-outside-toplevel
  from cnn import config as config_lib  # pylint: disable=import-outside-toplevel
  config = config_lib.complete(config)
  config.model = ml_collections.ConfigDict(converted.model_config)
  config.data.num_classes = converted.num_classes
  config_lib.validate(config)
  return config_lib.complete(config)


def write_workdir(workdir: str | pathlib.Path, converted: Converted, config, *,
                  overwrite: bool = False) -> pathlib.Path:
  """Writes `converted` as step 0 of a run of `config` (see `run_config`) in the
  engine's own layout: config.json and an orbax checkpoint with its fingerprints,
  written by the engine's functions. ``transfer.init_from=<workdir>`` then starts a
  fine-tuning run from it, ``scripts.evaluate`` evaluates it on the config's data, and
  ``scripts.train`` on it continues training from these weights.

  The train state is the one `cnn.train` builds from that config (optimizer state,
  rng, counters), with the converted parameters and statistics in it.
  """
  # pylint: disable=import-outside-toplevel -- the engine, only to write a run
  from cnn import checkpoint as ckpt_lib
  from cnn import optim
  from cnn import train
  from cnn import transfer
  from cnn import workdir as workdir_lib
  workdir = pathlib.Path(workdir)
  config = run_config(converted, config)
  model = train.build_model(config, converted.num_classes)
  d, tc = config.data, config.train
  if d.channels not in (None, 3):
    raise ConfigError(f"torchvision's {converted.name} takes colour images, but "
                      f"data.channels={d.channels}; set data.channels=3.")
  (h, w) = d.image_size or converted.input_shape[:2]
  input_shape = (1, h, w, 3)
  models.output_shape(model, input_shape)   # an input too small: one sentence
  schedule = optim.make_schedule(config.schedule, config.optim.learning_rate, tc.steps)
  tx = transfer.wrap_optimizer(optim.make_optimizer(config.optim, schedule), config, model,
                               input_shape)

  def state_with(key, variables):
    # Under jit the random initialisation the converted weights replace is dead code.
    fresh = train.create_train_state(model, tx, key, input_shape,
                                     log_grad_norms=bool(tc.log_grad_norms),
                                     task=config.task)
    return fresh.replace(params=variables["params"],
                         batch_stats=variables["batch_stats"],
                         opt_state=tx.init(variables["params"]))

  state = jax.jit(state_with)(jax.random.key(config.seed), converted.variables)
  with workdir_lib.lock(workdir):
    train.prepare_workdir(workdir, config, overwrite=overwrite)
    checkpointer = ckpt_lib.Checkpointer(workdir, keep=tc.keep_checkpoints,
                                         best_metric=tc.best_metric,
                                         best_mode=tc.best_mode)
    try:
      if not checkpointer.save(0, state):
        raise ConfigError(f"{workdir} already holds a checkpoint 0; pass --overwrite to "
                          "replace it, or choose another --workdir.")
    finally:
      checkpointer.close()
  return workdir

"""The model zoo: every architecture is created by name from one registry.

    model = cnn.models.create("resnet56", num_classes=10)
    model = cnn.models.create("plain56", num_classes=10)   # its plain twin
    variables = model.init(rng, images, train=False)

Each family lives in its own file and registers its names with `@register`. Every
model is a Flax Linen module called as ``model.apply(variables, x, train=...)`` on
NHWC images.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnn.errors import ConfigError, unknown_choice


@dataclasses.dataclass(frozen=True)
class ModelInfo:
  """A registered model: how to build it and what input it is used with."""
  name: str
  build: Callable[..., nn.Module]
  input_shape: tuple[int, int, int]   # (H, W, C) its family is used with
  family: str
  description: str = ""


_REGISTRY: dict[str, ModelInfo] = {}

def register(name: str, *, input_shape: tuple[int, int, int], family: str,
             description: str = "", **fixed: Any) -> Callable:
  """Registers `name` as `build(**fixed, **kwargs)`; usable as a decorator."""

  def decorator(build: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    def bound(**kwargs):
      return build(**{**fixed, **kwargs})
    if name in _REGISTRY:
      raise ValueError(f"model {name!r} registered twice")
    _REGISTRY[name] = ModelInfo(name, bound, tuple(input_shape), family,
                                description or (build.__doc__ or "").strip().split("\n")[0])
    return build

  return decorator


def names() -> list[str]:
  """All registered model names, sorted."""
  return sorted(_REGISTRY)


def info(name: str) -> ModelInfo:
  """The registry entry of `name`; an unknown name raises ConfigError listing the valid ones."""
  if name not in _REGISTRY:
    raise unknown_choice("model", name, _REGISTRY)
  return _REGISTRY[name]


_STAGE = re.compile(r"^(stage\d+)(_|$)")


def stage_of(param_path: str) -> str:
  """The group of a parameter in the zoo's naming scheme (ResNets, DenseNet): 'stem', 'stage1', 'stage2', ..., or 'head'.

  `param_path` is a '/'-separated path ('stage2_block0/conv1/kernel'), with or without
  a leading 'params'; only its top-level name counts. A top-level name outside the
  scheme of this module (another family's layer) is its own group.
  """
  parts = [p for p in param_path.split("/") if p and p != "params"]
  top = parts[0] if parts else ""
  if top in ("conv1", "bn1") or top.startswith("stem"):
    return "stem"
  match = _STAGE.match(top)
  if match:
    return match.group(1)
  if top.startswith("head"):
    return "head"
  return top


def scaled(channels: int, width: float) -> int:
  """`channels` times a width multiplier, at least 1 (GoogLeNet, Xception)."""
  return max(1, int(round(channels * width)))


def create(name: str, **kwargs: Any) -> nn.Module:
  """Builds the model registered as `name` (kwargs: num_classes, conv_impl, dtype, ...)."""
  entry = info(name)
  try:
    return entry.build(**kwargs)
  except TypeError as e:
    raise ConfigError(f"Model {name!r} does not accept these arguments ({e}); remove or "
                      f"rename the model.* keys (see {entry.family} in cnn/models/).") from None


def output_shape(model: nn.Module, input_shape: tuple[int, ...], *,
                 train: bool = False) -> Any:
  """Shape of the model's output for one NHWC input shape, without computing anything.

  Layer checks turn an input too small for the network into a ConfigError that names
  the first layer it no longer fits.
  """
  x = jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32)
  rngs = {"params": jax.random.key(0), "dropout": jax.random.key(1)}

  def forward(x):
    variables = model.init(rngs, x, train=False)
    return model.apply(variables, x, train=train, rngs={"dropout": rngs["dropout"]},
                       mutable=["batch_stats"] if train else False)

  out = jax.eval_shape(forward, x)
  return out[0] if train else out


# One file per family; importing it fills the registry. Explicit imports (after
# `register` exists, which the families use): a missing or broken family fails here.
from cnn.models import (alexnet, densenet, detection, googlenet, lenet,  # noqa: E402,F401
                        mobilenet, resnet, segmentation, vgg, xception)

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
import importlib
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

# One file per family; importing them fills the registry.
FAMILY_MODULES = ("lenet", "alexnet", "vgg", "googlenet", "resnet", "mobilenet",
                  "xception", "segmentation", "densenet", "detection")


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


def _load_families() -> None:
  for module in FAMILY_MODULES:
    try:
      importlib.import_module(f"cnn.models.{module}")
    except ModuleNotFoundError as e:
      if e.name != f"cnn.models.{module}":
        raise


def names() -> list[str]:
  """All registered model names, sorted."""
  _load_families()
  return sorted(_REGISTRY)


def info(name: str) -> ModelInfo:
  """The registry entry of `name`; an unknown name raises ConfigError listing the valid ones."""
  _load_families()
  if name not in _REGISTRY:
    raise unknown_choice("model", name, _REGISTRY)
  return _REGISTRY[name]


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

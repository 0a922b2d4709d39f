"""Optimizers and learning-rate schedules of the course and the papers, from config.

    tx = make_optimizer(config.optim, make_schedule(config.schedule, config.optim.learning_rate))

Optimizers (the update rules of the course's optimisation lecture, via optax):
  sgd            w <- w - lr * g
  momentum       v <- mu * v + g;  w <- w - lr * v   (nesterov=True: Nesterov's variant)
  adagrad        r <- r + g^2;     w <- w - lr * g / (eps + sqrt(r))
  rmsprop        r <- rho * r + (1 - rho) g^2;  w <- w - lr * g / (eps + sqrt(r))
  adam / adamw   Kingma & Ba with bias correction; adamw decays weights decoupled

AdaGrad and RMSProp keep delta (``optim.eps``) outside the square root, as the slides
and torch.optim do; optax's defaults put it inside, which for a large delta is a
different rule (delta = 0.5, g = 2, lr = 0.1: AdaGrad's first step is -0.0800 here,
-0.0943 with delta inside). ``optim.eps`` None means the default 1e-8; an explicit 0.0
is honoured.

Weight decay: ``optim.weight_decay`` is applied as the papers did it (an L2 penalty
wd/2 * ||W||^2 on conv and dense kernels in the loss, so its gradient is wd * W; see
`l2_penalty`), or decoupled (``optim.decoupled_weight_decay=True``: w <- w - lr*wd*w
after the update rule, AdamW's way).

Schedules (``schedule.name``):
  constant     lr
  piecewise    lr * decay^k after the k-th boundary (He et al. CIFAR: 0.1, /10 at 32k
               and 48k), with optional warm-up at a lower rate (ResNet-110: 0.01 until
               400 steps)
  exponential  lr * rate^(step / every) in steps (GoogLeNet: 4 % less every 8 epochs)
  cosine       linear warm-up then cosine decay to zero
  plateau      constant here; the train loop divides the rate by ``schedule.factor`` when
               the monitored eval metric has not improved for ``schedule.patience``
               evaluations (AlexNet/VGG: "divide by 10 when validation error stops
               improving"); see `update_plateau`
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from cnn.errors import ConfigError, unknown_choice

Schedule = Callable[[jax.Array], jax.Array]

OPTIMIZERS = ("sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam", "adamw")
SCHEDULES = ("constant", "piecewise", "exponential", "cosine", "plateau")


def _get(cfg: Any, key: str, default: Any) -> Any:
  value = cfg.get(key, default) if hasattr(cfg, "get") else getattr(cfg, key, default)
  return default if value is None else value


def make_schedule(cfg: Any, base_lr: float, total_steps: int | None = None) -> Schedule:
  """The learning rate as a function of the step, from ``config.schedule``."""
  name = _get(cfg, "name", "constant")
  if name not in SCHEDULES:
    raise unknown_choice("schedule", name, SCHEDULES)
  if not base_lr > 0:
    raise ConfigError(f"optim.learning_rate must be positive, got {base_lr}.")
  warmup_steps = int(_get(cfg, "warmup_steps", 0))
  warmup_lr = float(_get(cfg, "warmup_lr", base_lr * 0.1))
  if name in ("constant", "plateau"):
    main = optax.constant_schedule(base_lr)
  elif name == "piecewise":
    boundaries = [int(b) for b in _get(cfg, "boundaries", [])]
    if boundaries != sorted(boundaries) or any(b <= 0 for b in boundaries):
      raise ConfigError(
          f"schedule.boundaries must be positive and increasing, got {boundaries}.")
    decay = float(_get(cfg, "decay", 0.1))
    main = optax.piecewise_constant_schedule(base_lr, {b: decay for b in boundaries})
  elif name == "exponential":
    every = int(_get(cfg, "every", 1))
    if every <= 0:
      raise ConfigError(f"schedule.every must be a positive number of steps, got {every}.")
    main = optax.exponential_decay(base_lr, every, float(_get(cfg, "rate", 0.96)),
                                   staircase=True)
  else:  # cosine
    steps = int(_get(cfg, "decay_steps", total_steps or 0))
    if steps <= warmup_steps:
      raise ConfigError(
          f"schedule.decay_steps ({steps}) must exceed schedule.warmup_steps "
          f"({warmup_steps}) for the cosine schedule.")
    return optax.warmup_cosine_decay_schedule(warmup_lr if warmup_steps else base_lr,
                                              base_lr, warmup_steps, steps)
  if warmup_steps:
    # He et al. (ResNet-110): "0.01 to warm up until training error is below 80 %
    # (about 400 iterations), then back to 0.1" -- a constant warm-up rate.
    # The main schedule keeps counting from step 0 (join_schedules would shift it).
    return lambda step: jnp.where(step < warmup_steps, warmup_lr, main(step))
  return main


def make_optimizer(cfg: Any, schedule: Schedule) -> optax.GradientTransformation:
  """The update rule named by ``config.optim.name`` with the given schedule."""
  name = _get(cfg, "name", "sgd")
  if name not in OPTIMIZERS:
    raise unknown_choice("optimizer", name, OPTIMIZERS)
  momentum = float(_get(cfg, "momentum", 0.9))
  # An explicit 0.0 is a valid delta; only None (unset) means the default.
  eps = float(_get(cfg, "eps", 1e-8))
  if name == "sgd":
    tx = optax.sgd(schedule)
  elif name in ("momentum", "nesterov"):
    tx = optax.sgd(schedule, momentum=momentum,
                   nesterov=name == "nesterov" or bool(_get(cfg, "nesterov", False)))
  elif name == "adagrad":
    tx = optax.chain(
        scale_by_root_accumulator(None, eps, float(_get(cfg, "initial_accumulator", 0.0))),
        optax.scale_by_learning_rate(schedule))
  elif name == "rmsprop":
    tx = optax.chain(scale_by_root_accumulator(float(_get(cfg, "decay", 0.9)), eps),
                     optax.scale_by_learning_rate(schedule))
  else:
    tx = optax.adam(schedule, b1=float(_get(cfg, "b1", 0.9)),
                    b2=float(_get(cfg, "b2", 0.999)), eps=eps)
  wd = float(_get(cfg, "weight_decay", 0.0))
  if wd < 0:
    raise ConfigError(f"optim.weight_decay must be >= 0, got {wd}.")
  decoupled = name == "adamw" or bool(_get(cfg, "decoupled_weight_decay", False))
  chain = []
  clip = _get(cfg, "grad_clip_norm", 0.0)
  if clip:
    chain.append(optax.clip_by_global_norm(float(clip)))
  chain.append(tx)
  if decoupled and wd:
    # Decoupled decay scales with the schedule like the update (Loshchilov & Hutter).
    chain.append(_decoupled_decay(wd, schedule, _kernel_mask))
  return optax.chain(*chain)


class RootAccumulatorState(NamedTuple):
  """The running sum (AdaGrad) or leaky average (RMSProp) of squared gradients."""
  r: Any


def scale_by_root_accumulator(decay: float | None, eps: float,
                              initial: float = 0.0) -> optax.GradientTransformation:
  """g -> g / (eps + sqrt(r)), the slides' AdaGrad (decay None: r <- r + g^2) or
  RMSProp (r <- decay r + (1 - decay) g^2).

  The learning rate and sign come from a following ``scale_by_learning_rate``. Where
  the denominator is exactly zero (eps = 0 and every gradient so far was zero) the
  update is zero rather than 0/0.
  """
  if eps < 0:
    raise ConfigError(f"optim.eps must be >= 0, got {eps}.")

  def init(params):
    return RootAccumulatorState(
        r=jax.tree.map(lambda p: jnp.full_like(p, initial), params))

  def update(updates, state, params=None):
    del params
    if decay is None:
      r = jax.tree.map(lambda r, g: r + jnp.square(g), state.r, updates)
    else:
      r = jax.tree.map(lambda r, g: decay * r + (1 - decay) * jnp.square(g),
                       state.r, updates)

    def scale(g, r):
      denom = eps + jnp.sqrt(r)
      return jnp.where(denom > 0, g / jnp.where(denom > 0, denom, 1), 0).astype(g.dtype)

    return jax.tree.map(scale, updates, r), RootAccumulatorState(r=r)

  return optax.GradientTransformation(init, update)


def _decoupled_decay(wd: float, schedule: Schedule,
                     mask: Callable) -> optax.GradientTransformation:
  """updates += -lr(step) * wd * w on kernels, after the update rule."""

  def init(params):
    del params
    return optax.ScaleByScheduleState(count=jnp.zeros([], jnp.int32))

  def update(updates, state, params=None):
    lr = schedule(state.count)
    keep = mask(params)
    updates = jax.tree.map(lambda u, p, k: u - lr * wd * p if k else u,
                           updates, params, keep)
    return updates, optax.ScaleByScheduleState(count=optax.safe_increment(state.count))

  return optax.GradientTransformation(init, update)


def _kernel_mask(params: Any) -> Any:
  """True for the weights the papers decay: conv and dense kernels, not biases or BN."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: getattr(path[-1], "key", None) == "kernel", params)


def l2_penalty(params: Any, weight_decay: float) -> jax.Array:
  """wd/2 * sum of squared conv/dense kernels (gradient wd * W, SGD's weight decay)."""
  if not weight_decay:
    return jnp.zeros([], jnp.float32)
  leaves = [p for p, keep in zip(jax.tree.leaves(params), jax.tree.leaves(_kernel_mask(params)))
            if keep]
  return 0.5 * weight_decay * sum(jnp.sum(jnp.square(p.astype(jnp.float32))) for p in leaves)


def uses_l2_in_loss(cfg: Any) -> bool:
  """Whether weight decay goes into the loss (the papers' way) rather than the update."""
  return _get(cfg, "name", "sgd") != "adamw" and not bool(
      _get(cfg, "decoupled_weight_decay", False))


# ----------------------------------------------------------------------------------
# Reduce on plateau: a host-side rule over evaluation results
# ----------------------------------------------------------------------------------

def update_plateau(lr_scale: float, best: float, bad_evals: int, metric: float, *,
                   factor: float = 0.1, patience: int = 1, mode: str = "min",
                   min_scale: float = 1e-4) -> tuple[float, float, int]:
  """One evaluation's effect on (lr_scale, best, bad_evals): after `patience`
  evaluations without improvement the rate is multiplied by `factor`."""
  improved = metric < best if mode == "min" else metric > best
  if improved:
    return lr_scale, metric, 0
  bad_evals += 1
  if bad_evals >= patience:
    return max(lr_scale * factor, min_scale), best, 0
  return lr_scale, best, bad_evals

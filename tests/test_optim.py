"""The course's update rules and the papers' schedules, checked against hand arithmetic."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from cnn import optim
from cnn.errors import ConfigError


def _steps(name, grads, lr=0.1, **kw):
  """Applies the optimizer to w0 = 1.0 with the given gradient sequence."""
  cfg = ml_collections.ConfigDict({"name": name, **kw})
  tx = optim.make_optimizer(cfg, optim.make_schedule({"name": "constant"}, lr))
  params = {"w": jnp.array(1.0)}
  state = tx.init(params)
  out = []
  for g in grads:
    updates, state = tx.update({"w": jnp.array(g)}, state, params)
    params = jax.tree.map(lambda p, u: p + u, params, updates)
    out.append(float(params["w"]))
  return out


def test_sgd_is_w_minus_lr_g():
  # w1 = 1 - 0.1 * 2 = 0.8; w2 = 0.8 - 0.1 * (-1) = 0.9
  assert _steps("sgd", [2.0, -1.0]) == pytest.approx([0.8, 0.9])


def test_momentum_accumulates_velocity():
  # v1 = g1 = 2, w1 = 1 - 0.1*2 = 0.8; v2 = 0.9*2 + 1 = 2.8, w2 = 0.8 - 0.28 = 0.52
  assert _steps("momentum", [2.0, 1.0], momentum=0.9) == pytest.approx([0.8, 0.52])


def test_nesterov_matches_the_course_form():
  # Course: v <- mu v - lr g; w <- w - mu v_prev + (1 + mu) v.
  # Step 1: v = -0.2, w = 1 + 1.9 * (-0.2) = 0.62.
  # Step 2: v = 0.9 * -0.2 - 0.1 * 1 = -0.28; w = 0.62 + 0.9*0.2 + 1.9*(-0.28) = 0.268.
  assert _steps("nesterov", [2.0, 1.0], momentum=0.9) == pytest.approx([0.62, 0.268])


def test_adagrad_divides_by_root_of_summed_squares():
  # G1 = 4, w1 = 1 - 0.1 * 2/2 = 0.9; G2 = 4 + 1 = 5, w2 = 0.9 - 0.1 / sqrt(5)
  got = _steps("adagrad", [2.0, 1.0])
  assert got == pytest.approx([0.9, 0.9 - 0.1 / np.sqrt(5.0)], rel=1e-6)


def test_rmsprop_uses_a_leaky_average_of_squares():
  # s1 = 0.1 * 4 = 0.4, w1 = 1 - 0.1 * 2 / sqrt(0.4)
  # s2 = 0.9 * 0.4 + 0.1 * 1 = 0.46, w2 = w1 - 0.1 * 1 / sqrt(0.46)
  w1 = 1 - 0.1 * 2 / np.sqrt(0.4)
  got = _steps("rmsprop", [2.0, 1.0], decay=0.9)
  assert got == pytest.approx([w1, w1 - 0.1 / np.sqrt(0.46)], rel=1e-6)


def test_adam_with_bias_correction():
  # t=1: m = 0.1*2 = 0.2, v = 0.001*4 = 0.004; m^ = 2, v^ = 4; w1 = 1 - 0.1 * 2/2 = 0.9
  # t=2: m = 0.9*0.2 + 0.1*1 = 0.28, v = 0.999*0.004 + 0.001*1 = 0.004996
  #      m^ = 0.28/0.19, v^ = 0.004996/0.001999; w2 = 0.9 - 0.1 m^/sqrt(v^)
  m_hat, v_hat = 0.28 / (1 - 0.9 ** 2), 0.004996 / (1 - 0.999 ** 2)
  got = _steps("adam", [2.0, 1.0])
  assert got == pytest.approx([0.9, 0.9 - 0.1 * m_hat / np.sqrt(v_hat)], rel=1e-5)


def test_adamw_decays_weights_decoupled():
  # Adam step as above (0.1) plus lr * wd * w = 0.1 * 0.5 * 1.0 on the 'kernel' leaf.
  cfg = ml_collections.ConfigDict({"name": "adamw", "weight_decay": 0.5})
  tx = optim.make_optimizer(cfg, optim.make_schedule({"name": "constant"}, 0.1))
  params = {"kernel": jnp.array(1.0), "bias": jnp.array(1.0)}
  updates, _ = tx.update({"kernel": jnp.array(2.0), "bias": jnp.array(2.0)},
                         tx.init(params), params)
  assert float(updates["kernel"]) == pytest.approx(-0.1 - 0.05, rel=1e-5)
  assert float(updates["bias"]) == pytest.approx(-0.1, rel=1e-5)


def test_l2_penalty_only_on_kernels_and_its_gradient_is_wd_w():
  params = {"conv": {"kernel": jnp.array([1.0, -2.0]), "bias": jnp.array([3.0])},
            "bn": {"scale": jnp.array([4.0])}}
  # wd/2 * (1 + 4) = 0.5 * 0.1 * 5 = 0.25
  assert float(optim.l2_penalty(params, 0.1)) == pytest.approx(0.25)
  grads = jax.grad(lambda p: optim.l2_penalty(p, 0.1))(params)
  np.testing.assert_allclose(grads["conv"]["kernel"], [0.1, -0.2], rtol=1e-6)
  assert float(grads["conv"]["bias"][0]) == 0.0


def test_he_cifar_schedule():
  # He et al.: 0.1, /10 at 32k and 48k iterations.
  s = optim.make_schedule({"name": "piecewise", "boundaries": [32000, 48000], "decay": 0.1},
                          0.1)
  got = [float(s(t)) for t in (0, 31999, 32000, 47999, 48000, 63999)]
  assert got == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001, 0.001])


def test_resnet110_warmup_at_001_for_400_steps():
  s = optim.make_schedule({"name": "piecewise", "boundaries": [32000, 48000],
                           "warmup_steps": 400, "warmup_lr": 0.01}, 0.1)
  got = [float(s(t)) for t in (0, 399, 400, 32000)]
  assert got == pytest.approx([0.01, 0.01, 0.1, 0.01])


def test_googlenet_exponential_step():
  # -4 % every 8 epochs (here every 100 steps): 0.01 * 0.96^k
  s = optim.make_schedule({"name": "exponential", "every": 100, "rate": 0.96}, 0.01)
  got = [float(s(t)) for t in (0, 99, 100, 250)]
  assert got == pytest.approx([0.01, 0.01, 0.0096, 0.01 * 0.96 ** 2])


def test_cosine_with_linear_warmup():
  s = optim.make_schedule({"name": "cosine", "warmup_steps": 10, "warmup_lr": 0.0,
                           "decay_steps": 110}, 1.0)
  # warm-up: 0 -> 1 linearly over 10 steps; half-way through the cosine (step 60): 0.5
  assert [float(s(t)) for t in (0, 5, 10, 60, 110)] == pytest.approx(
      [0.0, 0.5, 1.0, 0.5, 0.0], abs=1e-6)


def test_reduce_on_plateau_divides_by_ten_after_patience():
  scale, best, bad = 1.0, float("inf"), 0
  trace = []
  for err in (0.5, 0.4, 0.41, 0.42, 0.39, 0.40):
    scale, best, bad = optim.update_plateau(scale, best, bad, err, factor=0.1, patience=2)
    trace.append(scale)
  # improves, improves, worse (1 bad), worse (2 bad -> /10), improves, worse (1 bad)
  assert trace == pytest.approx([1.0, 1.0, 1.0, 0.1, 0.1, 0.1])


@pytest.mark.parametrize("cfg,lr", [
    ({"name": "lbfgs"}, 0.1),
    ({"name": "sgd"}, 0.0),
    ({"name": "sgd"}, -1.0),
])
def test_bad_optimizer_config_is_one_sentence(cfg, lr):
  with pytest.raises(ConfigError):
    optim.make_optimizer(ml_collections.ConfigDict(cfg),
                         optim.make_schedule({"name": "constant"}, lr))


def test_unknown_schedule():
  with pytest.raises(ConfigError, match="valid choices"):
    optim.make_schedule({"name": "triangle"}, 0.1)

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


# --- The slides' AdaGrad / RMSProp: delta outside the square root -------------------

def test_adagrad_large_delta_is_outside_the_root():
  # Slides: r = 4, dw = -0.1 * 2 / (0.5 + sqrt(4)) = -0.08 (delta inside: -0.0943).
  # Step 2: r = 5, dw = -0.1 * 1 / (0.5 + sqrt(5)).
  got = _steps("adagrad", [2.0, 1.0], eps=0.5)
  assert got == pytest.approx([0.92, 0.92 - 0.1 / (0.5 + np.sqrt(5.0))], rel=1e-6)


def test_rmsprop_large_delta_is_outside_the_root():
  # r = 0.1 * 4 = 0.4, dw = -0.2 / (0.5 + sqrt(0.4)) = -0.176607 (delta inside: -0.2108).
  got = _steps("rmsprop", [2.0], eps=0.5, decay=0.9)
  assert got[0] == pytest.approx(1 - 0.2 / (0.5 + np.sqrt(0.4)), rel=1e-6)
  assert got[0] == pytest.approx(1 - 0.176607, abs=1e-6)


def test_explicit_zero_eps_is_honoured():
  # delta = 0: AdaGrad's first step is exactly -lr * g / |g| = -0.1 (1e-8 would not be).
  cfg = ml_collections.ConfigDict({"name": "adagrad", "eps": 0.0})
  tx = optim.make_optimizer(cfg, optim.make_schedule({"name": "constant"}, 0.1))
  g = jnp.array(1e-7, jnp.float32)
  updates, _ = tx.update({"w": g}, tx.init({"w": jnp.array(1.0)}))
  # With delta = 1e-8 the step would be -0.1 * 1e-7 / 1.1e-7 = -0.0909.
  assert float(updates["w"]) == pytest.approx(-0.1, rel=1e-5)
  # A zero gradient with r = 0 and delta = 0 gives a zero step, not 0/0.
  updates, _ = tx.update({"w": jnp.array(0.0)}, tx.init({"w": jnp.array(1.0)}))
  assert float(updates["w"]) == 0.0


def test_eps_none_means_the_default():
  # g = 1e-7: -0.1 * 1e-7 / (1e-8 + 1e-7) = -0.0909...
  got = _steps("adagrad", [1e-7], eps=None)
  assert got[0] == pytest.approx(1 - 0.1 / 1.1, rel=1e-4)


@pytest.mark.parametrize("name,kw,torch_cls,torch_kw", [
    ("adagrad", {"eps": 0.5}, "Adagrad", {"eps": 0.5}),
    ("adagrad", {"eps": 0.3, "initial_accumulator": 0.2}, "Adagrad",
     {"eps": 0.3, "initial_accumulator_value": 0.2}),
    ("rmsprop", {"eps": 0.5, "decay": 0.9}, "RMSprop", {"eps": 0.5, "alpha": 0.9}),
    ("rmsprop", {"eps": 1e-3, "decay": 0.99}, "RMSprop", {"eps": 1e-3, "alpha": 0.99}),
])
def test_matches_torch_optim_over_several_steps(name, kw, torch_cls, torch_kw):
  torch = pytest.importorskip("torch")
  rng = np.random.default_rng(0)
  w0 = rng.normal(size=(5,)).astype(np.float32)
  grads = rng.normal(size=(6, 5)).astype(np.float32) * 3

  w_t = torch.nn.Parameter(torch.tensor(w0))
  opt = getattr(torch.optim, torch_cls)([w_t], lr=0.1, **torch_kw)
  expected = []
  for g in grads:
    opt.zero_grad()
    w_t.grad = torch.tensor(g)
    opt.step()
    expected.append(w_t.detach().numpy().copy())

  cfg = ml_collections.ConfigDict({"name": name, **kw})
  tx = optim.make_optimizer(cfg, optim.make_schedule({"name": "constant"}, 0.1))
  params = {"w": jnp.asarray(w0)}
  state = tx.init(params)
  for g, want in zip(grads, expected):
    updates, state = tx.update({"w": jnp.asarray(g)}, state, params)
    params = optax_apply(params, updates)
    np.testing.assert_allclose(params["w"], want, rtol=1e-5, atol=1e-6)


def optax_apply(params, updates):
  return jax.tree.map(lambda p, u: p + u, params, updates)

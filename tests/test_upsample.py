"""Upsampling and max-unpooling with switches, checked against PyTorch and by hand."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnn import layers
from cnn.errors import ConfigError

torch = pytest.importorskip("torch")
F = torch.nn.functional


def _nchw(x):
  return torch.tensor(np.transpose(x, (0, 3, 1, 2)))


def _nhwc(t):
  return np.transpose(t.detach().numpy(), (0, 2, 3, 1))


@pytest.mark.parametrize("method", ["nearest", "bilinear", "bicubic"])
@pytest.mark.parametrize("factor,shape", [(2, (2, 5, 7, 3)), (3, (1, 4, 4, 2)),
                                          ((2, 4), (2, 3, 6, 1))])
def test_upsample_matches_torch_interpolate(method, factor, shape):
  x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
  kw = {} if method == "nearest" else {"align_corners": False}
  sf = factor if isinstance(factor, int) else tuple(float(f) for f in factor)
  want = _nhwc(F.interpolate(_nchw(x), scale_factor=sf, mode=method, **kw))
  got = layers.upsample(jnp.asarray(x), factor, method)
  assert got.shape == want.shape
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)


def test_bilinear_by_hand():
  # [0, 4] upsampled 2x: sources -0.25 (clamped to 0), 0.25, 0.75, 1.25 (-> index 1).
  x = jnp.array([0.0, 4.0]).reshape(1, 1, 2, 1)
  got = layers.upsample(x, (1, 2), "bilinear")[0, 0, :, 0]
  np.testing.assert_allclose(got, [0.0, 1.0, 3.0, 4.0], atol=1e-6)


def test_bicubic_by_hand():
  # [0, 4] 2x, a = -0.75. Output 1 samples 0.25: t = 0.25, neighbours -1, 0, 1, 2 clamped
  # to 0, 0, 1, 1 with weights w0..w3; value = 4 * (w2 + w3).
  a, t = -0.75, 0.25
  w2 = ((a + 2) * (1 - t) - (a + 3)) * (1 - t) ** 2 + 1
  w3 = ((a * (2 - t) - 5 * a) * (2 - t) + 8 * a) * (2 - t) - 4 * a
  x = jnp.array([0.0, 4.0]).reshape(1, 1, 2, 1)
  got = layers.upsample(x, (1, 2), "bicubic")[0, 0, :, 0]
  assert float(got[1]) == pytest.approx(4 * (w2 + w3), abs=1e-6)
  # w2 = 0.26171875, w3 = -0.03515625: 4 * 0.2265625 = 0.90625.
  assert float(got[1]) == pytest.approx(0.90625, abs=1e-6)


def test_upsample_module_and_bad_method():
  x = jnp.ones((1, 2, 2, 1))
  y = layers.Upsample(2, "bilinear").apply({}, x)
  assert y.shape == (1, 4, 4, 1)
  np.testing.assert_allclose(y, 1.0, atol=1e-6)
  with pytest.raises(ConfigError, match="valid choices"):
    layers.upsample(x, 2, "trilinear")


@pytest.mark.parametrize("shape,window,strides,padding", [
    ((2, 8, 6, 3), 2, None, "VALID"),
    ((1, 7, 9, 2), 3, 2, "VALID"),
    ((2, 7, 7, 4), 3, 2, 1),
])
def test_max_pool_indices_and_unpool_match_torch(shape, window, strides, padding):
  x = np.random.default_rng(1).normal(size=shape).astype(np.float32)
  s = window if strides is None else strides
  p = 0 if padding == "VALID" else padding
  want_y, want_i = F.max_pool2d(_nchw(x), window, s, p, return_indices=True)
  y, idx = layers.max_pool(jnp.asarray(x), window, strides, padding, return_indices=True)
  np.testing.assert_allclose(np.asarray(y), _nhwc(want_y), rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(idx), _nhwc(want_i))
  # The plain call is unchanged.
  np.testing.assert_allclose(layers.max_pool(jnp.asarray(x), window, strides, padding), y)
  want_u = F.max_unpool2d(want_y, want_i, window, s, p, output_size=shape[1:3])
  got_u = layers.max_unpool(y, idx, output_shape=shape[1:3])
  np.testing.assert_allclose(np.asarray(got_u), _nhwc(want_u), rtol=1e-6)


def test_max_unpool_by_hand_and_default_shape():
  # One 2x2 window [[1, 5], [3, 2]]: the max 5 sits at (0, 1) -> index 1.
  x = jnp.array([[1.0, 5.0], [3.0, 2.0]]).reshape(1, 2, 2, 1)
  y, idx = layers.max_pool(x, 2, return_indices=True)
  assert int(idx[0, 0, 0, 0]) == 1 and float(y[0, 0, 0, 0]) == 5.0
  u = layers.max_unpool(y, idx)  # default (1 - 1) * 2 + 2 = 2
  np.testing.assert_array_equal(u[0, :, :, 0], [[0.0, 5.0], [0.0, 0.0]])


def test_max_unpool_gradient_flows_through_the_switches():
  x = jnp.array([[1.0, 5.0], [3.0, 2.0]]).reshape(1, 2, 2, 1)

  def f(x):
    y, idx = layers.max_pool(x, 2, return_indices=True)
    return jnp.sum(layers.max_unpool(y, idx, output_shape=(2, 2)) * 2.0)

  np.testing.assert_array_equal(jax.grad(f)(x)[0, :, :, 0], [[0.0, 2.0], [0.0, 0.0]])


def test_max_unpool_shape_mismatch():
  with pytest.raises(ConfigError, match="same shape"):
    layers.max_unpool(jnp.zeros((1, 2, 2, 1)), jnp.zeros((1, 2, 1, 1), jnp.int32))


def test_max_pool_ties_go_to_the_first_maximum_like_torch():
  x = np.zeros((1, 4, 4, 2), np.float32)
  x[0, 1, 1, 1] = x[0, 0, 1, 1] = 1.0  # a tie inside the first window of channel 1
  _, want_i = F.max_pool2d(_nchw(x), 2, return_indices=True)
  _, idx = layers.max_pool(jnp.asarray(x), 2, return_indices=True)
  np.testing.assert_array_equal(np.asarray(idx), _nhwc(want_i))
  assert int(idx[0, 0, 0, 1]) == 1 and int(idx[0, 0, 0, 0]) == 0

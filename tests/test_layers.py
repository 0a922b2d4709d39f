"""The course's layers checked against the worked examples of its decks.

Every expected number is computed by hand in a comment (or quoted from the slide it
comes from), never taken from the library's own output. Deck names refer to the files
in /work/shared/course/:

- 01: 01-convnets-intro-warsaw.md     - 02: 02-cnn-architectures.md
- 03: 03-optimization-and-cnns.md     - 04: 04-convolutional-networks-sharif.md
- 05: 05-cnns-galvanize.md
"""
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from cnn import conv as conv_lib
from cnn import layers
from cnn.errors import ConfigError

KEY = jax.random.key(0)


def _apply_conv(module, x, kernel, bias=None):
  """Runs a Conv-like module with the given kernel (and bias, zero if None)."""
  params = {"kernel": jnp.asarray(kernel, jnp.float32)}
  if getattr(module, "use_bias", False):
    features = params["kernel"].shape[-1]
    params["bias"] = (jnp.zeros((features,)) if bias is None
                      else jnp.asarray(bias, jnp.float32))
  if isinstance(module, layers.ConvTranspose):
    params = {"deconv": params}  # it wraps flax's ConvTranspose under that name
  return module.apply({"params": params}, jnp.asarray(x, jnp.float32))


def _image(rows):
  """A (1, H, W, 1) batch from a 2-D list of numbers, as the slides write images."""
  return jnp.asarray(rows, jnp.float32)[None, :, :, None]


def _shapes(module, input_shape, **kwargs):
  """(output shape, parameter shapes) of `module` on `input_shape`, with no compute."""
  out, variables = jax.eval_shape(
      lambda: module.init_with_output(KEY, jnp.zeros(input_shape), **kwargs))
  return out.shape, jax.tree.map(lambda a: a.shape, variables)


def _num_params(module, input_shape):
  _, shapes = _shapes(module, input_shape)
  return sum(math.prod(s) for s in jax.tree.leaves(
      shapes["params"], is_leaf=lambda s: isinstance(s, tuple)))


# ----------------------------------------------------------------------------------
# Worked convolution examples
# ----------------------------------------------------------------------------------

def test_course_2x2_filter_over_3x3_image():
  # Deck 03, "Discrete Convolution" (slides 36-41): image x = [[0,80,40],[20,40,0],
  # [0,0,40]], kernel k = [[0,.25],[.5,1]]; a true convolution flips k into the
  # "filter" [[1,.5],[.25,0]] and slides it (VALID, stride 1) giving a 2x2 output:
  #   1*0  + .5*80 + .25*20 + 0*40 = 45     1*80 + .5*40 + .25*40 + 0*0  = 110
  #   1*20 + .5*40 + .25*0  + 0*0  = 40     1*40 + .5*0  + .25*0  + 0*40 = 40
  # Conv (like every CNN library) is cross-correlation, so its weights are the filter.
  x = _image([[0, 80, 40], [20, 40, 0], [0, 0, 40]])
  k = np.array([[0, .25], [.5, 1]], np.float32)
  conv_filter = k[::-1, ::-1]
  np.testing.assert_array_equal(conv_filter, [[1, .5], [.25, 0]])
  conv = layers.Conv(1, kernel_size=2, strides=1, padding="VALID")
  y = _apply_conv(conv, x, conv_filter[:, :, None, None])
  assert y.shape == (1, 2, 2, 1)
  np.testing.assert_allclose(y[0, :, :, 0], [[45, 110], [40, 40]])
  # The bias is added once per output pixel.
  y = _apply_conv(conv, x, conv_filter[:, :, None, None], bias=[1.0])
  np.testing.assert_allclose(y[0, :, :, 0], [[46, 111], [41, 41]])


def test_galvanize_convolution_exercise():
  # Deck 05, "Breakout: Convolution Exercise": the 5x5 upper-triangular image of ones
  # with the filter [[1,1,1],[1,4,1],[1,1,1]] (VALID): each output is the sum of its
  # 3x3 window plus 3 times the centre, e.g. top-left: window 1+1+1+0+1+1+0+0+1 = 6,
  # centre 1 -> 9; bottom-left: window 0+0+1+0+0+0+0+0+0 = 1, centre 0 -> 1.
  x = _image([[1, 1, 1, 1, 1],
              [0, 1, 1, 1, 1],
              [0, 0, 1, 1, 1],
              [0, 0, 0, 1, 1],
              [0, 0, 0, 0, 1]])
  w = np.array([[1, 1, 1], [1, 4, 1], [1, 1, 1]], np.float32)
  y = _apply_conv(layers.Conv(1, 3, padding="VALID"), x, w[:, :, None, None])
  np.testing.assert_allclose(y[0, :, :, 0], [[9, 11, 12],
                                             [3, 9, 11],
                                             [1, 3, 9]])


# Deck 02, "1x1 Convolution": the 5x5 image the deck uses for its examples.
DECK02_IMAGE = [[-5, 3, 2, -5, 3],
                [4, 3, 2, 1, -3],
                [1, 0, 3, 3, 5],
                [-2, 0, 1, 4, 4],
                [5, 6, 7, 9, -1]]


def test_deck02_sharpen_kernel_on_5x5_image():
  # Deck 02, "Recall: Convolutions on Images": kernel [[0,-1,0],[-1,5,-1],[0,-1,0]],
  # output 3x3, top-left 5*3 + (-1)*3 + (-1)*2 + (-1)*0 + (-1)*4 = 15 - 9 = 6. The
  # other eight, out = 5*centre - (up + down + left + right):
  #   (0,1): 5*2 - (2+3+3+1) = 1     (0,2): 5*1 - (-5+3+2-3) = 8
  #   (1,0): 5*0 - (3+0+1+3) = -7    (1,1): 5*3 - (2+1+0+3) = 9
  #   (1,2): 5*3 - (1+4+3+5) = 2     (2,0): 5*0 - (0+6-2+1) = -5
  #   (2,1): 5*1 - (3+7+0+4) = -9    (2,2): 5*4 - (3+9+1+4) = 3
  w = np.array([[0, -1, 0], [-1, 5, -1], [0, -1, 0]], np.float32)
  y = _apply_conv(layers.Conv(1, 3, padding="VALID"), _image(DECK02_IMAGE),
                  w[:, :, None, None])
  np.testing.assert_allclose(y[0, :, :, 0], [[6, 1, 8], [-7, 9, 2], [-5, -9, 3]])


def test_1x1_convolution_scales_the_deck02_image():
  # Deck 02, "1x1 Convolution": the 1x1 kernel 2 keeps the 5x5 size and doubles every
  # pixel: -5 * 2 = -10 (top-left) ... -1 * 2 = -2 (bottom-right).
  y = _apply_conv(layers.Conv(1, 1, padding="VALID"), _image(DECK02_IMAGE),
                  [[[[2.0]]]])
  np.testing.assert_allclose(y[0, :, :, 0], [[-10, 6, 4, -10, 6],
                                             [8, 6, 4, 2, -6],
                                             [2, 0, 6, 6, 10],
                                             [-4, 0, 2, 8, 8],
                                             [10, 12, 14, 18, -2]])


def test_1x1_convolution_is_a_per_pixel_dense_layer():
  # Deck 02: a 1x1 convolution with 3 filters is "the same as having a 3 neuron fully
  # connected layer" applied to every pixel's channel vector.
  x = jax.random.normal(jax.random.key(1), (2, 4, 4, 5))
  conv = layers.Conv(3, 1)
  variables = conv.init(KEY, x)
  kernel, bias = variables["params"]["kernel"], variables["params"]["bias"]
  bias = bias + jnp.arange(3.0)  # a non-zero bias, so it is checked too
  y_conv = conv.apply({"params": {"kernel": kernel, "bias": bias}}, x)
  dense = nn.Dense(3)
  y_dense = dense.apply({"params": {"kernel": kernel[0, 0], "bias": bias}},
                        x.reshape(-1, 5)).reshape(2, 4, 4, 3)
  np.testing.assert_allclose(y_conv, y_dense, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------
# Output sizes and parameter counts
# ----------------------------------------------------------------------------------

def test_warsaw_exercise_33x33x5_stride_2():
  # Deck 01, "Convolution - exercise": 33x33x5, 10 filters 3x3, stride 2, no padding
  # -> (33 - 3) / 2 + 1 = 16, so 16x16x10; parameters 10 * (3*3*5 + 1) = 460.
  conv = layers.Conv(10, 3, strides=2, padding="VALID")
  out_shape, _ = _shapes(conv, (1, 33, 33, 5))
  assert out_shape == (1, 16, 16, 10)
  assert _num_params(conv, (1, 33, 33, 5)) == 460


def test_galvanize_questions_32x32x3_pad_2():
  # Deck 05, "Question #1/#2" (and deck 03 slide 55): 32x32x3, 10 5x5 filters, stride
  # 1, pad 2 -> (32 + 2*2 - 5) / 1 + 1 = 32, so 32x32x10; each filter has
  # 5*5*3 + 1 = 76 parameters -> 76 * 10 = 760.
  conv = layers.Conv(10, 5, strides=1, padding=2)
  out_shape, _ = _shapes(conv, (1, 32, 32, 3))
  assert out_shape == (1, 32, 32, 10)
  assert _num_params(conv, (1, 32, 32, 3)) == 760


@pytest.mark.parametrize("stride, expected", [(1, 5), (2, 3)])
def test_7x7_input_3x3_filter(stride, expected):
  # Deck 02 "Convolution Layers: Dimensions" / deck 03 slide 52 / deck 05:
  # (7 - 3)/1 + 1 = 5 and (7 - 3)/2 + 1 = 3.
  assert layers.conv_output_size(7, 3, 0, stride) == expected
  out_shape, _ = _shapes(layers.Conv(1, 3, strides=stride, padding="VALID"),
                         (1, 7, 7, 1))
  assert out_shape == (1, expected, expected, 1)


class _Named(nn.Module):
  """A parent module, so the Conv inside has a name to put in its errors."""

  @nn.compact
  def __call__(self, x):
    return layers.Conv(10, 3, strides=3, padding="VALID", name="conv1")(x)


def test_7x7_input_stride_3_is_fractional():
  # Deck 02: N=7, F=3, S=3: (7-3)/3 + 1 = 2.3333, "Fractions are illegal"; deck 03
  # slide 51: "cannot apply 3x3 filter on 7x7 input with stride 3".
  with pytest.raises(ConfigError) as err:
    layers.conv_output_size(7, 3, 0, 3, layer="conv1")
  message = str(err.value)
  for part in ("conv1", "7", "3", "2.33", "fractional"):
    assert part in message
  with pytest.raises(ConfigError) as err:
    _Named().init(KEY, jnp.zeros((1, 7, 7, 1)))
  message = str(err.value)
  assert "conv1" in message and "(7 - 3" in message and "2.33" in message
  assert "\n" not in message
  # PyTorch's rule floors instead: strict=False gives floor(2.33) = 2.
  out_shape, _ = _shapes(layers.Conv(1, 3, strides=3, padding="VALID", strict=False),
                         (1, 7, 7, 1))
  assert out_shape == (1, 2, 2, 1)


@pytest.mark.parametrize("f, p", [(3, 1), (5, 2), (7, 3)])
def test_zero_padding_f_minus_1_over_2_preserves_size(f, p):
  # Deck 03 slide 54 / deck 05: stride 1 and pad (F-1)/2 preserve size:
  # F=3 -> pad 1, F=5 -> pad 2, F=7 -> pad 3; e.g. (7 + 2*1 - 3)/1 + 1 = 7.
  assert layers.conv_output_size(7, f, p, 1) == 7
  assert layers.conv_output_size(7, f, "SAME", 1) == 7


def test_conv_output_size_examples():
  # Deck 03 slide 35: 32x32x3 with 6 5x5 filters -> (32 - 5)/1 + 1 = 28 -> 28x28x6.
  assert layers.conv_output_size(32, 5) == 28
  # Deck 01/04, AlexNet CONV1: 227, 11x11 stride 4 pad 0 -> (227 - 11)/4 + 1 = 55;
  # CONV2 5x5 pad 2 keeps 27: (27 + 4 - 5)/1 + 1 = 27; the 3x3/2 pools:
  # (55 - 3)/2 + 1 = 27, (27 - 3)/2 + 1 = 13, (13 - 3)/2 + 1 = 6.
  assert layers.conv_output_size(227, 11, 0, 4) == 55
  assert layers.conv_output_size(27, 5, 2, 1) == 27
  assert [layers.conv_output_size(n, 3, 0, 2) for n in (55, 27, 13)] == [27, 13, 6]
  # Asymmetric padding (lo, hi): (7 - 3 + 1 + 0)/1 + 1 = 6.
  assert layers.conv_output_size(7, 3, (1, 0)) == 6
  assert layers.conv_output_size(7, 3, "VALID", 2) == 3


def test_conv_output_size_dilation_and_same():
  # Deck 04, dilated convolution: a 2-dilated 3x3 kernel covers d(F-1)+1 = 2*2+1 = 5
  # pixels, a 4-dilated one 4*2+1 = 9. So (7 - 5)/1 + 1 = 3, (9 - 9)/1 + 1 = 1,
  # (15 - 9)/2 + 1 = 4.
  assert layers.conv_output_size(7, 3, dilation=2) == 3
  assert layers.conv_output_size(9, 3, dilation=4) == 1
  assert layers.conv_output_size(15, 3, 0, 2, dilation=4) == 4
  # Padding 2 around a 2-dilated 3x3 preserves size: (7 + 4 - 5)/1 + 1 = 7.
  assert layers.conv_output_size(7, 3, 2, 1, dilation=2) == 7
  # SAME (TensorFlow's rule) is ceil(N / S) whatever the kernel:
  # ceil(7/1) = 7, ceil(7/2) = 4, ceil(224/2) = 112, ceil(7/3) = 3.
  assert layers.conv_output_size(7, 3, "SAME", 1) == 7
  assert layers.conv_output_size(7, 3, "SAME", 2) == 4
  assert layers.conv_output_size(224, 7, "same", 2) == 112
  assert layers.conv_output_size(7, 5, "SAME", 3, dilation=2) == 3
  with pytest.raises(ConfigError, match="smaller than its 9-wide window"):
    layers.conv_output_size(7, 3, dilation=4, layer="atrous")


def test_conv_layer_honours_dilation_and_same_shapes():
  # 7x7 with a 2-dilated 3x3 VALID: 3 (above); SAME stride 2: ceil(7/2) = 4.
  out_shape, _ = _shapes(layers.Conv(2, 3, padding="VALID", dilation=2), (1, 7, 7, 1))
  assert out_shape == (1, 3, 3, 2)
  out_shape, _ = _shapes(layers.Conv(2, 3, strides=2, padding="SAME"), (1, 7, 7, 1))
  assert out_shape == (1, 4, 4, 2)


# ----------------------------------------------------------------------------------
# Pooling
# ----------------------------------------------------------------------------------

# Deck 05, "Breakout: Max Pooling Exercise", the 6x6x1 input.
POOL_EXERCISE = [[2, 7, 5, 5, 3, 3],
                 [6, 3, 0, 3, 4, 0],
                 [6, 3, 9, 0, 2, 3],
                 [0, 1, 6, 2, 6, 6],
                 [6, 3, 0, 5, 1, 0],
                 [7, 3, 6, 4, 0, 5]]


def test_max_pool_2x2_stride_2_exercise():
  # Deck 05: max over each 2x2 block:
  #   max(2,7,6,3)=7  max(5,5,0,3)=5  max(3,3,4,0)=4
  #   max(6,3,0,1)=6  max(9,0,6,2)=9  max(2,3,6,6)=6
  #   max(6,3,7,3)=7  max(0,5,6,4)=6  max(1,0,0,5)=5
  y = layers.max_pool(_image(POOL_EXERCISE), 2, 2)
  np.testing.assert_array_equal(y[0, :, :, 0], [[7, 5, 4], [6, 9, 6], [7, 6, 5]])
  # The module does the same (stride defaults to the window).
  y = layers.MaxPool(2).apply({}, _image(POOL_EXERCISE))
  np.testing.assert_array_equal(y[0, :, :, 0], [[7, 5, 4], [6, 9, 6], [7, 6, 5]])


def test_avg_pool_2x2_stride_2_exercise():
  # The same blocks averaged: 18/4, 13/4, 10/4 / 10/4, 17/4, 17/4 / 19/4, 15/4, 6/4.
  y = layers.avg_pool(_image(POOL_EXERCISE), 2, 2)
  np.testing.assert_allclose(y[0, :, :, 0], [[4.5, 3.25, 2.5],
                                             [2.5, 4.25, 4.25],
                                             [4.75, 3.75, 1.5]])
  y = layers.AvgPool(2).apply({}, _image(POOL_EXERCISE))
  np.testing.assert_allclose(y[0, 0, 0, 0], 4.5)


def test_avg_pool_does_not_count_padding():
  # SAME 2x2/2 on a 3x3 of ones pads one row and column of zeros: with the padded
  # zeros not counted every window averages to exactly 1 (counted, the corner would be
  # 1/4).
  y = layers.avg_pool(jnp.ones((1, 3, 3, 1)), 2, 2, "SAME")
  np.testing.assert_allclose(y[0, :, :, 0], np.ones((2, 2)))


def test_max_pool_3x3_stride_2():
  # Deck 01/05, the other common setting F=3, S=2. On the exercise's 6x6:
  # (6 - 3)/2 + 1 = 2.5 is fractional and must be rejected.
  with pytest.raises(ConfigError, match="2.5"):
    layers.max_pool(_image(POOL_EXERCISE), 3, 2)
  # On its bottom-right 5x5 (rows and columns 1..5): (5 - 3)/2 + 1 = 2, windows
  #   rows 1-3, cols 1-3: 3,0,3,3,9,0,1,6,2 -> 9   rows 1-3, cols 3-5: 3,4,0,0,2,3,2,6,6 -> 6
  #   rows 3-5, cols 1-3: 1,6,2,3,0,5,3,6,4 -> 6   rows 3-5, cols 3-5: 2,6,6,5,1,0,4,0,5 -> 6
  crop = np.asarray(POOL_EXERCISE)[1:, 1:]
  y = layers.max_pool(_image(crop), 3, 2)
  np.testing.assert_array_equal(y[0, :, :, 0], [[9, 6], [6, 6]])
  # AlexNet's MAX POOL1: 55x55x96 -> 27x27x96.
  assert jax.eval_shape(lambda x: layers.max_pool(x, 3, 2),
                        jnp.zeros((1, 55, 55, 96))).shape == (1, 27, 27, 96)


def test_global_average_pooling():
  # The exercise's 6x6 sums row by row to 25+16+23+21+15+25 = 125 -> 125/36.
  y = layers.global_avg_pool(_image(POOL_EXERCISE))
  assert y.shape == (1, 1)
  np.testing.assert_allclose(y[0, 0], 125 / 36, rtol=1e-6)
  # Two channels are averaged separately.
  x = jnp.stack([jnp.ones((4, 4)), 3 * jnp.ones((4, 4))], axis=-1)[None]
  np.testing.assert_allclose(layers.GlobalAvgPool().apply({}, x), [[1.0, 3.0]])
  # Deck 01, GoogLeNet: "Average pool ... from a 7x7x1024 volume to a 1x1x1024 volume".
  assert jax.eval_shape(layers.global_avg_pool,
                        jnp.zeros((2, 7, 7, 1024))).shape == (2, 1024)


# ----------------------------------------------------------------------------------
# Depthwise-separable and grouped convolutions
# ----------------------------------------------------------------------------------

def _multiplications(kernel_shape, output_shape):
  """Multiplications of one image through a conv: every output pixel of every output
  channel is a dot product over the K*K*(C_in/groups) inputs of its filter, so it is
  prod(kernel shape (K, K, C_in/g, C_out)) * H_out * W_out."""
  return math.prod(kernel_shape) * output_shape[1] * output_shape[2]


def test_separable_conv_multiplication_counts():
  # Deck 02, "But why?": on an input giving 8x8 output locations (12x12x3, 5x5 VALID):
  #   standard:  256 kernels 5x5x3:   256*5*5*3*(8*8) = 1,228,800
  #   depthwise: 3 kernels 5x5x1:     5*5*3*(8*8)     = 4,800
  #   pointwise: 256 kernels 1x1x3:   256*1*1*3*(8*8) = 49,152
  input_shape = (1, 12, 12, 3)
  out_shape, shapes = _shapes(layers.Conv(256, 5, padding="VALID", use_bias=False),
                              input_shape)
  assert out_shape == (1, 8, 8, 256)
  assert _multiplications(shapes["params"]["kernel"], out_shape) == 1_228_800

  sep = layers.SeparableConv(256, 5, padding="VALID")
  out_shape, shapes = _shapes(sep, input_shape, capture_intermediates=True)
  assert out_shape == (1, 8, 8, 256)
  depthwise_kernel = shapes["params"]["depthwise"]["kernel"]
  pointwise_kernel = shapes["params"]["pointwise"]["kernel"]
  assert depthwise_kernel == (5, 5, 1, 3)      # "3 kernels of size 5x5x1"
  assert pointwise_kernel == (1, 1, 3, 256)    # "256 kernels of size 1x1x3"
  (depthwise_out,) = shapes["intermediates"]["depthwise"]["__call__"]
  (pointwise_out,) = shapes["intermediates"]["pointwise"]["__call__"]
  assert depthwise_out == (1, 8, 8, 3)
  assert _multiplications(depthwise_kernel, depthwise_out) == 4_800
  assert _multiplications(pointwise_kernel, pointwise_out) == 49_152
  # 4,800 + 49,152 = 53,952, about 23 times fewer than 1,228,800.
  assert 1_228_800 // (4_800 + 49_152) == 22


def test_inception_bottleneck_multiplication_counts():
  # Deck 02, "Inception Layer: Computational Cost" on 32x32x200 (SAME):
  #   5x5 to 92 channels:  5*5*200*32*32*92 = 471,040,000 (~470 million)
  #   1x1 to 16, then 5x5 to 92: 1*1*200*32*32*16 + 5*5*16*32*32*92
  #                            = 3,276,800 + 37,683,200 = 40,960,000 (~40 million)
  x_shape = (1, 32, 32, 200)
  out, shapes = _shapes(layers.Conv(92, 5, use_bias=False), x_shape)
  assert _multiplications(shapes["params"]["kernel"], out) == 471_040_000
  out1, shapes1 = _shapes(layers.Conv(16, 1, use_bias=False), x_shape)
  out2, shapes2 = _shapes(layers.Conv(92, 5, use_bias=False), out1)
  assert (_multiplications(shapes1["params"]["kernel"], out1) +
          _multiplications(shapes2["params"]["kernel"], out2)) == 40_960_000


def test_separable_conv_computes_depthwise_then_pointwise():
  x = jax.random.normal(jax.random.key(2), (1, 6, 6, 2))
  sep = layers.SeparableConv(3, 3, depth_multiplier=2)
  params = sep.init(KEY, x)["params"]
  dw, pw = params["depthwise"]["kernel"], params["pointwise"]["kernel"]
  assert dw.shape == (3, 3, 1, 4) and pw.shape == (1, 1, 4, 3)
  # Depthwise output channel j reads input channel j // multiplier only.
  expected = jnp.concatenate([
      lax.conv_general_dilated(x[..., c:c + 1], dw[..., 2 * c:2 * c + 2], (1, 1),
                               "SAME", dimension_numbers=conv_lib.DIMENSION_NUMBERS)
      for c in range(2)], axis=-1)
  expected = jnp.einsum("nhwc,cd->nhwd", expected, pw[0, 0])
  np.testing.assert_allclose(sep.apply({"params": params}, x), expected,
                             rtol=1e-5, atol=1e-5)


def test_grouped_conv_parameter_count():
  # K*K*(C_in/g)*C_out weights (+ C_out biases): 3*3*(4/2)*8 = 144, + 8 = 152.
  conv = layers.Conv(8, 3, groups=2)
  _, shapes = _shapes(conv, (1, 5, 5, 4))
  assert shapes["params"]["kernel"] == (3, 3, 2, 8)
  assert _num_params(conv, (1, 5, 5, 4)) == 152
  # AlexNet's CONV2 on two GPUs: 256 5x5 filters over 96/2 = 48 channels each:
  # 5*5*48*256 = 307,200 weights, + 256 biases = 307,456 (ungrouped: 614,656).
  assert _num_params(layers.Conv(256, 5, padding=2, groups=2), (1, 27, 27, 96)) == 307_456
  assert _num_params(layers.Conv(256, 5, padding=2), (1, 27, 27, 96)) == 614_656


def test_grouped_conv_is_independent_convs_on_channel_groups():
  # groups=3 (deck 02, "groups set to 3"): input channels 6 -> 3 groups of 2, output
  # channels 9 -> 3 groups of 3; group i sees only its own input channels.
  x = jax.random.normal(jax.random.key(3), (2, 5, 5, 6))
  conv = layers.Conv(9, 3, groups=3)
  params = conv.init(KEY, x)["params"]
  y = conv.apply({"params": params}, x)
  parts = []
  for g in range(3):
    single = layers.Conv(3, 3)
    parts.append(single.apply(
        {"params": {"kernel": params["kernel"][..., 3 * g:3 * g + 3],
                    "bias": params["bias"][3 * g:3 * g + 3]}},
        x[..., 2 * g:2 * g + 2]))
  np.testing.assert_allclose(y, jnp.concatenate(parts, axis=-1), rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------
# Dilation and padding
# ----------------------------------------------------------------------------------

def test_dilated_3x3_equals_5x5_with_zeros_inserted():
  # Deck 04: a 2-dilated 3x3 kernel touches every other pixel of a 5x5 window.
  x = jax.random.normal(jax.random.key(4), (1, 9, 9, 2))
  k3 = jax.random.normal(jax.random.key(5), (3, 3, 2, 3))
  k5 = jnp.zeros((5, 5, 2, 3)).at[::2, ::2].set(k3)
  for padding in ("VALID", "SAME"):
    dilated = _apply_conv(layers.Conv(3, 3, padding=padding, dilation=2), x, k3)
    full = _apply_conv(layers.Conv(3, 5, padding=padding), x, k5)
    assert dilated.shape == full.shape
    np.testing.assert_allclose(dilated, full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("padding, lax_padding", [
    (1, ((1, 1), (1, 1))),
    ((2, 0), ((2, 2), (0, 0))),
    (((1, 2), (0, 3)), ((1, 2), (0, 3))),
])
def test_explicit_and_asymmetric_padding_match_lax(padding, lax_padding):
  x = jax.random.normal(jax.random.key(6), (1, 6, 7, 2))
  k = jax.random.normal(jax.random.key(7), (3, 3, 2, 4))
  y = _apply_conv(layers.Conv(4, 3, padding=padding), x, k)
  expected = lax.conv_general_dilated(x, k, (1, 1), lax_padding,
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))
  assert y.shape == expected.shape
  np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
  # Sizes by the course's rule, e.g. ((1, 2), (0, 3)): H (6 - 3 + 1 + 2)/1 + 1 = 7,
  # W (7 - 3 + 0 + 3)/1 + 1 = 8.
  (top, bottom), (left, right) = lax_padding
  assert y.shape[1:3] == (6 - 3 + top + bottom + 1, 7 - 3 + left + right + 1)


# ----------------------------------------------------------------------------------
# Transposed convolution
# ----------------------------------------------------------------------------------

def test_conv_transpose_2x2_stride_2_doubles_and_scatters_the_kernel():
  # Deck 02, U-Net: "2x2 up-convolution". With kernel == stride every input pixel v
  # becomes the 2x2 block v * W: [[1,2],[3,4]] with W = [[1,10],[100,1000]] gives
  #   1  10    2  20
  #   100 1000 200 2000
  #   3  30    4  40
  #   300 3000 400 4000
  w = np.array([[1, 10], [100, 1000]], np.float32)[:, :, None, None]
  y = _apply_conv(layers.ConvTranspose(1, 2, 2), _image([[1, 2], [3, 4]]), w)
  np.testing.assert_allclose(y[0, :, :, 0], [[1, 10, 2, 20],
                                             [100, 1000, 200, 2000],
                                             [3, 30, 4, 40],
                                             [300, 3000, 400, 4000]])
  # U-Net's decoder: 28x28x1024 -> 56x56x512 (doubles H, W; halves channels).
  out_shape, _ = _shapes(layers.ConvTranspose(512, 2, 2), (1, 28, 28, 1024))
  assert out_shape == (1, 56, 56, 512)


def test_conv_transpose_overlapping_windows_and_padding():
  # Input [[1, 2]] (1x2), 3x3 kernel W = [[1,2,3],[4,5,6],[7,8,9]], stride 2: input
  # pixel j writes v * W at columns 2j..2j+2, overlapping at column 2. Size
  # (N-1)S + F: H (1-1)*2 + 3 = 3, W (2-1)*2 + 3 = 5. Row r is
  #   [W[r,0], W[r,1], W[r,2] + 2*W[r,0], 2*W[r,1], 2*W[r,2]]
  #   row 0: [1, 2, 3 + 2, 4, 6]  row 1: [4, 5, 6 + 8, 10, 12]  row 2: [7, 8, 9 + 14, 16, 18]
  w = np.arange(1, 10, dtype=np.float32).reshape(3, 3)[:, :, None, None]
  x = _image([[1, 2]])
  y = _apply_conv(layers.ConvTranspose(1, 3, 2, padding="VALID"), x, w)
  np.testing.assert_allclose(y[0, :, :, 0], [[1, 2, 5, 4, 6],
                                             [4, 5, 14, 10, 12],
                                             [7, 8, 23, 16, 18]])
  # Padding P crops P from every border: (N-1)S + F - 2P gives H 3 - 2 = 1,
  # W 5 - 2 = 3, the middle of the above.
  y = _apply_conv(layers.ConvTranspose(1, 3, 2, padding=1), x, w)
  np.testing.assert_allclose(y[0, :, :, 0], [[5, 14, 10]])
  # Explicit P = 0 is the same as VALID.
  y = _apply_conv(layers.ConvTranspose(1, 3, 2, padding=0), x, w)
  assert y.shape == (1, 3, 5, 1)


@pytest.mark.parametrize("n, f, s, p", [
    (4, 2, 2, 0), (4, 3, 2, 0), (4, 4, 2, 1), (5, 3, 2, 1), (3, 3, 1, 1), (4, 5, 3, 2)])
def test_conv_transpose_output_size_rule(n, f, s, p):
  # (N-1)S + F - 2P, e.g. (4-1)*2 + 4 - 2 = 8 (DCGAN's 4x4/2 pad 1 doubles),
  # (4-1)*3 + 5 - 4 = 10.
  expected = (n - 1) * s + f - 2 * p
  out_shape, _ = _shapes(layers.ConvTranspose(2, f, s, padding=p), (1, n, n, 3))
  assert out_shape == (1, expected, expected, 2)
  if p == 0:
    assert _shapes(layers.ConvTranspose(2, f, s, padding="VALID"),
                   (1, n, n, 3))[0] == out_shape


@pytest.mark.parametrize("padding", ["VALID", 1])
def test_conv_transpose_is_the_transpose_of_conv(padding):
  # "Transposed": with the same kernel, ConvTranspose is the adjoint (input gradient)
  # of the strided Conv that maps its output size back to its input size.
  y = jax.random.normal(jax.random.key(8), (1, 3, 3, 2))
  w = jax.random.normal(jax.random.key(9), (3, 3, 4, 2))  # Conv: 4 -> 2 channels
  up = layers.ConvTranspose(4, 3, 2, padding=padding, use_bias=False)
  up_y = up.apply({"params": {"deconv": {"kernel": w}}}, y)
  down = lambda x: conv_lib.conv2d(x, w, strides=2, padding=padding)
  _, vjp = jax.vjp(down, jnp.zeros(up_y.shape))
  (expected,) = vjp(y)
  np.testing.assert_allclose(up_y, expected, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------
# Batch normalisation and dropout
# ----------------------------------------------------------------------------------

# Two channels over N=2, H=1, W=2 (deck 01: statistics over 3 of the 4 dimensions):
#   channel 0: 1, 3, 5, 7 -> mean 16/4 = 4, var (9 + 1 + 1 + 9)/4 = 5
#   channel 1: 0, 0, 0, 8 -> mean 8/4 = 2,  var (4 + 4 + 4 + 36)/4 = 12
BN_BATCH = np.array([[[[1, 0], [3, 0]]], [[[5, 0], [7, 8]]]], np.float32)
EPS = 1e-5


def test_batch_norm_training_uses_batch_statistics():
  bn = layers.BatchNorm()
  variables = bn.init(KEY, BN_BATCH, train=False)
  y, updates = bn.apply(variables, BN_BATCH, train=True, mutable=["batch_stats"])
  # Deck 01/03, Algorithm 1 with gamma = 1, beta = 0: (x - mu) / sqrt(var + eps).
  np.testing.assert_allclose(y[..., 0].ravel(),
                             np.array([-3, -1, 1, 3]) / np.sqrt(5 + EPS), rtol=1e-5)
  np.testing.assert_allclose(y[..., 1].ravel(),
                             np.array([-2, -2, -2, 6]) / np.sqrt(12 + EPS), rtol=1e-5)
  np.testing.assert_allclose(jnp.mean(y, axis=(0, 1, 2)), [0, 0], atol=1e-6)
  np.testing.assert_allclose(jnp.var(y, axis=(0, 1, 2)), [1, 1], rtol=1e-4)
  # Running averages with momentum 0.9 from mean 0, var 1:
  #   mean: 0.9*0 + 0.1*[4, 2] = [0.4, 0.2]; var: 0.9*1 + 0.1*[5, 12] = [1.4, 2.1].
  stats = updates["batch_stats"]["bn"]
  np.testing.assert_allclose(stats["mean"], [0.4, 0.2], rtol=1e-6)
  np.testing.assert_allclose(stats["var"], [1.4, 2.1], rtol=1e-6)
  # A second step: 0.9*0.4 + 0.1*4 = 0.76, 0.9*0.2 + 0.1*2 = 0.38;
  # 0.9*1.4 + 0.1*5 = 1.76, 0.9*2.1 + 0.1*12 = 3.09.
  _, updates = bn.apply({**variables, **updates}, BN_BATCH, train=True,
                        mutable=["batch_stats"])
  stats = updates["batch_stats"]["bn"]
  np.testing.assert_allclose(stats["mean"], [0.76, 0.38], rtol=1e-6)
  np.testing.assert_allclose(stats["var"], [1.76, 3.09], rtol=1e-6)


def test_batch_norm_eval_uses_running_averages():
  bn = layers.BatchNorm()
  variables = bn.init(KEY, BN_BATCH, train=False)
  _, updates = bn.apply(variables, BN_BATCH, train=True, mutable=["batch_stats"])
  variables = {**variables, **updates}
  x = jnp.array([[[[1.0, 8.0]]]])
  # Eval: (1 - 0.4)/sqrt(1.4 + eps) = 0.50709, (8 - 0.2)/sqrt(2.1 + eps) = 5.38257.
  y_eval = bn.apply(variables, x, train=False)
  np.testing.assert_allclose(y_eval[0, 0, 0],
                             [0.6 / math.sqrt(1.4 + EPS), 7.8 / math.sqrt(2.1 + EPS)],
                             rtol=1e-5)
  np.testing.assert_allclose(y_eval[0, 0, 0], [0.50709, 5.38257], rtol=1e-4)
  # The same input in training is normalised by its own statistics instead.
  y_train, _ = bn.apply(variables, BN_BATCH, train=True, mutable=["batch_stats"])
  np.testing.assert_allclose(y_train[0, 0, 0, 0], -3 / math.sqrt(5 + EPS), rtol=1e-5)
  assert not np.allclose(y_train[0, 0, 0, 0], y_eval[0, 0, 0, 0])
  # Evaluation leaves the running averages alone.
  _, unchanged = bn.apply(variables, BN_BATCH, train=False, mutable=["batch_stats"])
  np.testing.assert_allclose(unchanged["batch_stats"]["bn"]["mean"], [0.4, 0.2],
                             rtol=1e-6)


def test_batch_norm_training_gradient_by_hand():
  """One channel x = 1, 2, 3, 6 (epsilon 0): mean 3, var (4 + 1 + 0 + 9)/4 = 3.5,
  sigma = 1.870829, xhat = (x - 3)/sigma. The gradient of y_0 (cotangent 1, 0, 0, 0):
  dx = (ct - mean(ct) - xhat * mean(ct * xhat)) / sigma
     = (0.75 + 0.285714... , ...) -> 0.248171, -0.209991, -0.133631, 0.095451 (sum 0),
  dscale = xhat_0 = -2/sigma = -1.069045, dbias = 1."""
  bn = layers.BatchNorm(epsilon=0.0)
  x = jnp.array([1.0, 2.0, 3.0, 6.0]).reshape(4, 1, 1, 1)
  variables = bn.init(KEY, x, train=False)

  def first_output(params, x_):
    y, _ = bn.apply({**variables, "params": params}, x_, train=True,
                    mutable=["batch_stats"])
    return y[0, 0, 0, 0]

  dparams, dx = jax.grad(first_output, argnums=(0, 1))(variables["params"], x)
  np.testing.assert_allclose(dx.ravel(), [0.248171, -0.209991, -0.133631, 0.095451],
                             atol=2e-6)
  np.testing.assert_allclose(dparams["bn"]["scale"], [-1.069045], rtol=1e-5)
  np.testing.assert_allclose(dparams["bn"]["bias"], [1.0], rtol=1e-6)


def _reference_batch_norm(x, scale, bias, epsilon=EPS):
  """Training-mode batch normalisation written out with jnp (two-pass variance)."""
  mean, var = jnp.mean(x, axis=(0, 1, 2)), jnp.var(x, axis=(0, 1, 2))
  return (x - mean) / jnp.sqrt(var + epsilon) * scale + bias, mean, var


def test_batch_norm_training_matches_flax_in_values_gradients_and_averages():
  """layers.BatchNorm trains with its own rule (`batch_norm_train`): the same output,
  running averages and gradients in x, scale and bias as flax's nn.BatchNorm."""
  keys = jax.random.split(KEY, 3)
  x = 3.0 * jax.random.normal(keys[0], (6, 5, 4, 3)) + 2.0
  cotangent = jax.random.normal(keys[1], x.shape)
  ours = layers.BatchNorm()
  theirs = nn.BatchNorm(use_running_average=False, momentum=0.9)   # ours' momentum
  params = {"scale": jnp.array([0.5, 1.5, -2.0]), "bias": jnp.array([0.1, -0.3, 2.0])}
  stats = {"mean": jnp.array([0.2, 0.0, -1.0]), "var": jnp.array([1.0, 2.0, 0.5])}

  def loss(params_, x_, module, wrap):
    variables = {"params": wrap(params_), "batch_stats": wrap(stats)}
    kwargs = {"train": True} if module is ours else {}
    y, updates = module.apply(variables, x_, mutable=["batch_stats"], **kwargs)
    return jnp.sum(y * cotangent), updates

  results = [jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(params, x, module,
                                                                    wrap)
             for module, wrap in ((ours, lambda t: {"bn": t}), (theirs, lambda t: t))]
  ((value, ours_stats), (dparams, dx)), ((ref_value, ref_stats), (ref_dparams, ref_dx)) = \
      results
  np.testing.assert_allclose(value, ref_value, rtol=1e-5)
  for name in ("mean", "var"):
    np.testing.assert_allclose(ours_stats["batch_stats"]["bn"][name],
                               ref_stats["batch_stats"][name], rtol=1e-5)
  np.testing.assert_allclose(dx, ref_dx, rtol=1e-4, atol=1e-5)
  for name in ("scale", "bias"):
    np.testing.assert_allclose(dparams[name], ref_dparams[name], rtol=1e-4)


def test_batch_norm_train_statistics_carry_derivatives_and_forward_mode_works():
  """Its mean and var outputs are differentiable too (d mean/dx = 1/m, d var/dx =
  2 (x - mean)/m), in reverse and forward mode, as the jnp formula's."""
  keys = jax.random.split(KEY, 6)
  x = 2.0 * jax.random.normal(keys[0], (4, 3, 3, 2)) - 1.0
  scale, bias = jnp.array([1.3, -0.7]), jnp.array([0.2, 0.4])
  weights = [jax.random.normal(k, s) for k, s in ((keys[1], x.shape), (keys[2], (2,)),
                                                  (keys[3], (2,)))]

  def loss(fn, *args):
    return sum(jnp.sum(out * w) for out, w in zip(fn(*args), weights))

  ours = functools.partial(layers.batch_norm_train, epsilon=EPS)
  grads = jax.grad(functools.partial(loss, ours), argnums=(0, 1, 2))(x, scale, bias)
  ref = jax.grad(functools.partial(loss, _reference_batch_norm), argnums=(0, 1, 2))(
      x, scale, bias)
  for got, want in zip(grads, ref):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
  tangents = (jax.random.normal(keys[4], x.shape), jnp.array([0.5, -1.0]),
              jnp.array([1.0, 2.0]))
  _, jvp = jax.jvp(ours, (x, scale, bias), tangents)
  _, ref_jvp = jax.jvp(_reference_batch_norm, (x, scale, bias), tangents)
  for got, want in zip(jvp, ref_jvp):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_batch_norm_variables_do_not_depend_on_the_mode():
  """Training (our rule) and evaluation (flax's) create the same variables under "bn",
  so a checkpoint written by one restores into the other."""
  x = jnp.asarray(BN_BATCH)
  shapes = [jax.tree.map(jnp.shape, layers.BatchNorm().init(KEY, x, train=train))
            for train in (True, False)]
  assert shapes[0] == shapes[1] == {"params": {"bn": {"scale": (2,), "bias": (2,)}},
                                    "batch_stats": {"bn": {"mean": (2,), "var": (2,)}}}


@pytest.mark.parametrize("rate", [0.5, 0.25])
def test_dropout(rate):
  x = jnp.ones((100, 100))
  drop = layers.Dropout(rate)
  np.testing.assert_array_equal(drop.apply({}, x, train=False), x)
  y = np.asarray(drop.apply({}, x, train=True, rngs={"dropout": jax.random.key(10)}))
  zeroed = np.mean(y == 0)
  # 10,000 Bernoulli draws: standard deviation sqrt(r(1-r)/10^4) <= 0.005.
  assert abs(zeroed - rate) < 0.03
  # Kept activations are scaled by 1/(1 - rate): 2 for 0.5, 4/3 for 0.25.
  np.testing.assert_allclose(y[y != 0], 1 / (1 - rate), rtol=1e-6)


# ----------------------------------------------------------------------------------
# Activations and local response normalisation
# ----------------------------------------------------------------------------------

def test_activation_values():
  np.testing.assert_array_equal(layers.activation("relu")(jnp.array([-2.0, 0.0, 3.0])),
                                [0, 0, 3])
  # tanh(ln 2) = (4 - 1)/(4 + 1) = 0.6; sigmoid(ln 3) = 3/(3 + 1) = 0.75.
  np.testing.assert_allclose(layers.activation("tanh")(jnp.log(2.0)), 0.6, rtol=1e-6)
  np.testing.assert_allclose(layers.activation("sigmoid")(jnp.array([0.0, math.log(3)])),
                             [0.5, 0.75], rtol=1e-6)
  # softmax(0, ln 2, ln 5) = (1, 2, 5)/8.
  np.testing.assert_allclose(
      layers.activation("softmax")(jnp.log(jnp.array([[1.0, 2.0, 5.0]]))),
      [[0.125, 0.25, 0.625]], rtol=1e-6)
  y = layers.Activation("tanh").apply({}, jnp.array([0.0, math.log(2)]))
  np.testing.assert_allclose(y, [0.0, 0.6], atol=1e-6)


def test_unknown_activation_lists_the_choices():
  with pytest.raises(ConfigError) as err:
    layers.activation("swish")
  message = str(err.value)
  assert "'swish'" in message and "\n" not in message
  for name in ("relu", "tanh", "sigmoid", "softmax"):
    assert name in message


def test_local_response_norm_alexnet_formula():
  # AlexNet section 3.3 (the course's NORM layer): b_c = a_c / (k + alpha *
  # sum_{c' within n/2 of c} a_c'^2)^beta with k=2, n=5, alpha=1e-4, beta=0.75.
  # a = 10, 20, ..., 70 over 7 channels, squares 100, 400, 900, 1600, 2500, 3600, 4900.
  # Window sums (truncated at the edges):
  #   c0: 100+400+900 = 1400           c1: 100+...+1600 = 3000
  #   c2: 100+...+2500 = 5500          c3: 400+...+3600 = 9000
  #   c4: 900+...+4900 = 13500         c5: 1600+...+4900 = 12600
  #   c6: 2500+3600+4900 = 11000
  # so the denominators are (2 + 1e-4 * sum)^0.75 = 2.14, 2.30, 2.55, 2.90, 3.35, 3.26,
  # 3.10 to the power 0.75.
  a = jnp.arange(10.0, 80.0, 10.0).reshape(1, 1, 1, 7)
  base = [2.14, 2.30, 2.55, 2.90, 3.35, 3.26, 3.10]
  expected = [10 * (c + 1) / base[c] ** 0.75 for c in range(7)]
  np.testing.assert_allclose(layers.local_response_norm(a)[0, 0, 0], expected, rtol=1e-5)
  np.testing.assert_allclose(layers.LocalResponseNorm().apply({}, a)[0, 0, 0], expected,
                             rtol=1e-5)
  # c0 by hand: 2.14^0.75 = exp(0.75 * ln 2.14) = exp(0.75 * 0.760806)
  #   = exp(0.570605) = 1.76934.
  np.testing.assert_allclose(layers.local_response_norm(a)[0, 0, 0, 0], 10 / 1.76934,
                             rtol=1e-4)


# ----------------------------------------------------------------------------------
# The course's fixed kernels
# ----------------------------------------------------------------------------------

def test_box_blur_averages_and_keeps_constants():
  # Deck 01, "replace each pixel by an average of all pixels within distance 2":
  # the 5x5 kernel of 0.04 = 1/25.
  constant = 3 * jnp.ones((9, 9, 1))
  y = layers.apply_kernel(constant, "box_blur")
  # Interior: 25 * 0.04 * 3 = 3. Corner, zero padded: 9 pixels inside -> 9*0.04*3 = 1.08.
  np.testing.assert_allclose(y[2:7, 2:7, 0], 3 * np.ones((5, 5)), rtol=1e-6)
  np.testing.assert_allclose(y[0, 0, 0], 1.08, rtol=1e-6)
  # A single bright pixel spreads as 1/25 = 0.04 over its 5x5 neighbourhood.
  dot = jnp.zeros((9, 9, 1)).at[4, 4, 0].set(1.0)
  expected = np.zeros((9, 9))
  expected[2:7, 2:7] = 0.04
  np.testing.assert_allclose(layers.apply_kernel(dot, "box_blur")[..., 0], expected,
                             atol=1e-7)
  # A vertical step (columns 0-3 at 0, 4-8 at 1): interior pixel in column c averages
  # the 5 columns c-2..c+2, i.e. (number of 1-columns)/5: col 2 -> 1/5, col 3 -> 2/5,
  # col 4 -> 3/5, col 5 -> 4/5.
  step = jnp.zeros((9, 9, 1)).at[:, 4:, 0].set(1.0)
  np.testing.assert_allclose(layers.apply_kernel(step, "box_blur")[4, 2:6, 0],
                             [0.2, 0.4, 0.6, 0.8], rtol=1e-6)


def test_edge_detector():
  # Deck 01, "subtract from each pixel the average of neighbouring pixels": 1 at the
  # centre, -1/4 on the four neighbours.
  constant = 3 * jnp.ones((7, 7, 1))
  y = layers.apply_kernel(constant, "edge_detect")
  np.testing.assert_allclose(y[1:6, 1:6, 0], np.zeros((5, 5)), atol=1e-6)
  # At a corner (zero padding) two neighbours are missing: 3 - (3 + 3)/4 = 1.5.
  np.testing.assert_allclose(y[0, 0, 0], 1.5, rtol=1e-6)
  # Step edge, columns 0-3 at 0 and 4-6 at 1. Column 3: 0 - 1/4 * (0 + 0 + 0 + 1) =
  # -0.25; column 4: 1 - 1/4 * (1 + 1 + 0 + 1) = 0.25; elsewhere in the interior 0.
  step = jnp.zeros((7, 7, 1)).at[:, 4:, 0].set(1.0)
  y = layers.apply_kernel(step, "edge_detect")
  np.testing.assert_allclose(y[3, 1:6, 0], [0, 0, -0.25, 0.25, 0], atol=1e-6)


def test_apply_kernel_filters_each_channel_alone():
  rgb = jax.random.uniform(jax.random.key(11), (2, 6, 6, 3))
  y = layers.apply_kernel(rgb, layers.EDGE_DETECT_3X3)
  for c in range(3):
    np.testing.assert_allclose(
        y[..., c:c + 1], layers.apply_kernel(rgb[..., c:c + 1], "edge_detect"),
        rtol=1e-6, atol=1e-6)
  with pytest.raises(ConfigError, match="box_blur"):
    layers.apply_kernel(rgb, "sharpen")


# ----------------------------------------------------------------------------------
# Gradients
# ----------------------------------------------------------------------------------

@pytest.fixture
def float64():
  """64-bit arrays inside the test only (restored afterwards)."""
  with jax.enable_x64(True):
    yield


@pytest.mark.parametrize("impl", sorted(conv_lib.CONV_IMPLS))
@pytest.mark.parametrize("strides, padding", [(2, "SAME"), (1, ((1, 0), (2, 1)))])
def test_conv_gradient_matches_central_differences(float64, impl, strides, padding):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, 5, 5, 2)))
  kernel = jnp.asarray(rng.normal(size=(3, 3, 2, 3)))
  assert x.dtype == jnp.float64
  out_shape = jax.eval_shape(lambda: conv_lib.conv2d(
      x, kernel, strides=strides, padding=padding, impl=impl)).shape
  cotangent = jnp.asarray(rng.normal(size=out_shape))

  def loss(x, kernel):
    y = conv_lib.conv2d(x, kernel, strides=strides, padding=padding, impl=impl)
    return jnp.sum(jnp.tanh(y) * cotangent)  # non-linear, so the check is not trivial

  grad_x, grad_k = jax.jit(jax.grad(loss, argnums=(0, 1)))(x, kernel)
  eps = 1e-6

  def central(f, a):
    """(f(a + eps e_i) - f(a - eps e_i)) / 2 eps for every basis vector e_i at once."""
    basis = jnp.eye(a.size, dtype=a.dtype).reshape((a.size,) + a.shape)
    f_batched = jax.jit(jax.vmap(f))
    return ((f_batched(a + eps * basis) - f_batched(a - eps * basis)) /
            (2 * eps)).reshape(a.shape)

  np.testing.assert_allclose(grad_x, central(lambda v: loss(v, kernel), x),
                             rtol=1e-6, atol=1e-8)
  np.testing.assert_allclose(grad_k, central(lambda v: loss(x, v), kernel),
                             rtol=1e-6, atol=1e-8)


# ----------------------------------------------------------------------------------
# Bad configurations: one readable sentence each
# ----------------------------------------------------------------------------------

@pytest.mark.parametrize("module, input_shape, fragments", [
    # (7 - 3)/3 + 1 = 2.33
    (layers.Conv(4, 3, strides=3, padding="VALID"), (1, 7, 7, 2),
     ["Conv", "2.33", "fractional"]),
    # 4 filters are not divisible into 3 groups.
    (layers.Conv(4, 3, groups=3), (1, 7, 7, 6), ["groups=3", "(6)", "(4)"]),
    # 6 channels are not divisible into 4 groups.
    (layers.Conv(8, 3, groups=4), (1, 7, 7, 6), ["groups=4", "(6)"]),
    (layers.Conv(4, 3, groups=0), (1, 7, 7, 6), ["positive"]),
    # A 5x5 VALID window on 3x3: (3 - 5)/1 + 1 = -1.
    (layers.Conv(4, 5, padding="VALID"), (1, 3, 3, 1), ["size 3", "5-wide"]),
    (layers.Conv(4, 3, strides=0), (1, 7, 7, 1), ["positive", "(0, 0)"]),
    (layers.Conv(4, 3, strides=(1, -1)), (1, 7, 7, 1), ["positive", "(1, -1)"]),
    (layers.Conv(4, 3, padding="FULL"), (1, 7, 7, 1), ["'FULL'", "SAME", "VALID"]),
    (layers.Conv(4, 3, padding=(1, 2, 3)), (1, 7, 7, 1), ["(1, 2, 3)"]),
    (layers.Conv(4, 3), (7, 7, 1), ["NHWC", "(7, 7, 1)"]),
])
def test_bad_conv_configurations(module, input_shape, fragments):
  with pytest.raises(ConfigError) as err:
    module.init(KEY, jnp.zeros(input_shape))
  message = str(err.value)
  assert "\n" not in message and message.endswith(".")
  for fragment in fragments:
    assert fragment in message, message


def test_bad_pooling_configurations():
  x = jnp.zeros((1, 7, 7, 1))
  with pytest.raises(ConfigError, match="must be positive"):
    layers.max_pool(x, 3, 0)
  with pytest.raises(ConfigError, match="must be positive"):
    layers.avg_pool(x, 2, -2)
  with pytest.raises(ConfigError, match="2.33"):   # (7 - 3)/3 + 1
    layers.avg_pool(x, 3, 3, layer="pool1")
  with pytest.raises(ConfigError, match="pool1"):
    layers.max_pool(x, 8, layer="pool1")          # window larger than the input
  with pytest.raises(ConfigError, match="'same-ish'"):
    layers.max_pool(x, 2, padding="same-ish")
  with pytest.raises(ConfigError, match="positive"):
    layers.conv_output_size(7, 3, 0, -1)

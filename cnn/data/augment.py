"""Training augmentations by name: batched array ops on the device, per-image on the host.

Two registries with the same names:

* `AUGMENTATIONS` (device, inside jit): ``fn(key, images, masks, out_size) -> (images,
  masks)`` on a whole batch of normalised float32 images (B, H, W, C); `masks` is None
  for classification or int32 (B, H, W) segmentation targets, moved with the images
  (pixels from outside the image get the label -1, which one-hot encodes to zeros and
  so adds nothing to a cross-entropy).
* `HOST_AUGMENTATIONS` (streamed data, numpy on the host): ``fn(image, rng, out_size,
  fill) -> image`` on one decoded uint8 (H, W, C) image of any size.

A new augmentation is one function added to a registry. The names:

* ``none``: the image as stored (centre-cropped to `out_size` when that is smaller).
* ``flip``: random horizontal flip.
* ``cifar``: He et al. (2016), following Lee et al.: pad 4 pixels on each side, take a
  random crop of `out_size` (32x32) and flip it horizontally half of the time. The
  padding is zero in the normalised (mean-subtracted) input the paper pads, i.e. the
  mean colour.
* ``shift``: pad 2 pixels and take a random crop, no flip: translations of up to two
  pixels, the kind of distortion LeCun et al. (1998) trained LeNet-5 with (digits are
  not mirror-symmetric).
* ``imagenet``: Szegedy et al. (2015)'s random-resized crop as torchvision implements
  it: a box covering 8%..100% of the area with aspect ratio in [3/4, 4/3] (10 tries,
  else the centre crop of the clamped ratio), resized to `out_size`, flipped half of
  the time. Evaluation uses the centre crop (`center_crop`, `host_center_fit`).

The course's list (deck 5: "rotation, translations, flipping, skewing, cropping, adding
noise, changing lighting, vignetting, perspective changes"), each a pure per-image
function ``fn(image, key, mask=None, ...) -> (image, mask)`` (`rotate`, `translate`,
`skew`, `perspective`, `noise`, `lighting`, `vignette`), and by name, with an optional
number that sets its strength (the default in brackets):

* ``rotate<D>``: a rotation about the centre by a uniform angle in [-D, D] degrees (15).
* ``translate<P>``: a shift by whole pixels, uniform in [-P, P] on each axis (4).
* ``skew<D>``: a horizontal shear by a uniform angle in [-D, D] degrees (15).
* ``perspective<P>``: torchvision's RandomPerspective: each corner moves inwards by up
  to P % of half the side, uniformly (30).
* ``crop<P>``: pad P pixels, random crop of `out_size` (4); ``flip`` is the flip above.
* ``noise<S>``: Gaussian pixel noise of standard deviation S grey levels of 255 (8).
* ``light<P>``: lighting, every pixel times one gain uniform in [1 - P %, 1 + P %] (20).
* ``vignette<P>``: darkening towards the corners, by a uniform fraction in [0, P %] at
  the corners and quadratic in the distance from the centre (50).

``+`` composes them left to right (``"crop+flip+rotate30"``); stage i draws from
``fold_in(key, i)``. Geometric stages sample bilinearly, their masks nearest, and
whatever comes from outside the image is the mean colour (0 after normalisation) and
label MASK_FILL; noise and lighting are clipped to the pixel range. The photometric
stages work in pixels, so `get` takes the dataset's mean and std. Each host twin runs
the same formulas from the same uniforms (`numpy.random.Generator.random`, then for
noise `standard_normal`) on the uint8 image, and equals the device stage up to uint8
rounding (tests/test_augment.py).
"""
from __future__ import annotations

import dataclasses
import functools
import math
import re
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from cnn.errors import ConfigError, unknown_choice

Array = jax.Array

PAD = 4                               # He et al.: "4 pixels are padded on each side"
SHIFT = 2                             # "shift": translations of up to 2 pixels
CROP_SCALE = (0.08, 1.0)              # Inception's area range
CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)   # and aspect-ratio range
CROP_ATTEMPTS = 10
EVAL_CROP_FRACTION = 0.875            # resize to 256, centre-crop 224
MASK_FILL = -1


# ----------------------------------------------------------------------------------
# Device: batched, jittable
# ----------------------------------------------------------------------------------

def center_crop(images: Array, out_size: tuple[int, int]) -> Array:
  """Central (h, w) window of a batch (B, H, W, ...), jax or numpy; the identity when
  sizes match."""
  height, width = images.shape[1:3]
  h, w = out_size
  if h > height or w > width:
    raise ConfigError(
        f"Images of {height}x{width} cannot be cropped to {h}x{w}; use a data.image_size "
        f"no larger than the stored images, or resize them when loading.")
  top, left = (height - h) // 2, (width - w) // 2
  return images[:, top:top + h, left:left + w]


def random_words(key: Array, rows: int, n: int) -> Array:
  """uint32 (rows, n) random words from one flat `jax.random.bits` draw: each call
  site of jax.random costs ~1 s of compilation on XLA:CPU, and 2-D draws ~5x more."""
  return jax.random.bits(key, (rows * n,), jnp.uint32).reshape(rows, n)


def unit_float(words: Array) -> Array:
  """Uniform float32 in [0, 1) from the top 24 bits of each word."""
  return (words >> 8).astype(jnp.float32) * (1.0 / (1 << 24))


def below(words: Array, bound) -> Array:
  """Integers in [0, bound): word mod bound (bias below bound / 2**32, negligible)."""
  return (words % jnp.asarray(bound, jnp.uint32)).astype(jnp.int32)


def random_flip(words: Array, images: Array, masks: Optional[Array]):
  """Mirrors each image (and its mask) left-right when its word's top bit is set."""
  flip = (words >> 31) == 1
  images = jnp.where(flip[:, None, None, None], images[:, :, ::-1], images)
  if masks is not None:
    masks = jnp.where(flip[:, None, None], masks[:, :, ::-1], masks)
  return images, masks


def augment_none(key, images, masks, out_size):
  del key
  return center_crop(images, out_size), (None if masks is None else
                                         center_crop(masks, out_size))


def augment_flip(key, images, masks, out_size):
  images, masks = augment_none(key, images, masks, out_size)
  return random_flip(random_words(key, 1, images.shape[0])[0], images, masks)


def pad_crop(key, images, masks, out_size, *, pad: int, flip: bool):
  """Zero-pad by `pad`, crop `out_size` at a random offset, optionally flip half the time."""
  b, height, width = images.shape[:3]
  h, w = out_size
  if h > height + 2 * pad or w > width + 2 * pad:
    raise ConfigError(f"A {h}x{w} crop does not fit {height}x{width} images padded by "
                      f"{pad}; use a smaller data.image_size.")
  words = random_words(key, 3, b)
  top = below(words[0], height + 2 * pad - h + 1)
  left = below(words[1], width + 2 * pad - w + 1)
  widths = ((0, 0), (pad, pad), (pad, pad))

  def crop(batch, fill):
    padded = jnp.pad(batch, widths + ((0, 0),) * (batch.ndim - 3), constant_values=fill)
    size = (h, w) + batch.shape[3:]
    return jax.vmap(lambda x, t, l: lax.dynamic_slice(
        x, (t, l) + (0,) * (x.ndim - 2), size))(padded, top, left)

  images = crop(images, 0.0)
  masks = None if masks is None else crop(masks, MASK_FILL)
  return random_flip(words[2], images, masks) if flip else (images, masks)


def augment_cifar(key, images, masks, out_size):
  """He et al.: zero-pad by 4, random crop, horizontal flip half of the time."""
  return pad_crop(key, images, masks, out_size, pad=PAD, flip=True)


def augment_shift(key, images, masks, out_size):
  """Random translations by up to SHIFT pixels, no flip (digits are not symmetric):
  the small distortions LeCun et al. (1998) trained on."""
  return pad_crop(key, images, masks, out_size, pad=SHIFT, flip=False)


def augment_imagenet(key, images, masks, out_size):
  """Random-resized crop (Inception scale/ratio ranges) to `out_size`, then a flip."""
  b, height, width = images.shape[:3]
  words = random_words(key, 2 * CROP_ATTEMPTS + 3, b)
  top, left, h, w = random_resized_boxes(words[1:], height, width)
  rows = interpolation_weights(top, h, height, out_size[0])
  cols = interpolation_weights(left, w, width, out_size[1])
  # Rows then columns: two batched matmuls (one three-way einsum ran ~4x slower).
  out = jnp.einsum("bpw,bowc->bopc", cols, jnp.einsum("boh,bhwc->bowc", rows, images))
  if masks is not None:
    masks = jax.vmap(_nearest_box, in_axes=(0, 0, 0, 0, 0, None))(
        masks, top, left, h, w, out_size)
  return random_flip(words[0], out, masks)


def interpolation_weights(start: Array, length: Array, n_in: int, n_out: int) -> Array:
  """(B, n_out, n_in) linear-interpolation weights resizing each image's window
  [start, start + length) to n_out pixels (half-pixel centres); when shrinking, the
  triangle filter widens by the scale (antialiasing, as PIL and jax.image do)."""
  scale = n_out / length
  support = jnp.maximum(1.0, 1.0 / scale)
  centres = start[:, None] + (jnp.arange(n_out) + 0.5) / scale[:, None] - 0.5
  distance = jnp.abs(jnp.arange(n_in)[None, None, :] - centres[:, :, None])
  weights = jnp.maximum(0.0, 1.0 - distance / support[:, None, None])
  return weights / jnp.sum(weights, axis=-1, keepdims=True)


def _nearest_box(mask: Array, top, left, h, w, out_size) -> Array:
  """The mask pixel under the centre of each output pixel of the box, resized."""
  rows = jnp.floor(top + (jnp.arange(out_size[0]) + 0.5) * h / out_size[0]).astype(jnp.int32)
  cols = jnp.floor(left + (jnp.arange(out_size[1]) + 0.5) * w / out_size[1]).astype(jnp.int32)
  rows = jnp.clip(rows, 0, mask.shape[0] - 1)
  cols = jnp.clip(cols, 0, mask.shape[1] - 1)
  return mask[rows][:, cols]


def random_resized_boxes(words: Array, height: int, width: int):
  """(top, left, h, w) float32 boxes of torchvision's RandomResizedCrop, vectorised
  over the columns of `words` (2 * CROP_ATTEMPTS + 2 rows): CROP_ATTEMPTS candidates
  per image, the first that fits wins, else the clamped-ratio centre crop."""
  u = unit_float(words)
  area = height * width * (CROP_SCALE[0] + (CROP_SCALE[1] - CROP_SCALE[0]) *
                           u[:CROP_ATTEMPTS].T)
  log_lo, log_hi = math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])
  ratio = jnp.exp(log_lo + (log_hi - log_lo) * u[CROP_ATTEMPTS:2 * CROP_ATTEMPTS].T)
  w = jnp.round(jnp.sqrt(area * ratio))
  h = jnp.round(jnp.sqrt(area / ratio))
  fits = (w >= 1) & (h >= 1) & (w <= width) & (h <= height)
  first = jnp.argmax(fits, axis=1)
  found = jnp.any(fits, axis=1)
  w = jnp.take_along_axis(w, first[:, None], 1)[:, 0]
  h = jnp.take_along_axis(h, first[:, None], 1)[:, 0]
  fh, fw = fallback_box(height, width)
  h = jnp.where(found, h, fh)
  w = jnp.where(found, w, fw)
  top = jnp.where(found, jnp.floor(u[-2] * (height - h + 1)),
                  (height - h) // 2)
  left = jnp.where(found, jnp.floor(u[-1] * (width - w + 1)),
                   (width - w) // 2)
  return top, left, h, w


def fallback_box(height: int, width: int) -> tuple[int, int]:
  """(h, w) of the whole image with its aspect ratio clamped to CROP_RATIO."""
  ratio = width / height
  if ratio < CROP_RATIO[0]:
    return int(round(width / CROP_RATIO[0])), width
  if ratio > CROP_RATIO[1]:
    return height, int(round(height * CROP_RATIO[1]))
  return height, width


# ----------------------------------------------------------------------------------
# Host: one decoded image of any size at a time (streamed data)
# ----------------------------------------------------------------------------------

def host_resize(image: np.ndarray, out_size: tuple[int, int],
                box: Optional[tuple[float, float, float, float]] = None) -> np.ndarray:
  """uint8 (H, W, C) -> (*out_size, C) with PIL's antialiased bilinear filter; `box`
  is (left, top, right, bottom) of the region to resize."""
  from PIL import Image  # pylint: disable=import-outside-toplevel
  grey = image.shape[-1] == 1
  pil = Image.fromarray(image[..., 0] if grey else image)
  out = np.asarray(pil.resize((out_size[1], out_size[0]), Image.BILINEAR, box=box))
  return out[..., None] if grey else out


def host_center_fit(image: np.ndarray, out_size: tuple[int, int]) -> np.ndarray:
  """The evaluation view: as is when already `out_size`, else the shorter side resized
  to out / EVAL_CROP_FRACTION (256 for 224) and the central `out_size` window."""
  height, width = image.shape[:2]
  if (height, width) == tuple(out_size):
    return image
  short = max(out_size) / EVAL_CROP_FRACTION
  factor = short / min(height, width)
  size = (max(out_size[0], round(height * factor)), max(out_size[1], round(width * factor)))
  image = host_resize(image, size)
  top, left = (size[0] - out_size[0]) // 2, (size[1] - out_size[1]) // 2
  return image[top:top + out_size[0], left:left + out_size[1]]


def _host_flip(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  return image[:, ::-1] if rng.random() < 0.5 else image


def host_none(image, rng, out_size, fill):
  del rng, fill
  return host_center_fit(image, out_size)


def host_flip(image, rng, out_size, fill):
  del fill
  return _host_flip(host_center_fit(image, out_size), rng)


def _host_pad_crop(image, rng, out_size, fill, pad: int) -> np.ndarray:
  """Pad with `fill` (the mean colour, i.e. zero after normalisation), random crop."""
  image = host_center_fit(image, out_size)
  padded = np.empty((out_size[0] + 2 * pad, out_size[1] + 2 * pad, image.shape[-1]),
                    image.dtype)
  padded[...] = fill
  padded[pad:-pad, pad:-pad] = image
  top, left = rng.integers(0, 2 * pad + 1, size=2)
  return padded[top:top + out_size[0], left:left + out_size[1]]


def host_cifar(image, rng, out_size, fill):
  return _host_flip(_host_pad_crop(image, rng, out_size, fill, PAD), rng)


def host_shift(image, rng, out_size, fill):
  return _host_pad_crop(image, rng, out_size, fill, SHIFT)


def host_imagenet(image, rng, out_size, fill):
  del fill
  height, width = image.shape[:2]
  top, left, h, w = host_random_resized_box(rng, height, width)
  return _host_flip(host_resize(image, out_size, box=(left, top, left + w, top + h)), rng)


def host_random_resized_box(rng: np.random.Generator, height: int, width: int):
  """(top, left, h, w) of RandomResizedCrop; the host twin of `random_resized_boxes`."""
  for _ in range(CROP_ATTEMPTS):
    area = height * width * rng.uniform(*CROP_SCALE)
    ratio = math.exp(rng.uniform(math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])))
    w = round(math.sqrt(area * ratio))
    h = round(math.sqrt(area / ratio))
    if 1 <= w <= width and 1 <= h <= height:
      return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
  h, w = fallback_box(height, width)
  return (height - h) // 2, (width - w) // 2, h, w



# ----------------------------------------------------------------------------------
# Deck 5's augmentations: one formula for the device (xp = jnp) and the host (xp = np)
# ----------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class PixelScale:
  """How an image maps to pixels in [0, 1], per channel: ``pixels = image * std +
  mean``. The device sees images normalised with the dataset's statistics; the host
  sees uint8 values (mean 0, std 1/255)."""
  mean: Any = 0.0
  std: Any = 1.0

  def to_pixels(self, image):
    return image * self.std + self.mean

  def from_pixels(self, pixels):
    return (pixels - self.mean) / self.std


PIXELS = PixelScale()                                   # images already in [0, 1]
HOST_SCALE = PixelScale(0.0, np.float32(1.0 / 255.0))   # uint8 values as floats


def _matrix(xp, rows) -> Array:
  """A float32 matrix from nested lists mixing Python numbers and (traced) scalars."""
  return xp.stack([xp.stack([xp.asarray(e, xp.float32) for e in row]) for row in rows])


def _about_centre(xp, a, b, c, d, height: int, width: int) -> Array:
  """The 3x3 map ``source = centre + [[a, b], [c, d]] (p - centre)`` on (x, y) =
  (column, row) pixel positions, centre ((W - 1) / 2, (H - 1) / 2): the exact
  middle, so a quarter turn of a square image lands on whole pixels."""
  cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
  return _matrix(xp, [[a, b, cx - a * cx - b * cy], [c, d, cy - c * cx - d * cy],
                      [0.0, 0.0, 1.0]])


def rotation_matrix(xp, degrees, height: int, width: int) -> Array:
  """Sampling map of a counter-clockwise rotation (as displayed, as jnp.rot90)."""
  t = degrees * (math.pi / 180.0)
  cos, sin = xp.cos(t), xp.sin(t)
  return _about_centre(xp, cos, -sin, sin, cos, height, width)


def translation_matrix(xp, dy, dx) -> Array:
  """Sampling map that moves the content `dy` rows down and `dx` columns right."""
  return _matrix(xp, [[1.0, 0.0, -dx], [0.0, 1.0, -dy], [0.0, 0.0, 1.0]])


def skew_matrix(xp, degrees, height: int, width: int) -> Array:
  """Sampling map of a horizontal shear: rows below the centre move right by
  tan(degrees) per row."""
  t = xp.tan(degrees * (math.pi / 180.0))
  return _about_centre(xp, 1.0, -t, 0.0, 1.0, height, width)


def homography(xp, frm, to) -> Array:
  """The 3x3 projective map sending the 4 points `frm` to `to` ((x, y) pairs): the
  8x8 linear system of the direct linear transform with h33 = 1."""
  rows, rhs = [], []
  for (x, y), (u, v) in zip(frm, to):
    rows.append([x, y, 1.0, 0.0, 0.0, 0.0, -u * x, -u * y])
    rows.append([0.0, 0.0, 0.0, x, y, 1.0, -v * x, -v * y])
    rhs += [u, v]
  coef = xp.linalg.solve(_matrix(xp, rows), xp.stack([xp.asarray(r, xp.float32)
                                                      for r in rhs]))
  return xp.concatenate([coef, xp.ones((1,), xp.float32)]).reshape(3, 3)


def perspective_matrix(xp, u, distortion: float, height: int, width: int) -> Array:
  """torchvision's RandomPerspective from 8 uniforms: the corners move inwards by
  u * distortion * half the side (continuous rather than whole pixels), and each
  output pixel samples where the homography from the moved corners back to the
  image's corners sends it."""
  dx, dy = distortion * (width // 2), distortion * (height // 2)
  right, bottom = width - 1.0, height - 1.0
  corners = [(0.0, 0.0), (right, 0.0), (right, bottom), (0.0, bottom)]
  moved = [(u[0] * dx, u[1] * dy), (right - u[2] * dx, u[3] * dy),
           (right - u[4] * dx, bottom - u[5] * dy), (u[6] * dx, bottom - u[7] * dy)]
  return homography(xp, moved, corners)


def source_coordinates(xp, matrix, height: int, width: int):
  """(rows, cols) float32 (H, W): where each output pixel samples the input.
  Elementwise rather than a matmul, whose default precision on TPUs is bf16."""
  ys, xs = xp.meshgrid(xp.arange(height, dtype=xp.float32),
                       xp.arange(width, dtype=xp.float32), indexing="ij")
  m = matrix
  w = m[2, 0] * xs + m[2, 1] * ys + m[2, 2]
  return ((m[1, 0] * xs + m[1, 1] * ys + m[1, 2]) / w,
          (m[0, 0] * xs + m[0, 1] * ys + m[0, 2]) / w)


def _inside(yi, xi, height: int, width: int):
  return (yi >= 0) & (yi < height) & (xi >= 0) & (xi < width)


def sample_bilinear(xp, image, ys, xs, fill):
  """image (H, W, C) at (ys, xs), bilinearly; neighbours outside count as `fill`.
  Whole-pixel positions return the pixel exactly (the other weights are 0)."""
  height, width = image.shape[:2]
  y0, x0 = xp.floor(ys), xp.floor(xs)
  wy, wx = ys - y0, xs - x0
  y0, x0 = y0.astype(xp.int32), x0.astype(xp.int32)
  out = 0.0
  for dy in (0, 1):
    for dx in (0, 1):
      yi, xi = y0 + dy, x0 + dx
      value = image[xp.clip(yi, 0, height - 1), xp.clip(xi, 0, width - 1)]
      value = xp.where(_inside(yi, xi, height, width)[..., None], value, fill)
      weight = (wy if dy else 1.0 - wy) * (wx if dx else 1.0 - wx)
      out = out + weight[..., None] * value
  return out


def sample_nearest(xp, mask, ys, xs, fill: int = MASK_FILL):
  """mask (H, W) at the pixel nearest to (ys, xs); `fill` outside (labels are not
  interpolated)."""
  height, width = mask.shape[:2]
  yi = xp.floor(ys + 0.5).astype(xp.int32)
  xi = xp.floor(xs + 0.5).astype(xp.int32)
  value = mask[xp.clip(yi, 0, height - 1), xp.clip(xi, 0, width - 1)]
  return xp.where(_inside(yi, xi, height, width), value, fill)


def warp(xp, image, mask, matrix, fill=0.0):
  """(image, mask) resampled through the 3x3 sampling map `matrix` (output (x, y, 1)
  -> input): the image bilinearly with `fill` from outside, the mask (or None)
  nearest with MASK_FILL."""
  ys, xs = source_coordinates(xp, matrix, *image.shape[:2])
  out = sample_bilinear(xp, image, ys, xs, fill).astype(image.dtype)
  return out, None if mask is None else sample_nearest(xp, mask, ys, xs)


def _uniform_angle(u, degrees):
  return degrees * (2.0 * u[0] - 1.0)


def _whole_shift(xp, u, pixels):
  """Integers uniform in [-pixels, pixels] (u in [0, 1) keeps floor below 2P + 1)."""
  return xp.floor(u * (2 * int(pixels) + 1)) - int(pixels)


def _vignette_falloff(xp, height: int, width: int):
  """(H, W, 1) squared distance from the centre, 0 there and 1 at the corners."""
  ys, xs = xp.meshgrid(xp.arange(height, dtype=xp.float32),
                       xp.arange(width, dtype=xp.float32), indexing="ij")
  cy, cx = (height - 1) / 2.0, (width - 1) / 2.0
  return (((ys - cy) ** 2 + (xs - cx) ** 2) / max(cy * cy + cx * cx, 1.0))[..., None]


@dataclasses.dataclass(frozen=True)
class Stage:
  """One of deck 5's augmentations. `draws` uniforms u in [0, 1) (and, when `normal`,
  a standard-normal field z of the image's shape) and the strength s decide it:
  geometric stages give a sampling matrix ``fn(xp, u, s, H, W)``, photometric ones
  new pixels ``fn(xp, pixels, u, z, s)`` (pixels in [0, 1])."""
  default: float
  draws: int
  geometric: bool
  fn: Callable
  normal: bool = False
  whole: bool = False      # the strength must be a whole number (pixels)


STAGES: dict[str, Stage] = {
    "rotate": Stage(15.0, 1, True, lambda xp, u, s, h, w: rotation_matrix(
        xp, _uniform_angle(u, s), h, w)),
    "translate": Stage(4, 2, True, lambda xp, u, s, h, w: translation_matrix(
        xp, *_whole_shift(xp, u, s)), whole=True),
    "skew": Stage(15.0, 1, True, lambda xp, u, s, h, w: skew_matrix(
        xp, _uniform_angle(u, s), h, w)),
    "perspective": Stage(30.0, 8, True, lambda xp, u, s, h, w: perspective_matrix(
        xp, u, s / 100.0, h, w)),
    "noise": Stage(8.0, 0, False, lambda xp, p, u, z, s: xp.clip(
        p + (s / 255.0) * z, 0.0, 1.0), normal=True),
    "light": Stage(20.0, 1, False, lambda xp, p, u, z, s: xp.clip(
        p * (1.0 + (s / 100.0) * (2.0 * u[0] - 1.0)), 0.0, 1.0)),
    "vignette": Stage(50.0, 1, False, lambda xp, p, u, z, s: p * (
        1.0 - (s / 100.0) * u[0] * _vignette_falloff(xp, *p.shape[:2]))),
}


def apply_stage(xp, name: str, strength, image, mask, u, z, scale: PixelScale, fill):
  """Stage `name` of strength `strength` on one image (H, W, C) and its mask (or
  None), decided by the draws `u` (and `z`): the formula the device and the host
  share. `scale` maps the image to pixels, `fill` is the mean colour in its units."""
  stage = STAGES[name]
  height, width = image.shape[:2]
  if stage.geometric:
    return warp(xp, image, mask, stage.fn(xp, u, strength, height, width), fill)
  pixels = stage.fn(xp, scale.to_pixels(image), u, z, strength)
  return scale.from_pixels(pixels).astype(image.dtype), mask


def device_stage(name: str, strength=None, scale: PixelScale = PIXELS) -> Callable:
  """``fn(image, key, mask=None) -> (image, mask)``: stage `name` on one float32 image
  (H, W, C) with pixel scale `scale`, drawn from `key` (jittable, vmappable)."""
  stage = STAGES[name]
  strength = stage.default if strength is None else strength

  def fn(image, key, mask=None):
    u = jax.random.uniform(key, (stage.draws,)) if stage.draws else None
    z = (jax.random.normal(jax.random.fold_in(key, 1), image.shape)
         if stage.normal else None)
    return apply_stage(jnp, name, strength, image, mask, u, z, scale, 0.0)

  return fn


def rotate(image, key, mask=None, *, degrees=15.0):
  """Rotation about the centre by a uniform angle in [-degrees, degrees]."""
  return device_stage("rotate", degrees)(image, key, mask)


def translate(image, key, mask=None, *, pixels=4):
  """Shift by whole pixels, uniform in [-pixels, pixels] on each axis."""
  return device_stage("translate", pixels)(image, key, mask)


def skew(image, key, mask=None, *, degrees=15.0):
  """Horizontal shear by a uniform angle in [-degrees, degrees]."""
  return device_stage("skew", degrees)(image, key, mask)


def perspective(image, key, mask=None, *, percent=30.0):
  """Perspective change: corners moved inwards by up to `percent` % of half a side."""
  return device_stage("perspective", percent)(image, key, mask)


def noise(image, key, mask=None, *, levels=8.0, scale: PixelScale = PIXELS):
  """Gaussian noise of standard deviation `levels` / 255 in pixels, clipped."""
  return device_stage("noise", levels, scale)(image, key, mask)


def lighting(image, key, mask=None, *, percent=20.0, scale: PixelScale = PIXELS):
  """Every pixel times one gain uniform in [1 - percent %, 1 + percent %], clipped."""
  return device_stage("light", percent, scale)(image, key, mask)


def vignette(image, key, mask=None, *, percent=50.0, scale: PixelScale = PIXELS):
  """Corners darkened by a uniform fraction in [0, percent %], quadratic falloff."""
  return device_stage("vignette", percent, scale)(image, key, mask)


def batched(per_image: Callable) -> AugmentFn:
  """A per-image ``fn(image, key, mask)`` as a batch augmentation ``fn(key, images,
  masks, out_size)`` (one key per image; the size is left to the caller)."""

  def fn(key, images, masks, out_size):
    del out_size
    keys = jax.random.split(key, images.shape[0])
    if masks is None:
      return jax.vmap(lambda x, k: per_image(x, k)[0])(images, keys), None
    return jax.vmap(per_image)(images, keys, masks)

  return fn


def host_stage(name: str, strength=None) -> Callable[..., np.ndarray]:
  """The host twin of `device_stage`: ``fn(image_u8, rng, out_size, fill)``, its
  uniforms from ``rng.random(draws)`` and then its normals from
  ``rng.standard_normal``, the same formula on the uint8 values, rounded."""
  stage = STAGES[name]
  strength = stage.default if strength is None else strength

  def fn(image, rng, out_size, fill):
    del out_size
    u = rng.random(stage.draws).astype(np.float32)
    z = rng.standard_normal(image.shape).astype(np.float32) if stage.normal else None
    out, _ = apply_stage(np, name, strength, image.astype(np.float32), None, u, z,
                         HOST_SCALE, np.asarray(fill, np.float32))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)

  return fn


# ----------------------------------------------------------------------------------
# Names: "crop+flip+rotate30"
# ----------------------------------------------------------------------------------

AugmentFn = Callable[..., tuple[Array, Optional[Array]]]

# The whole-batch augmentations that existed before composition, kept as they were.
_BATCH: dict[str, AugmentFn] = {
    "none": augment_none,
    "flip": augment_flip,
    "cifar": augment_cifar,
    "shift": augment_shift,
    "imagenet": augment_imagenet,
}
_HOST_BATCH: dict[str, Callable[..., np.ndarray]] = {
    "none": host_none,
    "flip": host_flip,
    "cifar": host_cifar,
    "shift": host_shift,
    "imagenet": host_imagenet,
}
CROP_PAD = 4                            # "crop": pad 4 and crop, as He et al.
_PART = re.compile(r"([a-z_]+?)(\d+(?:\.\d+)?)?")
BASE_NAMES = (*_BATCH, "crop", *STAGES)


def parse(part: str) -> tuple[str, Optional[float]]:
  """("rotate", 30.0) for "rotate30", ("flip", None) for "flip"; ConfigError for an
  unknown name or a strength on a name that takes none."""
  match = _PART.fullmatch(part.strip())
  if not match or match.group(1) not in BASE_NAMES:
    raise unknown_choice("data.augment", part, BASE_NAMES)
  base, number = match.group(1), match.group(2)
  strength = None if number is None else float(number)
  if strength is not None:
    if base in _BATCH:
      raise ConfigError(f"data.augment: {base!r} takes no strength, got {part!r}.")
    whole = base == "crop" or (base in STAGES and STAGES[base].whole)
    if whole and strength != int(strength):
      raise ConfigError(f"data.augment: {base!r} takes whole pixels, got {part!r}.")
  return base, strength


def _device_part(part: str, scale: PixelScale) -> AugmentFn:
  base, strength = parse(part)
  if base in _BATCH:
    return _BATCH[base]
  if base == "crop":
    pad = CROP_PAD if strength is None else int(strength)
    return functools.partial(pad_crop, pad=pad, flip=False)
  return batched(device_stage(base, strength, scale))


def _host_part(part: str) -> Callable[..., np.ndarray]:
  base, strength = parse(part)
  if base in _HOST_BATCH:
    return _HOST_BATCH[base]
  if base == "crop":
    pad = CROP_PAD if strength is None else int(strength)
    return functools.partial(_host_pad_crop, pad=pad)
  return host_stage(base, strength)


def get(name: str, mean=0.0, std=1.0) -> AugmentFn:
  """The device augmentation ``fn(key, images, masks, out_size) -> (images, masks)``
  called `name`: a registered name, a strength ("rotate30") or a composition
  ("crop+flip+rotate30"; stage i draws from fold_in(key, i), the result is
  centre-cropped to out_size). `mean` / `std` are the normalisation of the images,
  so that noise, lighting and vignetting act on pixels. Unknown names raise
  ConfigError."""
  if name in _BATCH:
    return _BATCH[name]
  scale = PixelScale(np.asarray(mean, np.float32), np.asarray(std, np.float32))
  stages = [_device_part(part, scale) for part in str(name).split("+")]

  def composed(key, images, masks, out_size):
    for i, stage in enumerate(stages):
      images, masks = stage(jax.random.fold_in(key, i), images, masks, out_size)
    return center_crop(images, out_size), (None if masks is None else
                                           center_crop(masks, out_size))

  return composed


def get_host(name: str) -> Callable[..., np.ndarray]:
  """The host augmentation ``fn(image_u8, rng, out_size, fill) -> image_u8`` called
  `name` (the same names and compositions as `get`; the stages share `rng` in
  order, and the result gets the evaluation view of out_size when not already that
  size). Unknown names raise ConfigError."""
  if name in _HOST_BATCH:
    return _HOST_BATCH[name]
  stages = [_host_part(part) for part in str(name).split("+")]

  def composed(image, rng, out_size, fill):
    for stage in stages:
      image = stage(image, rng, out_size, fill)
    return host_center_fit(image, out_size)

  return composed


class Registry(dict):
  """Name -> augmentation. Membership and lookup also accept strengths and
  compositions ("crop+flip+rotate30"), built on demand, so code that checks
  ``name in AUGMENTATIONS`` accepts every name `get` does; iterating lists the base
  names (for error messages)."""

  def __init__(self, entries, build: Callable[[str], Callable]):
    super().__init__(entries)
    self._build = build

  def __missing__(self, name):
    return self._build(name)

  def __contains__(self, name) -> bool:
    if dict.__contains__(self, name):
      return True
    try:
      self._build(name)
    except ConfigError:
      return False
    return True


# Looked up here, the photometric stages assume images in [0, 1] (mean 0, std 1);
# the pipeline calls get(name, mean, std) with the dataset's statistics.
AUGMENTATIONS: Registry = Registry({name: get(name) for name in BASE_NAMES}, get)
HOST_AUGMENTATIONS: Registry = Registry({name: get_host(name) for name in BASE_NAMES},
                                        get_host)

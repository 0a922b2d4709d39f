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
"""
from __future__ import annotations

import math
from typing import Callable, Optional

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


AugmentFn = Callable[..., tuple[Array, Optional[Array]]]

AUGMENTATIONS: dict[str, AugmentFn] = {
    "none": augment_none,
    "flip": augment_flip,
    "cifar": augment_cifar,
    "shift": augment_shift,
    "imagenet": augment_imagenet,
}


def get(name: str) -> AugmentFn:
  """The device augmentation called `name`; unknown names raise ConfigError."""
  if name not in AUGMENTATIONS:
    raise unknown_choice("data.augment", name, AUGMENTATIONS)
  return AUGMENTATIONS[name]


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


HOST_AUGMENTATIONS: dict[str, Callable[..., np.ndarray]] = {
    "none": host_none,
    "flip": host_flip,
    "cifar": host_cifar,
    "shift": host_shift,
    "imagenet": host_imagenet,
}


def get_host(name: str) -> Callable[..., np.ndarray]:
  """The host augmentation called `name`; unknown names raise ConfigError."""
  if name not in HOST_AUGMENTATIONS:
    raise unknown_choice("data.augment", name, HOST_AUGMENTATIONS)
  return HOST_AUGMENTATIONS[name]

"""Deck 5's augmentations (cnn/data/augment.py): invariants, ranges, composition, twins."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cnn.data as data
from cnn.data import augment as A
from cnn.data.sources import Split
from cnn.errors import ConfigError

MEAN, STD = np.float32(0.5), np.float32(0.25)    # a normalisation that is not identity
SCALE = A.PixelScale(MEAN, STD)


def batch_of(name: str, images, masks=None, key=0, mean=0.0, std=1.0, out_size=None):
  """`get(name)` on a whole float batch, jitted; (images, masks) as numpy."""
  fn = A.get(name, mean=mean, std=std)
  size = out_size or images.shape[1:3]
  out = jax.jit(lambda k, x, m: fn(k, x, m, size))(jax.random.key(key), images, masks)
  return tuple(None if o is None else np.asarray(o) for o in out)


def one_hot_images(n: int, size: int, row: int, col: int) -> np.ndarray:
  """n float images (size, size, 1), zero but for 1.0 at (row, col)."""
  x = np.zeros((n, size, size, 1), np.float32)
  x[:, row, col] = 1.0
  return x


def centroids(images: np.ndarray) -> np.ndarray:
  """(n, 2) intensity-weighted (row, col) of each single-channel image."""
  rows, cols = np.meshgrid(np.arange(images.shape[1]), np.arange(images.shape[2]),
                           indexing="ij")
  w = images[..., 0]
  total = w.sum((1, 2))
  return np.stack([(w * rows).sum((1, 2)) / total, (w * cols).sum((1, 2)) / total], 1)


# ----------------------------------------------------------------------------------
# Exact invariants of the geometry
# ----------------------------------------------------------------------------------


def test_rotation_by_zero_is_the_identity():
  rng = np.random.default_rng(0)
  images = rng.random((4, 9, 9, 3)).astype(np.float32)
  masks = rng.integers(0, 11, (4, 9, 9)).astype(np.int32)
  out, out_masks = batch_of("rotate0", images, masks)
  np.testing.assert_array_equal(out, images)
  np.testing.assert_array_equal(out_masks, masks)


@pytest.mark.parametrize("size", [(7, 7), (8, 8)])
def test_a_quarter_turn_is_rot90_for_image_and_mask(size):
  rng = np.random.default_rng(1)
  image = rng.random((*size, 2)).astype(np.float32)
  mask = rng.integers(0, 11, size).astype(np.int32)
  matrix = A.rotation_matrix(jnp, 90.0, *size)
  out, out_mask = A.warp(jnp, jnp.asarray(image), jnp.asarray(mask), matrix)
  # cos(90 degrees) is -4e-8 in float32, not 0: equal to rounding, masks exactly.
  np.testing.assert_allclose(out, np.asarray(jnp.rot90(image)), atol=1e-5)
  np.testing.assert_array_equal(out_mask, np.asarray(jnp.rot90(mask)))
  back, _ = A.warp(jnp, out, None, A.rotation_matrix(jnp, -90.0, *size))
  np.testing.assert_allclose(back, image, atol=1e-5)


def test_flipping_twice_is_the_identity():
  rng = np.random.default_rng(2)
  images = jnp.asarray(rng.random((3, 5, 6, 2)), jnp.float32)
  masks = jnp.asarray(rng.integers(0, 9, (3, 5, 6)), jnp.int32)
  always = jnp.full((3,), 0x80000000, jnp.uint32)          # top bit set: flip
  once = A.random_flip(always, images, masks)
  np.testing.assert_array_equal(once[0], images[:, :, ::-1])
  np.testing.assert_array_equal(once[1], masks[:, :, ::-1])
  twice = A.random_flip(always, *once)
  np.testing.assert_array_equal(twice[0], images)
  np.testing.assert_array_equal(twice[1], masks)


@pytest.mark.parametrize("dy,dx", [(2, -3), (0, 1), (-1, 0)])
def test_translation_moves_a_one_hot_pixel_by_exactly_the_shift(dy, dx):
  image = one_hot_images(1, 9, 4, 4)[0]
  out, mask = A.warp(jnp, jnp.asarray(image), jnp.zeros((9, 9), jnp.int32),
                     A.translation_matrix(jnp, float(dy), float(dx)))
  expected = np.zeros_like(image)
  expected[4 + dy, 4 + dx] = 1.0
  np.testing.assert_array_equal(out, expected)      # whole pixels: no blur at all
  # The mask's uncovered strip is MASK_FILL: dy rows at the top (or bottom), dx cols.
  mask = np.asarray(mask)
  assert (mask == A.MASK_FILL).sum() == 81 - (9 - abs(dy)) * (9 - abs(dx))


def test_translate_draws_every_whole_shift_within_its_range_and_no_other():
  images = one_hot_images(1000, 9, 4, 4)
  out, _ = batch_of("translate3", images)
  assert np.all(out.sum((1, 2, 3)) == 1.0) and set(np.unique(out)) == {0.0, 1.0}
  shifts = {tuple(np.argwhere(o[..., 0] == 1)[0] - 4) for o in out}
  # 1000 draws of 49 shifts: P(one missing) ~ 49 (48/49)^1000 ~ 1e-8.
  assert shifts == {(a, b) for a in range(-3, 4) for b in range(-3, 4)}


# ----------------------------------------------------------------------------------
# Masks follow the geometry (nearest), labels are untouched
# ----------------------------------------------------------------------------------


def _eroded(valid: np.ndarray, r: int) -> np.ndarray:
  """Pixels whose (2r + 1)^2 neighbourhood is all `valid` (batch of (H, W))."""
  pad = np.pad(valid, ((0, 0), (r, r), (r, r)), constant_values=False)
  out = np.ones_like(valid)
  h, w = valid.shape[1:]
  for a in range(2 * r + 1):
    for b in range(2 * r + 1):
      out &= pad[:, a:a + h, b:b + w]
  return out


@pytest.mark.parametrize("name", ["rotate40", "skew25", "perspective40", "translate3"])
def test_masks_follow_the_geometric_transform_by_nearest_neighbour(name):
  n, size = 16, 15
  rows, cols = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
  # Channels are the row and column: linear, so bilinear sampling returns the exact
  # source position inside the image; the mask codes the nearest source pixel.
  images = np.broadcast_to(np.stack([rows, cols], -1), (n, size, size, 2)).astype(np.float32)
  masks = np.broadcast_to(rows * size + cols, (n, size, size)).astype(np.int32)
  out, out_masks = batch_of(name, images, masks, key=3)
  valid = out_masks != A.MASK_FILL
  assert valid.mean() > 0.5 and (~valid).any()           # moved, and some left the image
  assert set(np.unique(out_masks[valid])) <= set(range(size * size))
  inner = _eroded(valid, 2)
  r, c = np.divmod(out_masks, size)
  assert np.all(np.abs(out[..., 0] - r)[inner] <= 0.5 + 1e-4)
  assert np.all(np.abs(out[..., 1] - c)[inner] <= 0.5 + 1e-4)


def test_photometric_stages_leave_masks_and_labels_untouched():
  rng = np.random.default_rng(4)
  images = rng.random((8, 10, 10, 3)).astype(np.float32)
  masks = rng.integers(0, 11, (8, 10, 10)).astype(np.int32)
  out, out_masks = batch_of("noise10+light30+vignette60", images, masks)
  np.testing.assert_array_equal(out_masks, masks)
  assert not np.array_equal(out, images)
  # Through the pipeline: class labels are those of the chosen examples, unchanged.
  x = rng.integers(0, 256, (40, 12, 12, 3), dtype=np.uint8)
  y = rng.integers(0, 10, 40).astype(np.int32)
  fn = jax.jit(data.make_train_batch_fn(
      40, 8, augment="crop2+flip+rotate30+skew10+perspective20+noise8+light20+vignette50",
      mean=MEAN, std=STD, seed=1))
  _, labels = fn(x, y, 3)
  np.testing.assert_array_equal(labels, y[np.asarray(data.batch_indices(1, 3, 40, 8))])


# ----------------------------------------------------------------------------------
# Ranges
# ----------------------------------------------------------------------------------


def test_rotation_angles_are_uniform_within_the_range():
  images = one_hot_images(400, 33, 16, 28)       # 12 pixels right of the centre
  out, _ = batch_of("rotate30", images, key=5)
  dy, dx = (centroids(out) - 16).T
  angle = np.degrees(np.arctan2(-dy, dx))        # counter-clockwise, rows grow down
  assert np.all(np.abs(angle) <= 30.5)
  assert angle.min() < -27 and angle.max() > 27 and abs(angle.mean()) < 3
  # A rigid rotation: the radius stays 12 (bilinear resampling of one hot pixel moves
  # its centroid by < 0.1 pixel).
  np.testing.assert_allclose(np.hypot(dy, dx), 12.0, atol=0.1)


def test_skew_shears_rows_by_at_most_the_angle():
  images = one_hot_images(300, 21, 18, 10)       # 8 rows below the centre
  out, _ = batch_of("skew20", images, key=6)
  dy, dx = (centroids(out) - 10).T
  np.testing.assert_allclose(dy, 8.0, atol=1e-4)           # rows stay where they are
  limit = 8 * np.tan(np.radians(20))
  assert np.all(np.abs(dx) <= limit + 1e-3) and dx.max() > 0.9 * limit
  assert dx.min() < -0.9 * limit


def test_perspective_keeps_the_inner_box_and_moves_corners_inwards_at_most():
  size, percent = 20, 40
  n = 64
  images = np.ones((n, size, size, 1), np.float32)
  masks = np.zeros((n, size, size), np.int32)
  _, out_masks = batch_of(f"perspective{percent}", images, masks, key=7)
  d = percent / 100 * (size // 2)                     # the most a corner moves: 4
  inner = np.zeros((size, size), bool)
  lo, hi = int(np.ceil(d)), int(np.floor(size - 1 - d))
  inner[lo:hi + 1, lo:hi + 1] = True
  # The moved corners stay in their d x d corner boxes, so the quadrilateral they
  # span covers the inner box; outside it, some pixels come from beyond the image.
  assert np.all(out_masks[:, inner] == 0)
  outside = (out_masks == A.MASK_FILL).mean((1, 2))
  assert outside.max() > 0.1 and np.all(outside < 1 - inner.mean())


def test_noise_has_the_asked_standard_deviation_in_pixels_and_is_clipped():
  # Pixels 128 / 255 in the left half, 0 and 255 in the right (where clipping acts).
  u8 = np.full((50, 16, 16, 3), 128, np.uint8)
  u8[:, :, 8:12], u8[:, :, 12:] = 0, 255
  images = (u8 / 255.0 - MEAN) / STD
  out, _ = batch_of("noise16", images.astype(np.float32), mean=MEAN, std=STD)
  pixels = out * STD + MEAN
  diff = pixels[:, :, :8] - u8[:, :, :8] / 255.0
  assert abs(diff.std() * 255 - 16) < 0.5 and abs(diff.mean() * 255) < 0.3
  assert pixels.min() >= -1e-6 and pixels.max() <= 1 + 1e-6
  assert (pixels[:, :, 8:12] < 1e-6).mean() > 0.45       # half of the noise is clipped


def test_lighting_scales_each_image_by_one_gain_within_the_range():
  u8 = np.random.default_rng(8).integers(20, 160, (300, 6, 6, 3)).astype(np.uint8)
  images = ((u8 / 255.0 - MEAN) / STD).astype(np.float32)
  out, _ = batch_of("light30", images, mean=MEAN, std=STD)
  gain = (out * STD + MEAN) / (u8 / 255.0)
  per_image = gain.reshape(300, -1)
  np.testing.assert_allclose(per_image, np.broadcast_to(per_image[:, :1], per_image.shape),
                             rtol=1e-4)                           # one gain each
  assert per_image.min() >= 0.7 - 1e-4 and per_image.max() <= 1.3 + 1e-4
  assert per_image.min() < 0.72 and per_image.max() > 1.28


def test_the_pipeline_gives_photometric_stages_the_dataset_statistics():
  # Light acts on pixels: with the statistics it multiplies x / 255, not z-scores.
  u8 = np.random.default_rng(17).integers(20, 160, (24, 6, 6, 3)).astype(np.uint8)
  mean, std = np.float32([0.4, 0.5, 0.6]), np.float32([0.2, 0.25, 0.3])
  fn = jax.jit(data.make_train_batch_fn(24, 24, augment="light40", mean=mean, std=std,
                                        seed=4))
  out, index = fn(u8, np.arange(24, dtype=np.int32), 0)
  gain = (np.asarray(out) * std + mean) / (u8[np.asarray(index)] / 255.0)
  per_image = gain.reshape(24, -1)
  np.testing.assert_allclose(per_image, np.broadcast_to(per_image[:, :1], per_image.shape),
                             rtol=1e-4)
  assert per_image.min() >= 0.6 - 1e-4 and per_image.max() <= 1.4 + 1e-4


def test_vignette_darkens_corners_within_the_range_and_spares_the_centre():
  images = np.ones((200, 9, 9, 1), np.float32)
  out, _ = batch_of("vignette60", images)
  np.testing.assert_array_equal(out[:, 4, 4], 1.0)                 # the centre
  corners = out[:, [0, 0, -1, -1], [0, -1, 0, -1], 0]
  np.testing.assert_allclose(corners, corners[:, :1] * np.ones((1, 4)), rtol=1e-6)
  assert corners.min() >= 0.4 - 1e-6 and corners.min() < 0.43 and corners.max() > 0.97
  # Quadratic in the distance: the middle of an edge is half as far (squared) as a
  # corner, so it loses half as much.
  np.testing.assert_allclose(1 - out[:, 4, 0, 0], 0.5 * (1 - corners[:, 0]), atol=1e-6)
  # Darker with the distance from the centre along a row.
  row = out[:, 4, 4:, 0]
  assert np.all(np.diff(row, axis=1) <= 1e-7)


# ----------------------------------------------------------------------------------
# Composition, determinism, names
# ----------------------------------------------------------------------------------


def test_composition_applies_stages_left_to_right_with_folded_keys():
  images = np.random.default_rng(9).random((6, 12, 12, 1)).astype(np.float32)
  key = jax.random.key(10)
  translate = A.batched(A.device_stage("translate", 3))
  darken = A.batched(A.device_stage("vignette", 80))
  first, _ = translate(jax.random.fold_in(key, 0), images, None, (12, 12))
  expected, _ = darken(jax.random.fold_in(key, 1), first, None, (12, 12))
  out, _ = batch_of("translate3+vignette80", images, key=10)
  np.testing.assert_allclose(out, expected, rtol=1e-6)
  swapped, _ = batch_of("vignette80+translate3", images, key=10)
  assert not np.allclose(out, swapped)             # the order matters for this pair


def test_same_key_same_batch_other_step_other_batch():
  x = np.random.default_rng(11).integers(0, 256, (20, 10, 10, 1), dtype=np.uint8)
  y = np.zeros(20, np.int32)
  make = lambda: jax.jit(data.make_train_batch_fn(   # noqa: E731
      20, 20, augment="rotate20+noise8", mean=MEAN, std=STD, seed=0))
  a, b = make(), make()
  np.testing.assert_array_equal(a(x, y, 5)[0], b(x, y, 5)[0])
  assert not np.allclose(a(x, y, 5)[0], a(x, y, 6)[0])


def test_existing_names_are_the_functions_they_were():
  for name, fn in [("none", A.augment_none), ("flip", A.augment_flip),
                   ("cifar", A.augment_cifar), ("shift", A.augment_shift),
                   ("imagenet", A.augment_imagenet)]:
    assert A.get(name, mean=[0.1, 0.2, 0.3], std=[0.5, 0.5, 0.5]) is fn
    assert A.AUGMENTATIONS[name] is fn
  for name, fn in [("none", A.host_none), ("cifar", A.host_cifar),
                   ("imagenet", A.host_imagenet)]:
    assert A.get_host(name) is fn


def test_crop_is_pad_and_random_crop_with_its_padding():
  images = np.random.default_rng(12).random((8, 10, 10, 1)).astype(np.float32)
  key = jax.random.key(13)
  out, _ = batch_of("crop2", images, key=13)
  np.testing.assert_array_equal(
      out, A.augment_shift(jax.random.fold_in(key, 0), images, None, (10, 10))[0])


@pytest.mark.parametrize("name,match", [
    ("rotate+mixup", "Unknown data.augment 'mixup'"),
    ("flip3", "takes no strength"),
    ("translate2.5", "whole pixels"),
    ("crop1.5", "whole pixels"),
    ("", "Unknown data.augment"),
])
def test_bad_names_raise_config_error(name, match):
  with pytest.raises(ConfigError, match=match):
    A.get(name)
  with pytest.raises(ConfigError, match=match):
    A.get_host(name)
  assert name not in A.AUGMENTATIONS and name not in A.HOST_AUGMENTATIONS


def test_registries_accept_compositions_and_list_base_names():
  assert "crop+flip+rotate30" in A.AUGMENTATIONS
  assert "crop+flip+rotate30" in A.HOST_AUGMENTATIONS
  assert set(A.AUGMENTATIONS) == set(A.HOST_AUGMENTATIONS) >= {
      "none", "flip", "cifar", "shift", "imagenet", "rotate", "translate", "skew",
      "perspective", "crop", "noise", "light", "vignette"}


# ----------------------------------------------------------------------------------
# Host twins
# ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name,strength", [
    ("rotate", 35.0), ("translate", 3), ("skew", 20.0), ("perspective", 40.0),
    ("noise", 12.0), ("light", 30.0), ("vignette", 70.0)])
def test_host_twin_equals_the_device_stage_from_the_same_draws(name, strength):
  rng = np.random.default_rng(14)
  u8 = rng.integers(0, 256, (13, 11, 3), dtype=np.uint8)
  stage = A.STAGES[name]
  u = rng.random(stage.draws).astype(np.float32)
  z = rng.standard_normal(u8.shape).astype(np.float32) if stage.normal else None
  mean = np.asarray([0.4, 0.5, 0.6], np.float32)
  std = np.asarray([0.2, 0.25, 0.3], np.float32)
  fill = np.rint(mean * 255).astype(np.uint8)                # as StreamingBatches does
  device, _ = A.apply_stage(jnp, name, strength, jnp.asarray((u8 / 255.0 - mean) / std,
                                                             jnp.float32),
                            None, jnp.asarray(u), None if z is None else jnp.asarray(z),
                            A.PixelScale(mean, std), 0.0)
  host, _ = A.apply_stage(np, name, strength, u8.astype(np.float32), None, u, z,
                          A.HOST_SCALE, fill.astype(np.float32))
  host_u8 = np.clip(np.rint(host), 0, 255)
  # The host rounds to uint8 and fills with the rounded mean colour: half a grey
  # level each.
  np.testing.assert_allclose((host_u8 / 255.0 - mean) / std, np.asarray(device),
                             atol=1.0 / 255 / std.min() + 1e-5)
  # And the host stage draws exactly those numbers from its generator, in that order.
  replay = np.random.default_rng(15)
  expected_u = replay.random(stage.draws).astype(np.float32)
  expected_z = replay.standard_normal(u8.shape).astype(np.float32) if stage.normal else None
  expected, _ = A.apply_stage(np, name, strength, u8.astype(np.float32), None, expected_u,
                              expected_z, A.HOST_SCALE, fill.astype(np.float32))
  got = A.host_stage(name, strength)(u8, np.random.default_rng(15), (13, 11), fill)
  np.testing.assert_array_equal(got, np.clip(np.rint(expected), 0, 255).astype(np.uint8))


def test_streaming_batches_run_compositions_deterministically():
  rng = np.random.default_rng(16)
  records = [(rng.integers(0, 256, (14, 12, 3), dtype=np.uint8), i % 3) for i in range(12)]
  split = Split(None, None, source=records, decode=lambda r: r, image_size=(10, 10))
  kwargs = dict(mean=[0.5] * 3, std=[0.25] * 3, seed=2, workers=1)
  stream = data.StreamingBatches(split, 4, "crop2+rotate20+noise6", **kwargs)
  plain = data.StreamingBatches(split, 4, "none", **kwargs)
  images, labels = stream.batch_at(1)
  again, _ = stream.batch_at(1)
  assert images.shape == (4, 10, 10, 3)
  np.testing.assert_array_equal(images, again)
  np.testing.assert_array_equal(labels, plain.batch_at(1)[1])
  assert not np.allclose(images, plain.batch_at(1)[0])
  stream.close()
  plain.close()


def test_figure_command_draws_one_column_per_augmentation(tmp_path):
  from PIL import Image
  from scripts import visualize as cli
  out = tmp_path / "aug.png"
  assert cli.main(["augment", "--source", "digits", "--augment", "rotate30,noise8",
                   "--draws", "2", "--out", str(out)]) == 0
  # image + 2 columns of 1-inch tiles, 2 rows + the 0.6-inch title, at 100 dpi.
  assert Image.open(out).size == (300, 260)
  with pytest.raises(SystemExit):
    cli.main(["augment", "--source", "digits", "--augment", "spin", "--out", str(out)])

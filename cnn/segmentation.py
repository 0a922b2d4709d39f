"""Semantic segmentation: pixel-wise loss, FCN's metrics and data, in one place.

The course (optimisation lecture, case study 3): the output is a pixel-level class
map, the loss a pixel-level classification loss. The models are FCN-32s/16s/8s and
U-Net (cnn/models/segmentation.py); they output logits (N, H, W, classes).

Metrics (Long et al. 2015, section 5, with n_ij the pixels of class i predicted as
class j and t_i = sum_j n_ij the pixels of class i):

    pixel accuracy   sum_i n_ii / sum_i t_i
    mean accuracy    (1 / n_cl) sum_i n_ii / t_i
    mean IU          (1 / n_cl) sum_i n_ii / (t_i + sum_j n_ji - n_ii)
    frequency-weighted IU  (sum_k t_k)^-1 sum_i t_i n_ii / (t_i + sum_j n_ji - n_ii)

A class that is absent from both the labels and the predictions has an undefined
IU and is left out of the means (the FCN code's ``nanmean``). Pixels labelled below
0 (-1: outside the image after an augmentation's crop) are ignored by the loss and
the metrics.

Data (``data.source``):

* ``canvas``, ``canvas:mnist``, ``canvas:digits``: a segmentation task built from real
  digits: 1 to 3 digits pasted at random, non-overlapping places on a 48x48 black
  canvas; each pixel is labelled 0 (background) or 1 + its digit's class where the
  digit's ink is at least half the maximum (11 classes). MNIST digits are cut to the
  20x20 box their ink fits in (LeCun et al. size-normalised every digit to 20x20
  before centring it by mass in 28x28), scikit-learn's digits (used when MNIST is
  absent, or asked for) are their 24x24 upsampled scans. Generated deterministically
  from ``config.seed``; train canvases use training digits only, test canvases test
  digits only. Sizes in ``data.canvas`` (cnn/data/canvas.py).
* ``tfds:oxford_iiit_pet``: the pets with their trimaps (pet, background, border; 3
  classes), read by cnn.data at ``data.image_size``.

A segmentation run is an ordinary run of the engine with ``config.task =
"segmentation"`` (cnn/tasks.py holds its loss, train metrics and evaluation), so it
trains, evaluates, sweeps and stacks seeds through the usual scripts:

    python -m scripts.train --config experiments/segmentation_digits.py --workdir W
    python -m scripts.evaluate --workdir W
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

# The digit canvases live in cnn.data.canvas, the loss and metrics in cnn.metrics;
# these names stay importable from here.
from cnn.data.canvas import (CANVAS_SOURCES, INK_FRACTION, MNIST_BOX,  # noqa: F401
                             canvas_digits, ink_boxes, load_canvas, place_digits)
from cnn.metrics import (IGNORE, confusion_matrix, mean_pixel_cross_entropy,  # noqa: F401
                         pixel_cross_entropy, pixel_topk_correct)
from cnn.metrics import segmentation_scores as scores  # noqa: F401


def predict(run, state, images: np.ndarray) -> np.ndarray:
  """Label maps (N, H, W) for normalised images (N, H, W, C)."""
  apply = jax.jit(lambda v, x: jnp.argmax(run.model.apply(v, x, train=False), -1))
  return np.asarray(apply({"params": state.params, "batch_stats": state.batch_stats},
                          jnp.asarray(images, jnp.float32)))

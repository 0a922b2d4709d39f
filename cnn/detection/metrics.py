"""Detection metrics on the host: PASCAL VOC's average precision and its means.

For one class at one IoU threshold t (Everingham et al. 2010, section 4.2): every
detection of the class, over all images, in descending score; a detection is a true
positive when its best-overlapping ground-truth box of that class in its image has
IoU >= t and was not matched by a higher-scoring detection, else a false positive.
AP is the area under the precision-recall curve with precision made monotone
(each recall's precision is the best at that recall or beyond), summed at every
point where recall changes ("all-point" interpolation, VOC 2010 on). mAP@0.5 is the
mean AP over the classes that have ground truth; mAP@[.5:.95] averages mAP over
t = 0.50, 0.55, ..., 0.95 (COCO's thresholds, with VOC's interpolation rather than
COCO's 101 recall points). VOC's devkit tests IoU > t; >= t differs only on exact ties.

Detections are rows (x1, y1, x2, y2, score, class), ground truth rows (x1, y1, x2,
y2, class); rows with class < 0 are padding.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from cnn.detection.boxes import box_iou

COCO_THRESHOLDS = tuple(np.round(np.arange(0.5, 0.951, 0.05), 2))


def average_precision(recall: np.ndarray, precision: np.ndarray) -> float:
  """Area under the monotone precision envelope, all points (VOC 2010+)."""
  r = np.concatenate([[0.0], recall, [1.0]])
  p = np.concatenate([[0.0], precision, [0.0]])
  p = np.maximum.accumulate(p[::-1])[::-1]
  changes = np.flatnonzero(r[1:] != r[:-1])
  return float(np.sum((r[changes + 1] - r[changes]) * p[changes + 1]))


def class_ap(detections: Sequence[np.ndarray], truths: Sequence[np.ndarray], cls: int,
             iou_threshold: float) -> float:
  """AP of class `cls`; NaN when no image has a box of that class."""
  gts = [t[t[:, 4] == cls, :4] for t in truths]
  positives = sum(len(g) for g in gts)
  if positives == 0:
    return float("nan")
  found = [(d[i, 4], image, d[i, :4]) for image, d in enumerate(detections)
           for i in np.flatnonzero(d[:, 5] == cls)]
  if not found:
    return 0.0
  # Stable sort: equal scores keep image order, so the result is deterministic.
  found.sort(key=lambda f: -f[0])
  matched = [np.zeros(len(g), bool) for g in gts]
  tp = np.zeros(len(found))
  for i, (_, image, box) in enumerate(found):
    g = gts[image]
    if not len(g):
      continue
    iou = box_iou(box[None].astype(np.float64), g.astype(np.float64))[0]
    best = int(np.argmax(iou))
    if iou[best] >= iou_threshold and not matched[image][best]:
      matched[image][best] = True
      tp[i] = 1
  tp_cum = np.cumsum(tp)
  recall = tp_cum / positives
  precision = tp_cum / np.arange(1, len(found) + 1)
  return average_precision(recall, precision)


def mean_ap(detections: Sequence[np.ndarray], truths: Sequence[np.ndarray],
            num_classes: int, iou_threshold: float = 0.5) -> tuple[float, np.ndarray]:
  """(mAP over classes with ground truth, per-class AP (NaN: no ground truth))."""
  detections = [np.asarray(d)[np.asarray(d)[:, 5] >= 0] for d in detections]
  truths = [np.asarray(t)[np.asarray(t)[:, 4] >= 0] for t in truths]
  aps = np.array([class_ap(detections, truths, c, iou_threshold)
                  for c in range(num_classes)])
  present = ~np.isnan(aps)
  return (float(np.mean(aps[present])) if present.any() else 0.0), aps


def detection_scores(detections: Sequence[np.ndarray], truths: Sequence[np.ndarray],
                     num_classes: int) -> dict[str, float]:
  """mAP@0.5 ("map50"), mAP@0.75 ("map75") and mAP@[.5:.95] ("map")."""
  by_threshold = {t: mean_ap(detections, truths, num_classes, t)[0]
                  for t in COCO_THRESHOLDS}
  return {"map50": by_threshold[0.5], "map75": by_threshold[0.75],
          "map": float(np.mean(list(by_threshold.values())))}

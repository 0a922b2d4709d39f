"""Faster R-CNN (Ren et al. 2015) on a small ResNet backbone, for the digit canvases.

    backbone   3x3/2 conv + BN + ReLU, then ResNet stages of basic blocks
               (`cnn.models.resnet.BasicBlock`), the last at stride 4 (16x16 on 64x64)
    RPN        `cnn.detection.rpn`: A = len(anchor_sizes) x len(anchor_ratios)
               anchors per cell; proposals by objectness, NMS 0.7
    RoIAlign   7x7 bins of a 1x1-reduced copy of the map (`cnn.detection.roi`)
    box head   two FC layers, background + K class scores, per-class deltas
               (`cnn.detection.head`)

``model.apply(v, images, train=False)`` returns ``{"detections": (N, D, 6)}`` rows
(x1, y1, x2, y2, score, class). With ``train=True`` it takes the ground truth
(``targets``: (N, G, 5) rows (x1, y1, x2, y2, class), class -1 pads), samples anchors
and RoIs with the "sample" rng, and returns the heads' outputs with their targets for
`cnn.detection.task.detection_losses`. As in the paper's approximate joint training,
proposals are treated as constants (no gradient through their coordinates).
"""
from __future__ import annotations

import functools
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnn import layers
from cnn.detection import head as head_lib
from cnn.detection import roi as roi_lib
from cnn.detection import rpn as rpn_lib
from cnn.models import register
from cnn.models.resnet import BasicBlock, centered_same_padding

Array = jax.Array


class FasterRCNN(nn.Module):
  """Faster R-CNN with a small ResNet backbone; see the module docstring."""
  num_classes: int = 10
  width: int = 32
  stage_sizes: Sequence[int] = (1, 1)
  anchor_sizes: Sequence[float] = (16.0, 24.0, 32.0)
  anchor_ratios: Sequence[float] = (1.0, 2.0)
  roi_channels: int = 32
  roi_size: int = 7
  hidden: int = 128
  class_agnostic: bool = False
  rpn: rpn_lib.RPNConfig = rpn_lib.RPNConfig()
  test_rpn: rpn_lib.RPNConfig = rpn_lib.RPNConfig(post_nms=50)
  box: head_lib.HeadConfig = head_lib.HeadConfig()
  conv_impl: str = "auto"
  dtype: Optional[Any] = None

  @property
  def stride(self) -> int:
    return 2 ** len(self.stage_sizes)

  def backbone(self, x: Array, train: bool) -> Array:
    conv = functools.partial(layers.conv_factory(self.conv_impl, self.dtype),
                             use_bias=False)
    norm = functools.partial(layers.BatchNorm, dtype=self.dtype)
    x = conv(self.width, 3, 2, padding=centered_same_padding(x.shape[1:3], 3, 2),
             name="conv1")(x)
    x = nn.relu(norm(name="bn1")(x, train))
    for s, blocks in enumerate(self.stage_sizes):
      for b in range(blocks):
        x = BasicBlock(self.width * 2 ** s, strides=2 if s > 0 and b == 0 else 1,
                       shortcut="B", conv=conv, norm=norm,
                       name=f"stage{s + 1}_block{b}")(x, train)
    return x.astype(jnp.float32)

  @nn.compact
  def __call__(self, images: Array, train: bool = False,
               targets: Optional[Array] = None) -> dict[str, Array]:
    n, height, width = images.shape[:3]
    features = self.backbone(images, train)
    grid = features.shape[1:3]
    anchors = jnp.asarray(rpn_lib.make_anchors(grid, self.stride, self.anchor_sizes,
                                               self.anchor_ratios))
    num_anchors = len(self.anchor_sizes) * len(self.anchor_ratios)
    logits, deltas = rpn_lib.RPNHead(num_anchors, features.shape[-1], name="rpn")(features)
    cfg = self.rpn if train else self.test_rpn
    proposals, valid = jax.vmap(
        lambda l, d: rpn_lib.propose(anchors, l, d, (height, width), cfg))(
            jax.lax.stop_gradient(logits), jax.lax.stop_gradient(deltas))
    reduced = nn.relu(nn.Conv(self.roi_channels, (1, 1), name="roi_reduce")(features))
    box_head = head_lib.BoxHead(self.num_classes, self.hidden, self.class_agnostic,
                                name="box_head")
    pool = functools.partial(roi_lib.roi_align_batched, output_size=self.roi_size,
                             spatial_scale=1.0 / self.stride, sampling_ratio=2)
    if not train:
      cls_logits, box_deltas = box_head(pool(reduced, proposals))
      detections = jax.vmap(lambda l, d, p, v: head_lib.detect(
          l, d, p, v, (height, width), self.box))(cls_logits, box_deltas, proposals, valid)
      return {"detections": detections, "proposals": proposals, "proposal_valid": valid}
    if targets is None:
      raise ValueError("FasterRCNN(train=True) needs the ground-truth targets.")
    gt = targets.astype(jnp.float32)
    gt_boxes, gt_classes = gt[..., :4], targets[..., 4].astype(jnp.int32)
    gt_valid = targets[..., 4] >= 0
    rpn_keys, roi_keys = jnp.split(jax.random.split(self.make_rng("sample"), 2 * n), 2)
    objectness, sampled, anchor_deltas = jax.vmap(
        lambda k, b, v: rpn_lib.anchor_targets(k, anchors, b, v, self.rpn))(
            rpn_keys, gt_boxes, gt_valid)
    rois, labels, roi_deltas, weights = jax.vmap(
        lambda k, p, v, b, c, g: head_lib.roi_targets(k, p, v, b, c, g, self.box))(
            roi_keys, proposals, valid, gt_boxes, gt_classes, gt_valid)
    cls_logits, box_deltas = box_head(pool(reduced, rois))
    return {"rpn_logits": logits, "rpn_deltas": deltas, "rpn_objectness": objectness,
            "rpn_sampled": sampled, "rpn_targets": anchor_deltas,
            "roi_logits": cls_logits, "roi_deltas": box_deltas, "roi_labels": labels,
            "roi_targets": roi_deltas, "roi_weights": weights}


def _configs(rpn: Optional[dict], test_rpn: Optional[dict], box: Optional[dict]):
  """The RPN (train, test) and head settings from plain dicts of overrides."""
  rpn_cfg = rpn_lib.RPNConfig(**(rpn or {}))
  test = {"post_nms": 50, **{k: v for k, v in (rpn or {}).items() if k != "post_nms"},
          **(test_rpn or {})}
  return rpn_cfg, rpn_lib.RPNConfig(**test), head_lib.HeadConfig(**(box or {}))


@register("faster_rcnn", input_shape=(64, 64, 1), family="detection")
def faster_rcnn(num_classes: int = 10, width: int = 32, stage_sizes=(1, 1),
                anchor_sizes=(16.0, 24.0, 32.0), anchor_ratios=(1.0, 2.0),
                roi_channels: int = 32, roi_size: int = 7, hidden: int = 128,
                class_agnostic: bool = False, rpn: Optional[dict] = None,
                test_rpn: Optional[dict] = None, box: Optional[dict] = None,
                conv_impl: str = "auto", dtype=None) -> FasterRCNN:
  """Faster R-CNN on a small ResNet (stride 2^len(stage_sizes)) for digit canvases.

  `rpn`, `test_rpn` and `box` are dicts overriding fields of `RPNConfig` (training;
  the test-time RPN inherits them, with 50 proposals) and `HeadConfig`.
  """
  rpn_cfg, test_cfg, box_cfg = _configs(rpn, test_rpn, box)
  return FasterRCNN(num_classes=num_classes, width=width, stage_sizes=tuple(stage_sizes),
                    anchor_sizes=tuple(float(s) for s in anchor_sizes),
                    anchor_ratios=tuple(float(r) for r in anchor_ratios),
                    roi_channels=roi_channels, roi_size=roi_size, hidden=hidden,
                    class_agnostic=class_agnostic, rpn=rpn_cfg, test_rpn=test_cfg,
                    box=box_cfg, conv_impl=conv_impl, dtype=dtype)

"""Object detection, the course's third task: R-CNN's box deltas, Fast R-CNN's RoI
pooling and box head, Faster R-CNN's region proposal network, VOC mAP.

    boxes.py     IoU, encode/decode (weights 10, 10, 5, 5), clipping, NMS (jit, -1 padded)
    roi.py       roi_pool (Fast R-CNN), roi_align (torchvision's aligned=True)
    rpn.py       anchors, the RPN head, anchor targets and sampling, its loss, proposals
    head.py      the box head, RoI sampling and targets, its loss, detections
    metrics.py   AP with VOC's all-point interpolation, mAP@0.5 and mAP@[.5:.95]
    data.py      digits pasted at random scales on canvases, with their boxes
    task.py      DetectionTask for `cnn.tasks` (config.task = "detection")

The model is `cnn.models.detection.FasterRCNN` ("faster_rcnn" in the zoo).
"""

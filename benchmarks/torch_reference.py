"""PyTorch twins of the benchmarked models, for scripts/benchmark.py --vs torch only.

    python -m benchmarks.torch_reference --model resnet20 --batch 128     # standalone
    python -m benchmarks.torch_reference --model resnet20 --serve          # for benchmark.py

The networks are the ones `cnn.models` builds, layer for layer, with the same
parameter count (benchmark.py warns when the counts differ):

- resnet{20,32,44,56,110} / plain{same} (He et al. 2016 section 4.2): 3x3 conv (no bias), BN,
  ReLU; three stages of basic blocks with 16, 32, 64 filters, the first block of
  stages 2 and 3 striding by 2; option-A shortcuts (every second pixel, zero channels
  appended); global average pool; Linear. Plain nets drop the additions.
- lenet5: 6@5x5, max pool, 16@5x5, max pool, 120@5x5, Linear 84, Linear 10, ReLU,
  on 32x32x1.

The training step is the benchmark's: SGD with momentum 0.9, lr 0.1, L2 weight decay
5e-4 on the conv and linear weights, softmax cross-entropy, BN in training mode, one
fixed random batch, channels_last memory format (PyTorch's fastest on CPU).

With ``--serve`` it prints one JSON line when warmed up, then times one window of
``--steps`` steps per "window" line read on stdin and answers with one JSON line;
"quit" ends it. PyTorch is not a dependency of the codebase.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

CIFAR_DEPTHS = {f"{family}{depth}": (depth, family == "resnet")
                for family in ("resnet", "plain") for depth in (20, 32, 44, 56, 110)}


class BasicBlock(nn.Module):
  """conv-BN-ReLU-conv-BN (+ option-A shortcut), ReLU."""

  def __init__(self, in_planes: int, planes: int, stride: int, residual: bool):
    super().__init__()
    self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.residual = residual
    self.stride = stride
    self.extra = planes - in_planes

  def forward(self, x):
    y = F.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    if self.residual:
      shortcut = x[:, :, ::self.stride, ::self.stride] if self.stride > 1 else x
      if self.extra:
        shortcut = F.pad(shortcut, (0, 0, 0, 0, 0, self.extra))
      y = y + shortcut
    return F.relu(y)


class CifarResNet(nn.Module):
  """He et al.'s CIFAR ResNet (or plain net) of depth 6n + 2, option A."""

  def __init__(self, depth: int, residual: bool, num_classes: int = 10):
    super().__init__()
    n = (depth - 2) // 6
    self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(16)
    blocks, in_planes = [], 16
    for s, planes in enumerate((16, 32, 64)):
      for b in range(n):
        stride = 2 if s > 0 and b == 0 else 1
        blocks.append(BasicBlock(in_planes, planes, stride, residual))
        in_planes = planes
    self.blocks = nn.Sequential(*blocks)
    self.head = nn.Linear(64, num_classes)
    for m in self.modules():
      if isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")

  def forward(self, x):
    x = F.relu(self.bn1(self.conv1(x)))
    x = self.blocks(x)
    return self.head(x.mean(dim=(2, 3)))


class LeNet5(nn.Module):
  """The `lenet5` of cnn.models: ReLU and 2x2 max pooling, 61,706 parameters."""

  def __init__(self, num_classes: int = 10):
    super().__init__()
    self.conv1 = nn.Conv2d(1, 6, 5)
    self.conv2 = nn.Conv2d(6, 16, 5)
    self.conv3 = nn.Conv2d(16, 120, 5)
    self.fc4 = nn.Linear(120, 84)
    self.fc5 = nn.Linear(84, num_classes)

  def forward(self, x):
    x = F.max_pool2d(F.relu(self.conv1(x)), 2)
    x = F.max_pool2d(F.relu(self.conv2(x)), 2)
    x = F.relu(self.conv3(x)).flatten(1)
    return self.fc5(F.relu(self.fc4(x)))


def build(name: str) -> tuple[nn.Module, tuple[int, int, int]]:
  """The model and its (C, H, W) input."""
  if name in CIFAR_DEPTHS:
    depth, residual = CIFAR_DEPTHS[name]
    return CifarResNet(depth, residual), (3, 32, 32)
  if name == "lenet5":
    return LeNet5(), (1, 32, 32)
  raise SystemExit(f"error: no PyTorch reference for model {name!r}; choose one of "
                   f"{', '.join(sorted([*CIFAR_DEPTHS, 'lenet5']))}.")


class Trainer:
  """The benchmark's training step on one fixed batch."""

  def __init__(self, name: str, batch: int, seed: int = 0):
    torch.manual_seed(seed)
    model, chw = build(name)
    self.model = model.to(memory_format=torch.channels_last).train()
    self.images = torch.randn(batch, *chw).contiguous(memory_format=torch.channels_last)
    self.labels = torch.randint(0, 10, (batch,))
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    self.opt = torch.optim.SGD([{"params": decay, "weight_decay": 5e-4},
                                {"params": no_decay, "weight_decay": 0.0}],
                               lr=0.1, momentum=0.9)
    self.batch = batch
    self.params = sum(p.numel() for p in model.parameters())

  def step(self) -> torch.Tensor:
    self.opt.zero_grad(set_to_none=True)
    loss = F.cross_entropy(self.model(self.images), self.labels)
    loss.backward()
    self.opt.step()
    return loss

  def window(self, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
      loss = self.step()
    loss.item()
    return self.batch * steps / (time.perf_counter() - start)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(prog="python -m benchmarks.torch_reference",
                                   description=__doc__, allow_abbrev=False,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--model", default="resnet20")
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--windows", type=int, default=5)
  parser.add_argument("--warmup", type=int, default=3)
  parser.add_argument("--threads", type=int, default=0, help="0: PyTorch's default")
  parser.add_argument("--serve", action="store_true")
  args = parser.parse_args(argv)
  if args.threads:
    torch.set_num_threads(args.threads)
  trainer = Trainer(args.model, args.batch)
  for _ in range(args.warmup):
    trainer.step()
  info = {"framework": "torch", "version": torch.__version__, "model": args.model,
          "batch": args.batch, "params": trainer.params, "threads": torch.get_num_threads(),
          "memory_format": "channels_last",
          "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default")}
  if args.serve:
    print(json.dumps(info), flush=True)
    for line in sys.stdin:
      if line.strip() == "quit":
        break
      print(json.dumps({"img_per_s": trainer.window(args.steps)}), flush=True)
    return
  windows = [trainer.window(args.steps) for _ in range(args.windows)]
  img_s = statistics.median(windows)
  print(json.dumps({**info, "img_per_s": round(img_s, 1),
                    "step_ms": round(1e3 * args.batch / img_s, 1),
                    "windows_img_per_s": [round(w, 1) for w in windows]}, indent=2))


if __name__ == "__main__":
  main()

"""Time a model's train step per convolution implementation, against PyTorch.

    python -m scripts.benchmark --model resnet20 --conv_impl all --vs torch

The harness is benchmarks/train_step.py (the engine's real step for the CIFAR
ResNets, `--step auto|engine|bare`); benchmarks/engine_step.py adds the compile-time
table. This CLI keeps the documented command.
"""
import sys

from benchmarks.train_step import main

if __name__ == "__main__":
  sys.exit(main())

"""Tests of the per-layer summary (cnn/summary.py) and its CLI (scripts/summary.py).

Every expected number is computed by hand in a comment or taken from the paper or the
course slide it names. Zoo models are traced, never run (jax.eval_shape /
make_jaxpr), so ImageNet sizes cost a trace each.
"""
import functools
import json
import os
import pathlib
import subprocess
import sys

import flax.linen as nn
import jax.numpy as jnp
import pytest

from cnn import layers, models
from cnn.errors import ConfigError
from cnn.summary import Row, render, summarize, summarize_registered, totals
from scripts import summary as summary_cli

REPO = pathlib.Path(__file__).resolve().parents[1]


@functools.lru_cache(maxsize=None)
def _zoo(name: str, **kwargs) -> tuple[Row, ...]:
  """Rows of a registered model (traced once per test session), or a skip."""
  if name not in models.names():
    pytest.skip(f"model {name!r} is not registered (its family file is missing)")
  return tuple(summarize_registered(name, **kwargs))


def _by_name(rows) -> dict[str, Row]:
  return {r.name: r for r in rows}


# ----------------------------------------------------------------------------------
# Small nets, every row by hand
# ----------------------------------------------------------------------------------

class SmallNet(nn.Module):
  """conv 5x5 pad 2 -> relu -> max pool (function) -> BN -> flatten -> dropout -> relu
  -> dense: the relu after dropout checks the order around a layer that adds no
  operation of its own (dropout in evaluation is the identity)."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.relu(layers.Conv(10, 5, padding=2, name="conv")(x))
    x = layers.max_pool(x, 2)
    x = layers.BatchNorm(name="bn")(x, train)
    x = layers.flatten(x)
    x = layers.Dropout(0.5, name="drop")(x, train)
    x = nn.relu(x)
    return layers.Dense(7, name="fc")(x)


def test_small_net_rows_by_hand():
  rows = summarize(SmallNet(), (32, 32, 3))
  got = [(r.name, r.layer_type, r.output_shape, r.params, r.macs, r.activations,
          r.in_place) for r in rows]
  assert got == [
      ("input", "Input", (32, 32, 3), 0, 0, 32 * 32 * 3, False),
      # 10 filters of 5x5x3 plus a bias each: 10 * (75 + 1) = 760 parameters;
      # 32x32 positions x 10 filters x 75 multiply-adds = 768,000; 32*32*10 = 10,240.
      ("conv", "Conv", (32, 32, 10), 760, 768_000, 10_240, False),
      ("relu", "ReLU", (32, 32, 10), 0, 0, 10_240, True),
      ("max_pool", "MaxPool", (16, 16, 10), 0, 0, 2_560, False),
      # gamma and beta per channel: 2 * 10; the running mean/var are not parameters.
      ("bn", "BatchNorm", (16, 16, 10), 20, 0, 2_560, False),
      ("drop", "Dropout", (2_560,), 0, 0, 2_560, True),
      ("relu_1", "ReLU", (2_560,), 0, 0, 2_560, True),
      # 2560 inputs x 7 outputs = 17,920 weights and multiply-adds, + 7 biases.
      ("fc", "Dense", (7,), 17_927, 17_920, 7, False),
  ]
  t = totals(rows)
  assert t.params == 760 + 20 + 17_927
  assert t.macs == 768_000 + 17_920
  # In-place rows (ReLU, dropout) are not new memory: 3072 + 10240 + 2560 + 2560 + 7.
  assert t.activations == 18_439
  assert t.activation_bytes == 4 * 18_439


def test_course_exercise_conv_layer():
  # Course deck 01: input 33x33x5, 10 filters 3x3 stride 2, no padding ->
  # 16x16x10 and 10 * (3*3*5 + 1) = 460 parameters; MACs 16*16*10 * 45 = 115,200.
  class Exercise(nn.Module):
    @nn.compact
    def __call__(self, x):
      return layers.Conv(10, 3, strides=2, padding=0, name="conv")(x)

  (_, conv) = summarize(Exercise(), (33, 33, 5))
  assert (conv.output_shape, conv.params, conv.macs) == ((16, 16, 10), 460, 115_200)


class OddNet(nn.Module):
  """Depthwise-separable, LRN and tanh as functions, average pooling, transposed conv,
  a shared layer, a parameter of the model itself and global average pooling."""

  @nn.compact
  def __call__(self, x):
    x = layers.SeparableConv(8, 3, name="sep")(x)
    x = layers.local_response_norm(x)
    x = jnp.tanh(x)
    x = layers.avg_pool(x, 2)
    x = layers.ConvTranspose(5, 2, 2, name="up")(x)
    shared = layers.Conv(5, 1, name="shared")
    x = shared(shared(x))
    x = x * self.param("scale", nn.initializers.ones, (5,))
    return layers.global_avg_pool(x)


def test_depthwise_transposed_shared_and_own_params():
  rows = summarize(OddNet(), (8, 8, 4))
  got = [(r.name, r.layer_type, r.output_shape, r.params, r.macs, r.activations)
         for r in rows]
  assert got == [
      ("input", "Input", (8, 8, 4), 0, 0, 256),
      # The model's own `scale` (5 values) is a row without an output.
      ("OddNet", "OddNet (own parameters)", (), 5, 0, 0),
      # Depthwise 3x3, one filter per channel, no bias: 9 * 4 = 36 weights;
      # 8*8 positions x 4 channels x 9 = 2,304 MACs.
      ("sep/depthwise", "Conv (depthwise)", (8, 8, 4), 36, 2_304, 256),
      # Pointwise 1x1, 4 -> 8, no bias: 32 weights; 8*8 x 32 = 2,048 MACs.
      ("sep/pointwise", "Conv", (8, 8, 8), 32, 2_048, 512),
      # The function form of LRN: its window sum over channels, not a pooling.
      ("local_response_norm", "LocalResponseNorm", (8, 8, 8), 0, 0, 512),
      ("tanh", "Tanh", (8, 8, 8), 0, 0, 512),
      # One row for average pooling, though it also sums windows of ones (its divisor).
      ("avg_pool", "AvgPool", (4, 4, 8), 0, 0, 128),
      # 2x2/2 transposed conv 8 -> 5: 2*2*8*5 + 5 = 165 parameters; each of the 4x4
      # input pixels scatters the whole kernel: 4*4 * 160 = 2,560 MACs.
      ("up", "ConvTranspose", (8, 8, 5), 165, 2_560, 320),
      # 1x1 conv 5 -> 5: 25 + 5 = 30 parameters, counted at its first call only;
      # 8*8 x 25 = 1,600 MACs at each call.
      ("shared", "Conv", (8, 8, 5), 30, 1_600, 320),
      ("shared (call 2)", "Conv", (8, 8, 5), 0, 1_600, 320),
      ("global_avg_pool", "GlobalAvgPool", (5,), 0, 0, 5),
  ]
  assert totals(rows).params == 5 + 36 + 32 + 165 + 30


class TrainOnlyHead(nn.Module):
  """flax's own Conv (grouped) and Dense; an auxiliary head called only in training
  (and at init, so its parameters exist)."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Conv(6, (3, 3), feature_group_count=2, padding="VALID", name="conv")(x)
    x = x.reshape((x.shape[0], -1))
    if train or self.is_initializing():
      nn.Dense(2, name="aux")(x)
    return nn.Dense(3, name="head")(x)


def test_flax_layers_and_parameters_not_run_in_evaluation():
  rows = summarize(TrainOnlyHead(), (6, 6, 4))
  got = [(r.name, r.layer_type, r.output_shape, r.params, r.macs) for r in rows]
  assert got == [
      ("input", "Input", (6, 6, 4), 0, 0),
      # 2 groups of 2 input channels: 3*3*2*6 + 6 = 114 parameters; 4x4 positions x
      # 108 weights = 1,728 MACs.
      ("conv", "Conv (groups=2)", (4, 4, 6), 114, 1_728),
      ("head", "Dense", (3,), 96 * 3 + 3, 96 * 3),
      # The aux head is part of the model (96 * 2 + 2) but does not run in evaluation.
      ("aux", "(not run in evaluation)", (), 194, 0),
  ]


def test_input_shape_errors_are_one_sentence():
  with pytest.raises(ConfigError, match="positive integers"):
    summarize(SmallNet(), (32, 0, 3))
  with pytest.raises(ConfigError, match="positive integers"):
    summarize(SmallNet(), ("a", 32, 3))

  class FlaxPool(nn.Module):     # flax's own pooling: no size check of its own
    @nn.compact
    def __call__(self, x):
      return nn.max_pool(x, (2, 2), (2, 2))

  with pytest.raises(ConfigError, match="too small .* max_pool outputs an empty 0x0x3"):
    summarize(FlaxPool(), (1, 1, 3))
  # cnn.layers check the course's rule themselves: (3 - 5 + 0) / 1 + 1 < 1.
  with pytest.raises(ConfigError, match="smaller than its 5-wide window"):
    summarize(nn.Sequential([layers.Conv(4, 5, padding=0)]), (3, 3, 1))


# ----------------------------------------------------------------------------------
# The course's VGG-16 slide (deck 01, "Case study: VGG net")
# ----------------------------------------------------------------------------------

# (slide label, output shape, memory = H*W*C, params "not counting biases"), every
# product checked by hand; the slide writes memory rounded ("3.2M" = 3,211,264).
VGG16_SLIDE = [
    ("INPUT", (224, 224, 3), 150_528, 0),
    ("CONV3-64", (224, 224, 64), 3_211_264, 3 * 3 * 3 * 64),           # 1,728
    ("CONV3-64", (224, 224, 64), 3_211_264, 3 * 3 * 64 * 64),          # 36,864
    ("POOL2", (112, 112, 64), 802_816, 0),
    ("CONV3-128", (112, 112, 128), 1_605_632, 3 * 3 * 64 * 128),       # 73,728
    ("CONV3-128", (112, 112, 128), 1_605_632, 3 * 3 * 128 * 128),      # 147,456
    ("POOL2", (56, 56, 128), 401_408, 0),
    ("CONV3-256", (56, 56, 256), 802_816, 3 * 3 * 128 * 256),          # 294,912
    ("CONV3-256", (56, 56, 256), 802_816, 3 * 3 * 256 * 256),          # 589,824
    ("CONV3-256", (56, 56, 256), 802_816, 3 * 3 * 256 * 256),
    ("POOL2", (28, 28, 256), 200_704, 0),
    ("CONV3-512", (28, 28, 512), 401_408, 3 * 3 * 256 * 512),          # 1,179,648
    ("CONV3-512", (28, 28, 512), 401_408, 3 * 3 * 512 * 512),          # 2,359,296
    ("CONV3-512", (28, 28, 512), 401_408, 3 * 3 * 512 * 512),
    ("POOL2", (14, 14, 512), 100_352, 0),
    ("CONV3-512", (14, 14, 512), 100_352, 3 * 3 * 512 * 512),
    ("CONV3-512", (14, 14, 512), 100_352, 3 * 3 * 512 * 512),
    ("CONV3-512", (14, 14, 512), 100_352, 3 * 3 * 512 * 512),
    ("POOL2", (7, 7, 512), 25_088, 0),
    ("FC", (4096,), 4_096, 7 * 7 * 512 * 4096),                        # 102,760,448
    ("FC", (4096,), 4_096, 4096 * 4096),                               # 16,777,216
    ("FC", (1000,), 1_000, 4096 * 1000),                               # 4,096,000
]


def test_vgg16_reproduces_the_course_slide_rows():
  rows = [r for r in _zoo("vgg16") if not r.in_place]   # ReLU/dropout: in place
  assert len(rows) == len(VGG16_SLIDE)
  for row, (label, shape, memory, weights) in zip(rows, VGG16_SLIDE):
    assert row.output_shape == shape, (row.name, label)
    assert row.activations == memory, (row.name, label)
    # The slide leaves biases out: one per filter / output unit.
    biases = shape[-1] if weights else 0
    assert row.params == weights + biases, (row.name, label)


def test_vgg16_totals_and_the_slide_erratum():
  t = totals(_zoo("vgg16"))
  # "TOTAL params: 138M": the slide's weights sum to 138,344,128, plus 13,416 biases
  # (2*64 + 2*128 + 3*256 + 6*512 + 2*4096 + 1000) = 138,357,544 (Simonyan &
  # Zisserman Table 2: 138M).
  assert t.params == 138_344_128 + 13_416 == 138_357_544
  # "TOTAL memory: 24M * 4 bytes ~= 93MB / image" is wrong: the slide's own memory
  # column sums to 150,528 + 2*3,211,264 + 802,816 + 2*1,605,632 + 401,408
  # + 3*802,816 + 200,704 + 3*401,408 + 100,352 + 3*100,352 + 25,088 + 4,096 + 4,096
  # + 1,000 = 15,237,608 values ~= 15.2M, i.e. 60,950,432 bytes ~= 61 MB (58 MiB) per
  # image forward (24M * 4 bytes would be 96 MB, not 93 MB, either). The tool is right.
  assert sum(memory for _, _, memory, _ in VGG16_SLIDE) == 15_237_608
  assert t.activations == 15_237_608
  assert t.activation_bytes == 60_950_432


def test_vgg16_multiply_adds():
  rows = _zoo("vgg16")
  conv_macs = sum(r.macs for r in rows if r.layer_type == "Conv")
  # Output positions x kernel size per stage:
  # 224^2 (1,728 + 36,864) + 112^2 (73,728 + 147,456) + 56^2 (294,912 + 2 * 589,824)
  # + 28^2 (1,179,648 + 2 * 2,359,296) + 14^2 (3 * 2,359,296) = 15,346,630,656:
  # He et al. (2016) and the course's ResNet slide: VGG-16 "15.3B FLOPs".
  assert conv_macs == 15_346_630_656
  # + the FC layers' 102,760,448 + 16,777,216 + 4,096,000 = 15.47 G (the usual count).
  assert totals(rows).macs == 15_346_630_656 + 123_633_664


# ----------------------------------------------------------------------------------
# Totals against the papers
# ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name, millions", [
    # Simonyan & Zisserman Table 2 (and the course): A/A-LRN 133, B 133, C 134,
    # D 138, E 144 million parameters.
    ("vgg11", 133), ("vgg11_lrn", 133), ("vgg13", 133), ("vgg16c", 134),
    ("vgg16", 138), ("vgg19", 144),
])
def test_vgg_parameters_table2(name, millions):
  assert round(totals(_zoo(name)).params / 1e6) == millions


def test_vgg19():
  t = totals(_zoo("vgg19"))
  # VGG-16 + conv3_4 (3*3*256*256 + 256) + conv4_4 and conv5_4 (3*3*512*512 + 512).
  assert t.params == 138_357_544 + 590_080 + 2 * 2_359_808
  # VGG-16 + 56^2 * 589,824 + 28^2 * 2,359,296 + 14^2 * 2,359,296 = 19.63 G; He et al.
  # (2016): VGG-19 "19.6 billion FLOPs".
  assert t.macs == 15_470_264_320 + 1_849_688_064 + 1_849_688_064 + 462_422_016
  assert round(t.macs / 1e8) == 196


# ResNet-18 by hand (option B, BN gamma+beta, bias-free convs, FC with bias):
#   stem 7*7*3*64 + 128 = 9,536
#   stage1: 2 * (2 * 36,864 + 256) = 147,968
#   stage2: (73,728 + 147,456 + 512 + 8,192 + 256) + (2 * 147,456 + 512) = 525,568
#   stage3: (294,912 + 589,824 + 1,024 + 32,768 + 512) + (2 * 589,824 + 1,024) = 2,099,712
#   stage4: (1,179,648 + 2,359,296 + 2,048 + 131,072 + 1,024) + (2 * 2,359,296 + 2,048)
#           = 8,393,728
#   fc 512 * 1000 + 1000 = 513,000                                  -> 11,689,512
# ResNet-34 adds 1, 2, 4, 1 basic blocks to stages 1-4:
#   73,984 + 2 * 295,424 + 4 * 1,180,672 + 4,720,640 = 10,108,160  -> 21,797,672
# ResNet-50/101/152: 25,557,032 / 44,549,160 / 60,192,808, the counts torchvision
# publishes for the same architecture (course: ResNet-50 "25M").
RESNET_IMAGENET = {
    # depth: (parameters, He et al. Table 1 multiply-adds in G)
    18: (11_689_512, 1.8), 34: (21_797_672, 3.6), 50: (25_557_032, 3.8),
    101: (44_549_160, 7.6), 152: (60_192_808, 11.3),
}
# The paper strides the first 1x1 of a downsampling bottleneck; this zoo strides the
# 3x3 ("v1.5"), so that 1x1 runs on 4x the positions: 3 * 25,690,112 more MACs in each
# of stages 2-4 (28*28*256*128 = 14*14*512*256 = 7*7*1024*512 = 25,690,112).
V15_EXTRA_MACS = 3 * 3 * 25_690_112


@pytest.mark.parametrize("depth", sorted(RESNET_IMAGENET))
def test_resnet_imagenet(depth):
  params, paper_gmacs = RESNET_IMAGENET[depth]
  t = totals(_zoo(f"resnet{depth}"))
  assert t.params == params
  expected = paper_gmacs * 1e9 + (V15_EXTRA_MACS if depth >= 50 else 0)
  assert t.macs == pytest.approx(expected, rel=0.03)


@pytest.mark.parametrize("depth, paper", [(20, "0.27"), (56, "0.85"), (110, "1.7")])
def test_resnet_cifar(depth, paper):
  # He et al. Table 6. With n = (depth - 2) / 6 blocks per stage (option A, no
  # projection): stem 3*3*3*16 + 32 = 464, fc 64*10 + 10 = 650, stage1 n * 4,672,
  # stage2 13,952 + (n-1) * 18,560, stage3 55,552 + (n-1) * 73,984
  # = 97,216 n - 21,926: 269,722 / 853,018 / 1,727,962.
  n = (depth - 2) // 6
  params = totals(_zoo(f"resnet{depth}")).params
  assert params == 97_216 * n - 21_926
  assert f"{params / 1e6:.{len(paper) - 2}f}" == paper


@pytest.mark.parametrize("name, mult_adds_m, params_m", [
    # Howard et al. (2017) Table 6/8: width 1.0: 569M mult-adds, 4.2M parameters;
    # 0.75: 325M, 2.6M; 0.5: 149M, 1.3M; 0.25: 41M, 0.5M.
    ("mobilenet_v1", 569, 4.2), ("mobilenet_v1_075", 325, 2.6),
    ("mobilenet_v1_050", 149, 1.3), ("mobilenet_v1_025", 41, 0.5),
])
def test_mobilenet_v1(name, mult_adds_m, params_m):
  t = totals(_zoo(name))
  assert round(t.macs / 1e6) == mult_adds_m
  assert round(t.params / 1e5) / 10 == params_m


def test_mobilenet_v1_exact():
  # Table 1 by hand. Conv weights: 864 + dw (288 + 576 + 1,152 + 1,152 + 2,304 + 2,304
  # + 5 * 4,608 + 4,608 + 9,216) + pw (2,048 + 8,192 + 16,384 + 32,768 + 65,536
  # + 131,072 + 5 * 262,144 + 524,288 + 1,048,576) = 3,185,088; BN 2 * 10,944 channels
  # = 21,888; FC 1,024,000 + 1,000  -> 4,231,976.
  # MACs: output positions x the kernel sizes of the layers at that resolution:
  #   112^2: conv1 864 + dw 288 + pw 2,048 = 3,200
  #   56^2: dw/2 576 + pw 8,192 + dw 1,152 + pw 16,384 = 26,304
  #   28^2: dw/2 1,152 + pw 32,768 + dw 2,304 + pw 65,536 = 101,760
  #   14^2: dw/2 2,304 + pw 131,072 + 5 * (dw 4,608 + pw 262,144) = 1,467,136
  #   7^2: dw/2 4,608 + pw 524,288 + dw 9,216 + pw 1,048,576 = 1,586,688
  # = 567,716,352, + FC 1,024,000 = 568,740,352 ("569M").
  t = totals(_zoo("mobilenet_v1"))
  assert t.params == 3_185_088 + 21_888 + 1_025_000
  conv_macs = (112**2 * 3_200 + 56**2 * 26_304 + 28**2 * 101_760 + 14**2 * 1_467_136
               + 7**2 * 1_586_688)
  assert conv_macs == 567_716_352
  assert t.macs == conv_macs + 1_024_000


def test_googlenet_table1():
  rows = _zoo("googlenet")
  t = totals(rows)
  # Szegedy et al. Table 1 sums to 6.8M parameters and 1.5G operations, but its first
  # row (7x7/2 conv, "2.7K params, 34M ops") is off: 7*7*3*64 = 9,408 weights at
  # 112*112 positions are 118,013,952 multiply-adds. With that row fixed the table's
  # ops column is 1,502M - 34M + 118M = 1,586M.
  conv1 = _by_name(rows)["conv1"]
  assert conv1.macs == 112 * 112 * 9_408 == 118_013_952
  assert t.macs == pytest.approx(1_586e6, rel=0.01)
  # The params column is rounded down row by row (3a: "159K"); the whole count is
  # within 5% of 6.8M. Inception 3a exactly, from the filter counts of its row
  # (192 inputs; 64 | 96 -> 128 | 16 -> 32 | pool -> 32):
  # 192*64 + 192*96 + 9*96*128 + 192*16 + 25*16*32 + 192*32 = 163,328 weights
  # + 368 biases = 163,696; Table 1: 128M ops = 28*28 * 163,328 = 128,049,152.
  assert t.params == pytest.approx(6.8e6, rel=0.05)
  block = [r for r in rows if r.name.startswith("inception_3a/")]
  assert sum(r.params for r in block) == 163_696
  assert sum(r.macs for r in block) == 128_049_152


def test_alexnet_course_and_paper():
  rows = _zoo("alexnet", groups=2)
  # Course deck 03: first conv layer 11x11x3x96 stride 4 -> (55, 55, 96),
  # "Number of parameters: 34,944" (= 11*11*3*96 + 96).
  conv1 = _by_name(rows)["conv1"]
  assert (conv1.output_shape, conv1.params) == ((55, 55, 96), 34_944)
  # Paper "60 million": with the two-GPU groups, conv2 5*5*48*256, conv4 3*3*192*384,
  # conv5 3*3*192*256 weights: 34,944 + 307,456 + 885,120 + 663,936 + 442,624
  # + 37,752,832 + 16,781,312 + 4,097,000 = 60,965,224.
  assert totals(rows).params == 60_965_224


def test_lenet5_course():
  t = totals(_zoo("lenet5"))
  # Course: "60k parameters". 6*(25+1) + 16*(150+1) + 120*(400+1) + 84*121 + 10*85
  # = 156 + 2,416 + 48,120 + 10,164 + 850 = 61,706. MACs: 28^2*6*25 + 10^2*16*150
  # + 120*400 + 120*84 + 84*10 = 117,600 + 240,000 + 48,000 + 10,080 + 840.
  assert t.params == 61_706
  assert t.macs == 416_520


def test_xception_chollet_table3():
  # Chollet (2017) Table 3: Xception 22,855,952 parameters.
  assert totals(_zoo("xception")).params == 22_855_952


# ----------------------------------------------------------------------------------
# Output formats and the CLI
# ----------------------------------------------------------------------------------

def test_markdown_csv_json():
  rows = summarize(SmallNet(), (32, 32, 3))
  md = render(rows, "markdown", title="SmallNet")
  lines = md.splitlines()
  assert lines[0] == "SmallNet"
  assert lines[2] == "| Layer | Type | Output | Params | MACs | Activations | Memory |"
  assert "| conv | Conv | 32x32x10 | 760 | 768,000 | 10,240 | 40.0 KiB |" in lines
  assert "| relu | ReLU | 32x32x10 | 0 | 0 | 10,240\\* | 40.0 KiB |" in lines
  assert "- Total params: 18,707 (18.71 K)" in lines
  csv_lines = render(rows, "csv").splitlines()
  assert csv_lines[2] == "conv,Conv,32x32x3,32x32x10,760,768000,10240,40960,False"
  assert csv_lines[-1] == "TOTAL,,,,18707,785920,18439,73756,"
  doc = json.loads(render(rows, "json"))
  assert doc["totals"] == {"params": 18_707, "macs": 785_920, "activations": 18_439,
                           "activation_bytes": 73_756}
  assert [r["name"] for r in doc["rows"]][:3] == ["input", "conv", "relu"]
  with pytest.raises(ConfigError, match="Unknown format 'html'"):
    render(rows, "html")


def test_cli_prints_table_and_markdown(capsys):
  assert summary_cli.main(["lenet5", "--num_classes", "3"]) == 0
  out = capsys.readouterr().out
  assert out.splitlines()[0] == "lenet5 on 32x32x1 input, per image"
  # fc5 with 3 classes: 84 * 3 + 3 = 255; total 61,706 - 850 + 255.
  assert "Total params: 61,111" in out
  assert summary_cli.main(["lenet5", "--input", "28x28x1", "--format", "markdown"]) == 0
  assert "| conv1 | Conv | 28x28x6 | 156 | 117,600 |" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["vgg17"], "Unknown model 'vgg17'"),
    (["lenet5", "--input", "8,8,1"], "conv2: input of size 2 is smaller than its 5-wide"),
    # A 2-D input reaches the model's first conv, which names what it needs.
    (["lenet5", "--input", "32,32"], "expects NHWC input with 4 dimensions"),
    (["lenet5", "--input", "32,a,1"], "Cannot read input shape"),
    (["lenet5", "--num_classes", "0"], "--num_classes must be positive"),
])
def test_cli_user_errors_exit_2(argv, message, capsys):
  with pytest.raises(SystemExit) as exit_info:
    summary_cli.main(argv)
  assert exit_info.value.code == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]


def test_cli_as_module_exits_2_with_one_line():
  # The real entry point, in its own process: one sentence on stderr, status 2.
  done = subprocess.run([sys.executable, "-m", "scripts.summary", "no_such_model"],
                        cwd=REPO, env={**os.environ, "JAX_PLATFORMS": "cpu"},
                        capture_output=True, text=True, timeout=120, check=False)
  assert done.returncode == 2
  assert done.stderr.startswith("error: Unknown model 'no_such_model'; valid choices")
  assert len(done.stderr.strip().splitlines()) == 1

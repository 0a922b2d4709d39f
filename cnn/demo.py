"""The course's worked examples, computed by the library (`python -m scripts.demo_layers`).

`run` prints the output-size and parameter-count exercises, the 2x2 filter over a 3x3 image,
the max-pool exercise, the depthwise-separable multiplication counts (taken from the
modules' kernel and output shapes), and the course's box blur and edge detector applied
to a real 8x8 digit from scikit-learn's `load_digits`. Shapes are traced with
`jax.eval_shape`, never run, so the whole demo takes a few seconds on a CPU.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from cnn import layers
from cnn.errors import ConfigError

KEY = jax.random.key(0)


def traced(module, input_shape, **kwargs):
  """(output shape, {variable collection: {name: shape}}) without running anything."""
  out, variables = jax.eval_shape(
      lambda: module.init_with_output(KEY, jnp.zeros(input_shape), **kwargs))
  return out.shape, jax.tree.map(lambda a: a.shape, variables)


def num_params(module, input_shape) -> int:
  _, shapes = traced(module, input_shape)
  return sum(math.prod(s) for s in jax.tree.leaves(
      shapes["params"], is_leaf=lambda s: isinstance(s, tuple)))


def multiplications(kernel_shape, output_shape) -> int:
  """One image through a conv: K*K*(C_in/groups)*C_out multiplies per output pixel."""
  return math.prod(kernel_shape) * output_shape[1] * output_shape[2]


def heading(title: str) -> None:
  print(f"\n{title}\n{'-' * len(title)}")


def grid(rows: np.ndarray, fmt: str = "{:6.2f}") -> str:
  return "\n".join("    " + " ".join(fmt.format(v) for v in row) for row in rows)


def output_sizes() -> None:
  heading("Output sizes: (N - F + 2P) / S + 1")
  for n, f, p, s, d, where in [
      (7, 3, 0, 1, 1, "deck 03: 7x7 input, 3x3 filter, stride 1"),
      (7, 3, 0, 2, 1, "deck 03: stride 2"),
      (7, 3, 1, 1, 1, "deck 03: pad 1 keeps 7x7"),
      (227, 11, 0, 4, 1, "AlexNet CONV1"),
      (55, 3, 0, 2, 1, "AlexNet MAX POOL1 3x3/2"),
      (7, 3, 0, 1, 2, "deck 04: 2-dilated 3x3 covers 5x5"),
      (7, 3, "SAME", 2, 1, "SAME: ceil(N / S)")]:
    size = layers.conv_output_size(n, f, p, s, d)
    print(f"  N={n:<3} F={f:<2} P={p!s:<4} S={s} d={d}  ->  {size:<3}  {where}")
  try:
    layers.conv_output_size(7, 3, 0, 3, layer="conv (deck 03, stride 3)")
  except ConfigError as e:
    print(f"  N=7   F=3  P=0    S=3 d=1  ->  ConfigError: {e}")


def layer_exercises() -> None:
  heading("Conv layers: output volume and parameters")
  for input_shape, conv, where in [
      ((1, 33, 33, 5), layers.Conv(10, 3, strides=2, padding="VALID"),
       "deck 01: 10 filters 3x3, stride 2, no padding"),
      ((1, 32, 32, 3), layers.Conv(10, 5, strides=1, padding=2),
       "deck 05: 10 filters 5x5, stride 1, pad 2"),
      ((1, 27, 27, 96), layers.Conv(256, 5, padding=2, groups=2),
       "AlexNet CONV2 on two GPUs (groups=2)")]:
    out, _ = traced(conv, input_shape)
    print(f"  {'x'.join(map(str, input_shape[1:])):>8} -> {'x'.join(map(str, out[1:])):<9}"
          f" {num_params(conv, input_shape):>8,} parameters   {where}")


def worked_convolution() -> None:
  heading("Deck 03: 2x2 filter [[1, .5], [.25, 0]] over a 3x3 image (VALID)")
  image = jnp.array([[0, 80, 40], [20, 40, 0], [0, 0, 40]], jnp.float32)
  conv_filter = jnp.array([[1, .5], [.25, 0]], jnp.float32)
  conv = layers.Conv(1, 2, padding="VALID", use_bias=False)
  y = conv.apply({"params": {"kernel": conv_filter[:, :, None, None]}},
                 image[None, :, :, None])
  print(grid(np.asarray(image), "{:4.0f}"))
  print("  ->")
  print(grid(np.asarray(y[0, :, :, 0]), "{:4.0f}"))


def pooling_exercise() -> None:
  heading("Deck 05: max pool 2x2, stride 2, on the 6x6 exercise")
  x = np.array([[2, 7, 5, 5, 3, 3], [6, 3, 0, 3, 4, 0], [6, 3, 9, 0, 2, 3],
                [0, 1, 6, 2, 6, 6], [6, 3, 0, 5, 1, 0], [7, 3, 6, 4, 0, 5]], np.float32)
  batch = jnp.asarray(x)[None, :, :, None]
  print("  max:", np.asarray(layers.max_pool(batch, 2, 2)[0, :, :, 0]).astype(int).tolist())
  print("  avg:", np.asarray(layers.avg_pool(batch, 2, 2)[0, :, :, 0]).tolist())
  print(f"  global average: {float(layers.global_avg_pool(batch)[0, 0]):.4f} (= 125/36)")


def separable_counts() -> None:
  heading("Deck 02: multiplications for 256 filters 5x5 on 8x8 output locations")
  input_shape = (1, 12, 12, 3)
  out, shapes = traced(layers.Conv(256, 5, padding="VALID", use_bias=False), input_shape)
  standard = multiplications(shapes["params"]["kernel"], out)
  print(f"  standard   kernel {shapes['params']['kernel']!s:<16} output {out!s:<17}"
        f" {standard:>10,}")
  _, shapes = traced(layers.SeparableConv(256, 5, padding="VALID"), input_shape,
                     capture_intermediates=True)
  total = 0
  for part in ("depthwise", "pointwise"):
    kernel = shapes["params"][part]["kernel"]
    (part_out,) = shapes["intermediates"][part]["__call__"]
    count = multiplications(kernel, part_out)
    total += count
    print(f"  {part:<10} kernel {kernel!s:<16} output {part_out!s:<17} {count:>10,}")
  print(f"  separable total {total:,}: {standard / total:.1f}x fewer")


def shade(image: np.ndarray, signed: bool = False) -> list[str]:
  """Rows of characters, two per pixel so the 8x8 digit looks square."""
  if signed:  # edge maps: '-' and '=' below zero, '+' and '#' above
    scale = max(np.abs(image).max(), 1e-9)
    marks = ["==", "--", "  ", "++", "##"]
    index = np.clip(np.round(image / scale * 2).astype(int) + 2, 0, 4)
  else:
    marks = ["  ", "..", "::", "--", "==", "++", "**", "##", "%%", "@@"]
    index = np.clip((image / max(image.max(), 1e-9) * 9).round().astype(int), 0, 9)
  return ["".join(marks[i] for i in row) for row in index]


def fixed_kernels() -> None:
  from sklearn.datasets import load_digits  # bundled with scikit-learn, no download

  digits = load_digits()
  index = int(np.flatnonzero(digits.target == 3)[0])
  digit = digits.images[index].astype(np.float32)  # 8x8, values 0..16
  blurred = np.asarray(layers.apply_kernel(digit[:, :, None], "box_blur"))[:, :, 0]
  edges = np.asarray(layers.apply_kernel(digit[:, :, None], "edge_detect"))[:, :, 0]
  heading(f"Deck 01 kernels on load_digits image #{index} (a '3', 8x8, 0-16, SAME)")
  titles = ("digit", "box blur (0.04)", "edge detector")
  print("  " + "   ".join(f"{t:<16}" for t in titles))
  for row in zip(shade(digit), shade(blurred), shade(edges, signed=True)):
    print("  " + "   ".join(row))
  print(f"  sums: digit {digit.sum():.0f}, blur {blurred.sum():.1f} (zero padding loses"
        f" the border), edges {edges.sum():.1f}")
  print("  middle row, digit:", digit[4].astype(int).tolist())
  print("  middle row, edges:", np.round(edges[4], 2).tolist())


def run() -> None:
  """Prints every worked example, in the course's order."""
  output_sizes()
  layer_exercises()
  worked_convolution()
  pooling_exercise()
  separable_counts()
  fixed_kernels()

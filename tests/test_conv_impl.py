"""The "gemm", "onednn" and "native" convolutions against XLA's: values and both
gradients over a grid of kernel sizes, strides, paddings, dilations and groups, and a
jitted two-conv network. The "onednn" and "native" cases skip when their library
(native/, cnn/conv_native.py) is not built; their unsupported configurations (groups >
1) check the fallback to "gemm"."""
import functools
import importlib.util
import itertools
import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnn import conv, conv_gemm, conv_native, layers
from tests.conftest import REPO

TOL = dict(rtol=1e-4, atol=1e-4)

# Small odd-sized inputs so that SAME padding is uneven under strides 2 and 4.
N, H, W = 2, 9, 11


def _value_and_grads(impl, x, kernel, cotangent, **kw):
  """y, dy/dx . ct and dy/dkernel . ct through `conv.conv2d(impl=impl)`."""
  def f(x_, k_):
    return conv.conv2d(x_, k_, impl=impl, **kw)
  y, vjp = jax.vjp(f, x, kernel)
  dx, dk = vjp(cotangent)
  return y, dx, dk


# As the environment was before any test loaded oneDNN.
_OMP_WAIT_POLICY = os.environ.get("OMP_WAIT_POLICY")

IMPLS = ["gemm", "onednn", "native", "native_full"]
# The library each FFI implementation runs on.
LIBRARY = {"onednn": "onednn", "native": "native", "native_full": "native"}


def _require(impl):
  library = LIBRARY.get(impl)
  if library and not conv_native.available(library):
    pytest.skip(f"{library} convolution not built: {conv_native.load(library)}")


@functools.partial(jax.jit,
                   static_argnames=("impl", "strides", "padding", "dilation", "groups"))
def _both(x, kernel, cotangent, impl="gemm", **kw):
  # One compilation per case for both implementations: faster than op-by-op dispatch.
  return (_value_and_grads("xla", x, kernel, cotangent, **kw),
          _value_and_grads(impl, x, kernel, cotangent, **kw))


def _check_against_xla(kernel_hw, strides, padding, dilation=1, groups=1,
                       in_ch=4, out_ch=6, seed=0, impl="gemm"):
  _require(impl)
  kx, kk, kc = jax.random.split(jax.random.key(seed), 3)
  x = jax.random.normal(kx, (N, H, W, in_ch), jnp.float32)
  kernel = jax.random.normal(kk, (*kernel_hw, in_ch // groups, out_ch), jnp.float32)
  kw = dict(strides=strides, padding=padding, dilation=dilation, groups=groups)
  out_shape = jax.eval_shape(lambda: conv.conv2d(x, kernel, impl="xla", **kw)).shape
  cotangent = jax.random.normal(kc, out_shape, jnp.float32)
  ref, got = _both(x, kernel, cotangent, impl=impl, **kw)
  for name, r, g in zip(("value", "input gradient", "kernel gradient"), ref, got):
    assert g.shape == r.shape, name
    np.testing.assert_allclose(np.asarray(g), np.asarray(r), err_msg=name, **TOL)


# Every kernel shape with every stride and padding (dilation 1, groups 1) ...
KERNELS = [(1, 1), (3, 3), (1, 3), (5, 5)]
STRIDES = [1, 2, 4]
PADDINGS = ["SAME", "VALID", 1, ((2, 0), (0, 1))]


# (in, out) channels: the native kernel's im2col + sgemm path, and its direct AVX2 path
# (output channels a multiple of 8, input channels of 4 / 8).
CHANNELS = [(4, 6), (8, 16)]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("channels", CHANNELS)
@pytest.mark.parametrize("kernel_hw,strides,padding",
                         list(itertools.product(KERNELS, STRIDES, PADDINGS)))
def test_matches_xla_kernel_stride_padding(kernel_hw, strides, padding, channels, impl):
  _check_against_xla(kernel_hw, strides, padding, in_ch=channels[0],
                     out_ch=channels[1], impl=impl)


# ... and the rarer axes one at a time, crossed with a few of the above.
@pytest.mark.parametrize("kernel_hw,strides,padding,dilation", [
    ((3, 3), 1, "SAME", 2),
    ((3, 3), 2, "SAME", 2),
    ((3, 3), 1, "VALID", 2),
    ((1, 3), 1, ((1, 0), (2, 2)), 2),
    ((3, 3), 1, "SAME", (2, 1)),
    ((7, 7), 1, "SAME", 1),
    ((7, 7), 2, 3, 1),
    ((7, 7), 4, "VALID", 1),
    ((3, 1), (2, 1), "SAME", 1),
])
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("channels", CHANNELS)
def test_matches_xla_dilation_and_large_kernels(kernel_hw, strides, padding, dilation,
                                                channels, impl):
  _check_against_xla(kernel_hw, strides, padding, dilation=dilation,
                     in_ch=channels[0], out_ch=channels[1], impl=impl)


@pytest.mark.parametrize("kernel_hw,strides,padding,groups,in_ch,out_ch", [
    ((3, 3), 1, "SAME", 2, 4, 6),
    ((3, 3), 2, "VALID", 2, 4, 6),
    ((1, 1), 1, "VALID", 2, 4, 6),
    ((3, 3), 1, "SAME", 4, 4, 4),      # depthwise
    ((3, 3), 2, 1, 4, 4, 8),           # depthwise, channel multiplier 2
    ((1, 1), 2, "SAME", 4, 4, 8),      # depthwise 1x1
    ((5, 5), 1, "SAME", 4, 4, 4),
])
@pytest.mark.parametrize("impl", IMPLS)
def test_matches_xla_groups(kernel_hw, strides, padding, groups, in_ch, out_ch, impl):
  _check_against_xla(kernel_hw, strides, padding, groups=groups, in_ch=in_ch,
                     out_ch=out_ch, impl=impl)


def _count_convolutions(fn, *args):
  return str(jax.make_jaxpr(fn)(*args)).count("conv_general_dilated[")


def test_one_by_one_is_matrix_products():
  """A 1x1 layer is a matrix product in all three passes: no convolution at all."""
  x = jnp.ones((2, 8, 8, 3))
  kernel = jnp.ones((1, 1, 3, 5))
  grad = jax.grad(lambda x_, k_: conv.conv2d(x_, k_, strides=2, impl="gemm").sum(),
                  argnums=(0, 1))
  assert _count_convolutions(grad, x, kernel) == 0
  assert _count_convolutions(grad, x, jnp.ones((3, 3, 3, 5))) == 3


def test_forward_mode_and_single_argument_gradients_match_xla():
  """The rule is a custom_jvp: jvp and forward-over-reverse (Hessian-vector products)
  work, and so do gradients with respect to only the input or only the kernel (the
  other tangent is a symbolic zero)."""
  kx, kk, kt, ku = jax.random.split(jax.random.key(3), 4)
  x = jax.random.normal(kx, (2, 7, 7, 3))
  kernel = jax.random.normal(kk, (3, 3, 3, 4))
  dx = jax.random.normal(kt, x.shape)
  dk = jax.random.normal(ku, kernel.shape)

  def results(impl, x, kernel, dx, dk):
    def f(x_, k_):
      return conv.conv2d(x_, k_, strides=2, padding=1, impl=impl)
    def curved(k_):
      return jnp.sum(jnp.tanh(f(x, k_)))
    return (jax.jvp(f, (x, kernel), (dx, dk)),
            jax.grad(lambda x_: f(x_, kernel).sum())(x),
            jax.grad(lambda k_: f(x, k_).sum())(kernel),
            jax.jvp(jax.grad(curved), (kernel,), (dk,))[1])   # Hessian-vector product

  both = jax.jit(lambda *a: (results("xla", *a), results("gemm", *a)))
  ref, got = both(x, kernel, dx, dk)
  for r, g in zip(jax.tree.leaves(ref), jax.tree.leaves(got)):
    np.testing.assert_allclose(np.asarray(g), np.asarray(r), **TOL)


def test_materialize_is_identity():
  x = jnp.array([[-0.0, 1.5], [jnp.nan, -2.0]])
  np.testing.assert_array_equal(np.asarray(conv_gemm.materialize(x)), np.asarray(x))
  np.testing.assert_array_equal(
      np.asarray(jax.jit(conv_gemm.materialize)(x[::-1])), np.asarray(x[::-1]))


class _TwoConvNet(nn.Module):
  impl: str

  @nn.compact
  def __call__(self, x, train: bool):
    x = layers.Conv(8, 3, 1, padding=1, impl=self.impl, name="conv1")(x)
    x = nn.relu(layers.BatchNorm(name="bn1")(x, train))
    x = layers.Conv(12, 3, 2, padding="SAME", impl=self.impl, name="conv2")(x)
    return x.mean(axis=(1, 2)) @ jnp.arange(12.0 * 3).reshape(12, 3) / 36


@pytest.mark.parametrize("impl", IMPLS)
def test_jitted_network_gradient_matches_xla(impl):
  _require(impl)
  x = jax.random.normal(jax.random.key(1), (4, 10, 10, 3))
  labels = jnp.array([0, 1, 2, 1])
  variables = _TwoConvNet("xla").init(jax.random.key(2), x, train=False)

  def grads(impl):
    model = _TwoConvNet(impl)

    def loss(params):
      logits, _ = model.apply({**variables, "params": params}, x, train=True,
                              mutable=["batch_stats"])
      return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits),
                                           labels[:, None], axis=1))
    return jax.jit(jax.value_and_grad(loss))(variables["params"])

  (loss_ref, g_ref), (loss_gemm, g_gemm) = grads("xla"), grads(impl)
  np.testing.assert_allclose(loss_gemm, loss_ref, **TOL)
  flat_ref = jax.tree_util.tree_leaves_with_path(g_ref)
  flat_gemm = jax.tree.leaves(g_gemm)
  assert len(flat_ref) == len(flat_gemm) == 6   # 2 kernels, 2 biases, BN scale, bias
  for (path, r), g in zip(flat_ref, flat_gemm):
    np.testing.assert_allclose(np.asarray(g), np.asarray(r), err_msg=str(path), **TOL)


# ----------------------------------------------------------------------------------
# "native": the FFI kernels, vmap, the fallback
# ----------------------------------------------------------------------------------

def _ffi_targets(fn, *args):
  """The FFI targets in fn's jaxpr, in order."""
  jaxpr = str(jax.make_jaxpr(fn)(*args))
  return [t for t in jaxpr.split("target_name=")[1:] for t in [t.split()[0].strip(",")]]


def _grad_fn(impl, **kw):
  return jax.grad(lambda x_, k_: conv.conv2d(x_, k_, impl=impl, **kw).sum(),
                  argnums=(0, 1))


def test_native_full_runs_all_three_passes_on_the_kernel():
  """Forward, input and weight gradient are the three FFI calls, no XLA convolution;
  grouped convolutions (unsupported) fall back to "gemm" and call no kernel."""
  _require("native_full")
  x, kernel = jnp.ones((2, 8, 8, 4)), jnp.ones((3, 3, 4, 6))
  grad = _grad_fn("native_full", strides=2)
  assert sorted(_ffi_targets(grad, x, kernel)) == sorted(conv_native.TARGETS.values())
  assert _count_convolutions(grad, x, kernel) == 0
  assert _count_convolutions(_grad_fn("native_full"), x, jnp.ones((1, 1, 4, 6))) == 0
  grouped = _grad_fn("native_full", groups=2)
  assert _ffi_targets(grouped, x, jnp.ones((3, 3, 2, 6))) == []
  assert _count_convolutions(grouped, x, jnp.ones((3, 3, 2, 6))) == 3


def test_onednn_runs_all_three_passes_on_onednn():
  """Forward, input and weight gradient are oneDNN's three FFI calls, 1x1 layers too;
  grouped convolutions and a crop (VALID with a stride that leaves the last row
  unread, negative implied padding) fall back to "gemm" and call no kernel."""
  _require("onednn")
  targets = sorted(conv_native.LIBRARIES["onednn"].targets[p] for p in conv_native.PARTS)
  x, kernel = jnp.ones((2, 8, 8, 4)), jnp.ones((3, 3, 4, 6))
  grad = _grad_fn("onednn", strides=2)
  assert sorted(_ffi_targets(grad, x, kernel)) == targets
  assert _count_convolutions(grad, x, kernel) == 0
  assert sorted(_ffi_targets(_grad_fn("onednn"), x, jnp.ones((1, 1, 4, 6)))) == targets
  assert _ffi_targets(_grad_fn("onednn", groups=2), x, jnp.ones((3, 3, 2, 6))) == []
  # 8 rows, 3x3 VALID, stride 2: output rows 0..3 read input rows 0..6; row 7 unread.
  cropped = _grad_fn("onednn", strides=2, padding="VALID")
  assert _ffi_targets(cropped, x, kernel) == []
  assert sorted(_ffi_targets(cropped, jnp.ones((2, 9, 9, 4)), kernel)) == targets


def test_relu_materialized_is_relu_in_value_gradient_and_vmap():
  """The fenced ReLU that ends a residual block (onednn): jax.nn.relu's values and
  gradient, jitted and vmapped, through the in-place FFI call in both passes."""
  _require("onednn")
  x = jnp.array([[-2.0, 0.0, 0.5], [3.0, -0.1, 1.0]])
  weights = jnp.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])

  def loss(relu, x_):
    return jnp.sum(relu(x_) * weights)

  fenced = functools.partial(loss, conv_native.relu_materialized)
  grad = jax.jit(jax.grad(fenced))
  np.testing.assert_array_equal(jax.jit(conv_native.relu_materialized)(x),
                                [[0.0, 0.0, 0.5], [3.0, 0.0, 1.0]])
  # Gradient: the weights where x > 0 (relu's derivative at 0 is 0).
  np.testing.assert_array_equal(grad(x), [[0.0, 0.0, 3.0], [4.0, 0.0, 6.0]])
  np.testing.assert_array_equal(jax.vmap(grad)(jnp.stack([x, -x])),
                                [[[0.0, 0.0, 3.0], [4.0, 0.0, 6.0]],
                                 [[1.0, 0.0, 0.0], [0.0, 5.0, 0.0]]])
  assert _ffi_targets(jax.grad(fenced), x) == ["cnn_materialize"] * 2


def test_relu_materialized_is_plain_relu_without_the_library(monkeypatch):
  monkeypatch.setattr(conv_native, "available", lambda library="native": False)
  x = jnp.array([-1.0, 2.0])
  assert _ffi_targets(jax.grad(lambda x_: conv_native.relu_materialized(x_).sum()),
                      x) == []
  np.testing.assert_array_equal(conv_native.relu_materialized(x), [0.0, 2.0])


def test_resnet_block_outputs_are_read_not_recomputed():
  """With onednn, no fusion of ResNet-20's compiled gradient reads more than 10
  arrays: XLA does not fuse the chain of earlier blocks' outputs (BN, residual add,
  ReLU, back to the stage's start) into each block's. Without the fenced ReLU the
  largest fusion reads 18 (batch 8; 22 at batch 128)."""
  _require("onednn")
  from cnn import models  # pylint: disable=import-outside-toplevel
  model = models.create("resnet20", num_classes=10, conv_impl="onednn")
  x = jnp.ones((8, 32, 32, 3))
  variables = model.init(jax.random.key(0), x, train=False)

  def loss(params):
    logits, _ = model.apply({**variables, "params": params}, x, train=True,
                            mutable=["batch_stats"])
    return logits.sum()

  hlo = jax.jit(jax.grad(loss)).lower(variables["params"]).compile().as_text()
  entry = hlo[hlo.index("\nENTRY"):]
  operands = [line.split(" fusion(")[1].split("), kind")[0].count("%")
              for line in entry.splitlines() if " fusion(" in line]
  assert operands and max(operands) <= 10, max(operands)


def test_fenced_relu_keeps_the_resnet_summary():
  """The model summary of a ResNet is the same with the fenced ReLU (onednn) as with
  jax.nn.relu (gemm): every block's output ReLU is still a row."""
  _require("onednn")
  from cnn import models, summary  # pylint: disable=import-outside-toplevel
  rows = {impl: [(r.name, r.output_shape) for r in summary.summarize(
      models.create("resnet20", num_classes=10, conv_impl=impl), (32, 32, 3))]
          for impl in ("gemm", "onednn")}
  assert rows["onednn"] == rows["gemm"]
  assert ("stage3_block2/relu_1", (8, 8, 64)) in rows["onednn"]


def test_onednn_load_leaves_the_environment_as_it_was():
  """oneDNN's OpenMP waits passively, set only while its library loads: a child process
  (the PyTorch side of a benchmark, a launched run) inherits the user's environment."""
  _require("onednn")
  assert os.environ.get("OMP_WAIT_POLICY") == _OMP_WAIT_POLICY


def test_native_runs_the_weight_gradient_on_the_kernel():
  """"native": XLA's forward and input gradient, the kernel's weight gradient; 1x1
  layers stay "gemm"'s matrix products (no convolution, no kernel)."""
  _require("native")
  x, kernel = jnp.ones((2, 8, 8, 4)), jnp.ones((3, 3, 4, 6))
  grad = _grad_fn("native", strides=2)
  assert _ffi_targets(grad, x, kernel) == [conv_native.TARGETS["weight_grad"]]
  assert _count_convolutions(grad, x, kernel) == 2
  pointwise = jnp.ones((1, 1, 4, 6))
  assert _ffi_targets(_grad_fn("native"), x, pointwise) == []
  assert _count_convolutions(_grad_fn("native"), x, pointwise) == 0


@pytest.mark.parametrize("impl", ["onednn", "native", "native_full"])
@pytest.mark.parametrize("batched", ["both", "input", "kernel"])
def test_native_under_vmap_matches_xla(batched, impl):
  """vmap over seeds (--vmap_seeds) batches kernels and inputs, or one of them."""
  _require(impl)
  kx, kk, kc = jax.random.split(jax.random.key(5), 3)
  lead = {"both": (3, 3), "input": (3, None), "kernel": (None, 3)}[batched]
  x = jax.random.normal(kx, ((lead[0],) if lead[0] else ()) + (2, 9, 9, 3))
  kernel = jax.random.normal(kk, ((lead[1],) if lead[1] else ()) + (3, 3, 3, 5))
  ct = jax.random.normal(kc, (3, 2, 5, 5, 5))

  def run(impl):
    def loss(x_, k_, ct_):
      y = conv.conv2d(x_, k_, strides=2, padding="SAME", impl=impl)
      return jnp.sum(y * ct_), y
    grads = jax.grad(loss, argnums=(0, 1), has_aux=True)
    in_axes = (0 if lead[0] else None, 0 if lead[1] else None, 0)
    return jax.jit(jax.vmap(grads, in_axes=in_axes))(x, kernel, ct)

  for r, g in zip(jax.tree.leaves(run("xla")), jax.tree.leaves(run(impl))):
    assert g.shape == r.shape
    np.testing.assert_allclose(np.asarray(g), np.asarray(r), **TOL)


def test_native_falls_back_to_gemm_for_other_dtypes():
  """bfloat16 is not a kernel dtype: "gemm" computes it, with the same values."""
  x = jnp.ones((1, 6, 6, 2), jnp.bfloat16)
  kernel = jnp.ones((3, 3, 2, 4), jnp.bfloat16)
  assert _ffi_targets(lambda a, b: conv.conv2d(a, b, impl="native_full"), x,
                      kernel) == []
  np.testing.assert_array_equal(
      np.asarray(conv.conv2d(x, kernel, impl="native_full"), np.float32),
      np.asarray(conv.conv2d(x, kernel, impl="gemm"), np.float32))


@pytest.mark.parametrize("impl,env", [
    ("native", {"CNN_NATIVE_LIB": "/nonexistent/libcnn_native.so"}),
    ("onednn", {"CNN_ONEDNN_LIB": "/nonexistent/libdnnl.so.3"}),   # oneDNN itself
])
def test_missing_library_warns_once_and_uses_gemm(monkeypatch, impl, env):
  """A library that is not there: one warning line, then "gemm" (for "auto" too),
  never an error."""
  monkeypatch.delenv("CNN_NATIVE", raising=False)
  for name, value in env.items():
    monkeypatch.setenv(name, value)
  monkeypatch.setattr(conv_native, "_load_blas", lambda: None)
  conv_native.load.cache_clear()
  try:
    with pytest.warns(RuntimeWarning, match=f"'{impl}' is unavailable") as record:
      x, kernel = jnp.ones((1, 5, 5, 2)), jnp.ones((3, 3, 2, 3))
      y = conv.conv2d(x, kernel, impl=impl)
      conv.conv2d(x, kernel, impl=impl)
      if impl == "onednn":
        assert conv.resolve_impl("auto") == "gemm"
    assert len(record) == 1 and "\n" not in str(record[0].message)
    np.testing.assert_array_equal(np.asarray(y),
                                  np.asarray(conv.conv2d(x, kernel, impl="gemm")))
  finally:
    monkeypatch.undo()
    conv_native.load.cache_clear()


def test_auto_on_cpu_is_onednn_where_installed_and_one_device_else_gemm():
  """This process has 8 simulated CPU devices: "gemm"; a process with one (what a
  run has) takes "onednn" where it is installed."""
  assert jax.default_backend() == "cpu" and jax.local_device_count() == 8
  assert conv.resolve_impl("auto") == "gemm"
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
  one_device = subprocess.run(
      [sys.executable, "-c", "from cnn import conv; print(conv.resolve_impl('auto'))"],
      cwd=REPO, env=env, check=True, capture_output=True, text=True,
      timeout=120).stdout.split()[-1]
  assert one_device == ("onednn" if conv_native.available("onednn") else "gemm")


def test_explicit_padding_matches_xla_same_rule():
  """'SAME' pads the total (out - 1) * S + F - N with the odd pixel after (TF's
  rule): N=9, F=3, S=2 -> out 5, total (5-1)*2 + 3 - 9 = 2 -> (1, 1); N=10 -> out 5,
  total 1 -> (0, 1); dilation 2 makes F = 5: N=9, S=1 -> total 4 -> (2, 2)."""
  assert conv_gemm.explicit_padding((9, 10), (3, 3), (2, 2), "SAME", (1, 1)) == (
      (1, 1), (0, 1))
  assert conv_gemm.explicit_padding((9, 9), (3, 3), (1, 1), "SAME", (2, 2)) == (
      (2, 2), (2, 2))
  assert conv_gemm.explicit_padding((9, 9), (3, 3), (1, 1), "VALID", (1, 1)) == (
      (0, 0), (0, 0))


# ----------------------------------------------------------------------------------
# scripts/benchmark.py
# ----------------------------------------------------------------------------------

def test_benchmark_alternates_xla_and_gemm(capsys):
  from scripts import benchmark
  benchmark.main(["--model", "lenet5", "--batch", "4", "--steps", "1", "--windows", "2",
                  "--warmup", "1", "--conv_impl", "all"])
  report = json.loads(capsys.readouterr().out)
  assert [r["impl"] for r in report["results"]] == ["xla", "gemm"]
  for result in report["results"]:
    # LeNet-5 on 32x32x1: conv1 6*(25+1)=156, conv2 16*(150+1)=2416,
    # conv3 120*(400+1)=48120, fc4 84*(120+1)=10164, fc5 10*(84+1)=850 -> 61,706.
    assert result["params"] == 61706
    assert len(result["windows_img_per_s"]) == 2
    assert result["img_per_s"] > 0 and result["compile_s"] > 0
  assert len(report["ratio_gemm_over_xla"]["per_pair"]) == 2
  assert report["backend"] == "cpu" and report["peak_rss_mib"] > 0


def test_benchmark_vs_torch_without_torch_exits_2(monkeypatch, capsys):
  from scripts import benchmark
  real_find_spec = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, "find_spec",
                      lambda name, *a: None if name == "torch" else real_find_spec(name, *a))
  with pytest.raises(SystemExit) as exit_info:
    benchmark.main(["--model", "resnet20", "--vs", "torch"])
  assert exit_info.value.code == 2
  message = capsys.readouterr().err.strip()
  assert "needs PyTorch" in message and message.count("\n") == 0

// Convolution through oneDNN (the library PyTorch's CPU convolutions run on), called
// from XLA through the FFI: forward, input gradient and weight gradient of an NHWC x
// HWIO float32 convolution with groups 1 (cnn/conv_native.py, conv_impl "onednn"),
// and an in-place identity that XLA cannot fuse through (`CnnMaterialize`, for
// cnn/conv_native.py's relu_materialized).
//
// Why oneDNN and not our own kernels (conv.cc): on this machine's AVX-512 cores its JIT
// kernels run the ResNet layers' three passes at 130-230 GFLOP/s against 50-90 for
// ours and 66-94 for XLA's weight gradient (README, "Native convolution").
//
// The library is not linked: the `onednn-cpu-gomp` wheel's libdnnl.so.3 (oneDNN 3.2,
// GNU OpenMP) is loaded globally by cnn/conv_native.py before this file's library, and
// the dnnl_* symbols resolve against it. The headers are oneDNN 3.6's (include/, the
// C API is ABI-stable within major version 3); only calls that exist in 3.2 are used.
//
// Each shape's primitives are made once (a few ms) and kept; per call only memory
// objects wrapping XLA's buffers are made. Weights are reordered from HWIO into the
// layout the primitive chose (`any`), a small copy per call. The scratchpad is the
// caller's (scratchpad_mode::user, one buffer per thread), so that XLA may run two
// convolutions on two threads at once.
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <tuple>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;
using tag = memory::format_tag;

namespace {

// The geometry of one convolution; also the key of its cached primitives.
struct Shape {
  int64_t n, h, w, c, kh, kw, k, oh, ow, sh, sw, pt, pl, pb, pr, dh, dw;
  auto Tie() const {
    return std::tie(n, h, w, c, kh, kw, k, oh, ow, sh, sw, pt, pl, pb, pr, dh, dw);
  }
  bool operator<(const Shape& o) const { return Tie() < o.Tie(); }
};

// One pass of one shape: the primitive, and how to bring the weights to and from it.
struct Pass {
  dnnl::primitive conv;
  memory::desc weights_md;         // the layout the primitive reads or writes
  memory::desc user_weights_md;    // HWIO
  bool reorder_weights = false;
  dnnl::reorder reorder;           // HWIO -> weights_md (forward, input gradient) or back
  size_t scratch_bytes = 0;
};

enum Kind { kForward = 0, kInputGrad = 1, kWeightGrad = 2 };

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

// 64-byte aligned growable scratch memory, one per thread and use.
struct Scratch {
  void* data = nullptr;
  size_t bytes = 0;
  void* Get(size_t need) {
    if (need > bytes) {
      std::free(data);
      bytes = (need + 63) / 64 * 64;
      data = std::aligned_alloc(64, bytes);
    }
    return data;
  }
  ~Scratch() { std::free(data); }
};

const Pass& Build(Kind kind, const Shape& s) {
  static std::mutex mutex;
  static std::map<std::pair<int, Shape>, std::unique_ptr<Pass>> cache;
  std::lock_guard<std::mutex> lock(mutex);
  auto& slot = cache[{kind, s}];
  if (slot) return *slot;

  auto& eng = Engine();
  const memory::dims src{s.n, s.c, s.h, s.w}, wei{s.k, s.c, s.kh, s.kw},
      dst{s.n, s.k, s.oh, s.ow}, strides{s.sh, s.sw}, dilation{s.dh - 1, s.dw - 1},
      pad_l{s.pt, s.pl}, pad_r{s.pb, s.pr};
  const auto f32 = memory::data_type::f32;
  const memory::desc src_md(src, f32, tag::nhwc), dst_md(dst, f32, tag::nhwc),
      any_md(wei, f32, tag::any), hwio_md(wei, f32, tag::hwio);
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  const auto algo = dnnl::algorithm::convolution_direct;
  dnnl::convolution_forward::primitive_desc fwd(
      eng, dnnl::prop_kind::forward_training, algo, src_md, any_md, dst_md, strides,
      dilation, pad_l, pad_r, attr);

  auto pass = std::make_unique<Pass>();
  pass->user_weights_md = hwio_md;
  if (kind == kForward) {
    pass->conv = dnnl::convolution_forward(fwd);
    pass->weights_md = fwd.weights_desc();
    pass->scratch_bytes = fwd.scratchpad_desc().get_size();
  } else if (kind == kInputGrad) {
    dnnl::convolution_backward_data::primitive_desc bwd(
        eng, algo, src_md, any_md, dst_md, strides, dilation, pad_l, pad_r, fwd, attr);
    pass->conv = dnnl::convolution_backward_data(bwd);
    pass->weights_md = bwd.weights_desc();
    pass->scratch_bytes = bwd.scratchpad_desc().get_size();
  } else {
    dnnl::convolution_backward_weights::primitive_desc bwd(
        eng, algo, src_md, any_md, dst_md, strides, dilation, pad_l, pad_r, fwd, attr);
    pass->conv = dnnl::convolution_backward_weights(bwd);
    pass->weights_md = bwd.diff_weights_desc();
    pass->scratch_bytes = bwd.scratchpad_desc().get_size();
  }
  pass->reorder_weights = pass->weights_md != hwio_md;
  if (pass->reorder_weights) {
    pass->reorder = kind == kWeightGrad
                        ? dnnl::reorder(dnnl::reorder::primitive_desc(
                              eng, pass->weights_md, eng, hwio_md))
                        : dnnl::reorder(dnnl::reorder::primitive_desc(
                              eng, hwio_md, eng, pass->weights_md));
  }
  slot = std::move(pass);
  return *slot;
}

// Runs `kind` on XLA's buffers: x NHWC (the input or its gradient), w HWIO (the kernel
// or its gradient), y NHWC (the output or its cotangent).
ffi::Error Run(Kind kind, const Shape& s, float* x, float* w, float* y) {
  // No lock around the calls: one deadlocked XLA's in-process collectives of several
  // devices (tests/test_reliability.py with 8 simulated devices, 2 runs in 8).
  try {
    const Pass& pass = Build(kind, s);
    auto& eng = Engine();
    thread_local dnnl::stream stream(eng);
    thread_local Scratch scratch, weights;
    const auto f32 = memory::data_type::f32;
    memory x_mem({{s.n, s.c, s.h, s.w}, f32, tag::nhwc}, eng, x);
    memory y_mem({{s.n, s.k, s.oh, s.ow}, f32, tag::nhwc}, eng, y);
    memory user_w(pass.user_weights_md, eng, w);
    memory w_mem = user_w;
    if (pass.reorder_weights)
      w_mem = memory(pass.weights_md, eng, weights.Get(pass.weights_md.get_size()));
    memory scratch_mem({{static_cast<int64_t>(pass.scratch_bytes)}, memory::data_type::u8,
                        tag::x},
                       eng, scratch.Get(pass.scratch_bytes + 64));
    if (kind != kWeightGrad && pass.reorder_weights)
      pass.reorder.execute(stream, user_w, w_mem);
    if (kind == kForward) {
      pass.conv.execute(stream, {{DNNL_ARG_SRC, x_mem}, {DNNL_ARG_WEIGHTS, w_mem},
                                 {DNNL_ARG_DST, y_mem}, {DNNL_ARG_SCRATCHPAD, scratch_mem}});
    } else if (kind == kInputGrad) {
      pass.conv.execute(stream, {{DNNL_ARG_DIFF_DST, y_mem}, {DNNL_ARG_WEIGHTS, w_mem},
                                 {DNNL_ARG_DIFF_SRC, x_mem},
                                 {DNNL_ARG_SCRATCHPAD, scratch_mem}});
    } else {
      pass.conv.execute(stream, {{DNNL_ARG_SRC, x_mem}, {DNNL_ARG_DIFF_DST, y_mem},
                                 {DNNL_ARG_DIFF_WEIGHTS, w_mem},
                                 {DNNL_ARG_SCRATCHPAD, scratch_mem}});
      if (pass.reorder_weights) pass.reorder.execute(stream, w_mem, user_w);
    }
    stream.wait();
  } catch (const dnnl::error& e) {
    return ffi::Error::Internal(std::string("cnn onednn conv: ") + e.what());
  }
  return ffi::Error::Success();
}

// The geometry from NHWC input dims, HWIO kernel dims and the output's height and
// width; the bottom/right padding is what that output implies.
ffi::Error MakeShape(ffi::Span<const int64_t> x, ffi::Span<const int64_t> wt,
                     ffi::Span<const int64_t> y, int64_t sh, int64_t sw, int64_t pt,
                     int64_t pl, int64_t dh, int64_t dw, Shape* s) {
  if (x.size() != 4 || wt.size() != 4 || y.size() != 4)
    return ffi::Error::InvalidArgument("cnn onednn conv: expected NHWC input, HWIO kernel");
  if (x[3] != wt[2] || y[3] != wt[3] || x[0] != y[0])
    return ffi::Error::InvalidArgument("cnn onednn conv: shapes do not match (groups 1 only)");
  if (sh < 1 || sw < 1 || dh < 1 || dw < 1)
    return ffi::Error::InvalidArgument("cnn onednn conv: strides and dilations must be >= 1");
  *s = Shape{x[0], x[1], x[2], x[3], wt[0], wt[1], wt[3], y[1], y[2], sh, sw, pt, pl,
             (y[1] - 1) * sh + (wt[0] - 1) * dh + 1 - x[1] - pt,
             (y[2] - 1) * sw + (wt[1] - 1) * dw + 1 - x[2] - pl, dh, dw};
  if (s->pt < 0 || s->pl < 0 || s->pb < 0 || s->pr < 0)
    return ffi::Error::InvalidArgument("cnn onednn conv: negative padding");
  return ffi::Error::Success();
}

ffi::Error Forward(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                   ffi::ResultBuffer<ffi::F32> y, int64_t sh, int64_t sw, int64_t pt,
                   int64_t pl, int64_t dh, int64_t dw) {
  Shape s;
  if (auto e = MakeShape(x.dimensions(), w.dimensions(), y->dimensions(), sh, sw, pt, pl,
                         dh, dw, &s); e.failure())
    return e;
  return Run(kForward, s, const_cast<float*>(x.typed_data()),
             const_cast<float*>(w.typed_data()), y->typed_data());
}

ffi::Error InputGrad(ffi::Buffer<ffi::F32> dy, ffi::Buffer<ffi::F32> w,
                     ffi::ResultBuffer<ffi::F32> dx, int64_t sh, int64_t sw, int64_t pt,
                     int64_t pl, int64_t dh, int64_t dw) {
  Shape s;
  if (auto e = MakeShape(dx->dimensions(), w.dimensions(), dy.dimensions(), sh, sw, pt,
                         pl, dh, dw, &s); e.failure())
    return e;
  return Run(kInputGrad, s, dx->typed_data(), const_cast<float*>(w.typed_data()),
             const_cast<float*>(dy.typed_data()));
}

ffi::Error WeightGrad(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy,
                      ffi::ResultBuffer<ffi::F32> dw_out, int64_t sh, int64_t sw,
                      int64_t pt, int64_t pl, int64_t dh, int64_t dw) {
  Shape s;
  if (auto e = MakeShape(x.dimensions(), dw_out->dimensions(), dy.dimensions(), sh, sw,
                         pt, pl, dh, dw, &s); e.failure())
    return e;
  return Run(kWeightGrad, s, const_cast<float*>(x.typed_data()), dw_out->typed_data(),
             const_cast<float*>(dy.typed_data()));
}

}  // namespace

#define CNN_CONV_ATTRS                                                          \
  .Attr<int64_t>("sh").Attr<int64_t>("sw").Attr<int64_t>("pt").Attr<int64_t>("pl") \
      .Attr<int64_t>("dh").Attr<int64_t>("dw")
#define CNN_CONV_BIND                                                           \
  ffi::Ffi::Bind().Arg<ffi::Buffer<ffi::F32>>().Arg<ffi::Buffer<ffi::F32>>()   \
      .Ret<ffi::Buffer<ffi::F32>>() CNN_CONV_ATTRS

XLA_FFI_DEFINE_HANDLER_SYMBOL(CnnDnnlConvForward, Forward, CNN_CONV_BIND);
XLA_FFI_DEFINE_HANDLER_SYMBOL(CnnDnnlConvInputGrad, InputGrad, CNN_CONV_BIND);
XLA_FFI_DEFINE_HANDLER_SYMBOL(CnnDnnlConvWeightGrad, WeightGrad, CNN_CONV_BIND);

// Bumped when the handlers' interface changes; cnn/conv_native.py checks it.
extern "C" int CnnDnnlConvVersion() { return 2; }

// The identity, computed in place (the caller aliases the output to the input): an
// op XLA cannot look into, so it stops fusing across it (cnn/conv_native.py
// `materialize`). Copies only if XLA ever gives it two buffers.
namespace {
ffi::Error Materialize(ffi::AnyBuffer x, ffi::Result<ffi::AnyBuffer> y) {
  if (y->untyped_data() != x.untyped_data())
    std::memcpy(y->untyped_data(), x.untyped_data(), x.size_bytes());
  return ffi::Error::Success();
}
}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(CnnMaterialize, Materialize,
                              ffi::Ffi::Bind().Arg<ffi::AnyBuffer>().Ret<ffi::AnyBuffer>());

// Native CPU convolution for cnn.conv ("native"): forward, input gradient and weight
// gradient of an NHWC x HWIO float32 convolution (groups 1; any strides, explicit
// paddings and dilations), as XLA FFI handlers that cnn/conv_native.py registers with
// jax.ffi.
//
// Two ways to compute a pass, chosen per call by the product's output channels
// (kDirectMaxColumns): direct AVX2 kernels (an implicit im2col over a zero-padded
// image, below) for <= 16 channels, where they beat OpenBLAS, and otherwise im2col
// (or col2im) on a block of images followed by one OpenBLAS sgemm, block after block. The blocks are small enough that the im2col matrix a thread has
// just written is still in its cache when sgemm reads it: one im2col of the whole
// batch is 75 MB for a 32x32x16 layer at batch 128 and would cost as much memory
// traffic as the product itself. Blocks are split across our own threads (one per
// usable core), each calling a single-threaded sgemm, so the threads never wait on
// each other inside a product.
//
// sgemm comes from the scipy-openblas32 wheel (symbols prefixed scipy_). It is not
// linked here: cnn/conv_native.py loads that library with RTLD_GLOBAL before this one,
// so the build needs no BLAS and the installed library has no path baked in.

#include <immintrin.h>
#include <sched.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

extern "C" {
// From scipy_openblas32's cblas.h (CblasRowMajor = 101, CblasNoTrans = 111,
// CblasTrans = 112); declared here so that building needs no BLAS headers.
void scipy_cblas_sgemm(int order, int trans_a, int trans_b, int m, int n, int k,
                       float alpha, const float* a, int lda, const float* b, int ldb,
                       float beta, float* c, int ldc);
void scipy_openblas_set_num_threads(int num_threads);
}

namespace {

constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112;
// Rows (output pixels) per im2col block: ~0.5 MB of im2col matrix for a 3x3x16 layer,
// so the block stays in L2/L3 between im2col and sgemm.
constexpr int64_t kTargetRows = 512;

// The layer's shapes and the convolution's parameters.
struct Geometry {
  int64_t n, h, w, c;      // input NHWC
  int64_t kh, kw, k;       // kernel HWIO (I == c)
  int64_t oh, ow;          // output spatial size
  int64_t sh, sw, pt, pl, dh, dw;
  int64_t Pixels() const { return oh * ow; }           // output pixels per image
  int64_t Reduction() const { return kh * kw * c; }     // im2col columns
  // A 1x1, stride-1, unpadded layer reads its input as the im2col matrix itself.
  bool Pointwise() const {
    return kh == 1 && kw == 1 && sh == 1 && sw == 1 && pt == 0 && pl == 0 &&
           oh == h && ow == w;
  }
};

// Usable cores (the affinity mask, as os.sched_getaffinity), CNN_NATIVE_THREADS wins.
int NumThreads() {
  static const int count = [] {
    if (const char* env = std::getenv("CNN_NATIVE_THREADS")) {
      int v = std::atoi(env);
      if (v > 0) return v;
    }
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof(set), &set) == 0) return std::max(1, CPU_COUNT(&set));
    return static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  }();
  return count;
}

// OpenBLAS's own threads would compete with ours: every sgemm here is single-threaded.
void SingleThreadedBlas() {
  static std::once_flag once;
  std::call_once(once, [] { scipy_openblas_set_num_threads(1); });
}

// Runs body(first_image, images, thread) over blocks of whole images, the blocks split
// into contiguous runs, one per thread. Threads are started per call: ~50 us against
// milliseconds of work per call on the layers this is for.
template <typename Body>
void ParallelOverBlocks(const Geometry& g, Body body) {
  const int64_t per_block = std::max<int64_t>(1, kTargetRows / std::max<int64_t>(1, g.Pixels()));
  const int64_t blocks = (g.n + per_block - 1) / per_block;
  const int threads = static_cast<int>(std::min<int64_t>(NumThreads(), blocks));
  auto run = [&](int t) {
    const int64_t begin = blocks * t / threads, end = blocks * (t + 1) / threads;
    for (int64_t b = begin; b < end; ++b) {
      const int64_t first = b * per_block;
      body(first, std::min(per_block, g.n - first), t);
    }
  };
  std::vector<std::thread> pool;
  for (int t = 1; t < threads; ++t) pool.emplace_back(run, t);
  run(0);
  for (auto& th : pool) th.join();
}

// The input columns [j_begin, j_end) of kernel row i that output column `ow_` reads
// inside the image (others are padding). With dilation 1 they are contiguous pixels.
inline void ValidTaps(const Geometry& g, int64_t ow_, int64_t* j_begin, int64_t* j_end) {
  const int64_t iw0 = ow_ * g.sw - g.pl;
  int64_t jb = 0, je = g.kw;
  while (jb < je && iw0 + jb * g.dw < 0) ++jb;
  while (je > jb && iw0 + (je - 1) * g.dw >= g.w) --je;
  *j_begin = jb;
  *j_end = je;
}

// col[(b, oh, ow), (i, j, c)] = x[b, oh*sh - pt + i*dh, ow*sw - pl + j*dw, c], or 0.
void Im2col(const Geometry& g, const float* x, int64_t images, float* col) {
  const int64_t R = g.Reduction(), C = g.c;
  for (int64_t b = 0; b < images; ++b) {
    const float* img = x + b * g.h * g.w * C;
    for (int64_t oh_ = 0; oh_ < g.oh; ++oh_) {
      for (int64_t ow_ = 0; ow_ < g.ow; ++ow_) {
        float* row = col + ((b * g.oh + oh_) * g.ow + ow_) * R;
        int64_t jb, je;
        ValidTaps(g, ow_, &jb, &je);
        const int64_t iw0 = ow_ * g.sw - g.pl;
        for (int64_t i = 0; i < g.kh; ++i) {
          float* dst = row + i * g.kw * C;
          const int64_t ih = oh_ * g.sh - g.pt + i * g.dh;
          if (ih < 0 || ih >= g.h || jb >= je) {
            std::memset(dst, 0, g.kw * C * sizeof(float));
            continue;
          }
          std::memset(dst, 0, jb * C * sizeof(float));
          const float* src = img + (ih * g.w + iw0) * C;
          if (g.dw == 1) {
            std::memcpy(dst + jb * C, src + jb * C, (je - jb) * C * sizeof(float));
          } else {
            for (int64_t j = jb; j < je; ++j)
              std::memcpy(dst + j * C, src + j * g.dw * C, C * sizeof(float));
          }
          std::memset(dst + je * C, 0, (g.kw - je) * C * sizeof(float));
        }
      }
    }
  }
}

// The transpose of Im2col: dx[b, ih, iw, c] += dcol[(b, oh, ow), (i, j, c)] over every
// (output pixel, tap) that reads (ih, iw). dx must be zeroed first.
void Col2im(const Geometry& g, const float* dcol, int64_t images, float* dx) {
  const int64_t R = g.Reduction(), C = g.c;
  for (int64_t b = 0; b < images; ++b) {
    float* img = dx + b * g.h * g.w * C;
    for (int64_t oh_ = 0; oh_ < g.oh; ++oh_) {
      for (int64_t ow_ = 0; ow_ < g.ow; ++ow_) {
        const float* row = dcol + ((b * g.oh + oh_) * g.ow + ow_) * R;
        int64_t jb, je;
        ValidTaps(g, ow_, &jb, &je);
        const int64_t iw0 = ow_ * g.sw - g.pl;
        for (int64_t i = 0; i < g.kh; ++i) {
          const int64_t ih = oh_ * g.sh - g.pt + i * g.dh;
          if (ih < 0 || ih >= g.h) continue;
          const float* src = row + i * g.kw * C;
          float* dst_row = img + ih * g.w * C;
          for (int64_t j = jb; j < je; ++j) {
            float* dst = dst_row + (iw0 + j * g.dw) * C;
            const float* s = src + j * C;
            for (int64_t c = 0; c < C; ++c) dst[c] += s[c];
          }
        }
      }
    }
  }
}

void Sgemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const float* a,
           int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  scipy_cblas_sgemm(kRowMajor, trans_a ? kTrans : kNoTrans, trans_b ? kTrans : kNoTrans,
                    static_cast<int>(m), static_cast<int>(n), static_cast<int>(k), 1.0f,
                    a, static_cast<int>(lda), b, static_cast<int>(ldb), beta, c,
                    static_cast<int>(ldc));
}


// ---------------------------------------------------------------------------------
// Direct AVX2 kernels: the product with an implicit im2col
// ---------------------------------------------------------------------------------
// For the small-channel layers of the CIFAR nets (16-64 channels) im2col + sgemm is
// memory-bound: each input value is copied kh*kw times and sgemm's packing copies it
// again. These kernels read a zero-padded copy of one image instead and keep a
// 6-pixel x 16-channel block of the output (12 AVX registers) in registers over all
// taps and input channels, the shape of OpenBLAS's own Haswell micro-kernel.

#if defined(__AVX2__) && defined(__FMA__)
constexpr bool kHaveAvx2 = true;

// One image of x, zero-padded so that every tap of every output pixel is in range:
// xp[a, b, c] = x[a - pt, b - pl, c] (0 outside), a < hp, b < wp.
void PadImage(const Geometry& g, const float* img, int64_t hp, int64_t wp, float* xp) {
  const int64_t C = g.c;
  for (int64_t a = 0; a < hp; ++a) {
    float* dst = xp + a * wp * C;
    const int64_t ih = a - g.pt;
    if (ih < 0 || ih >= g.h) {
      std::memset(dst, 0, wp * C * sizeof(float));
      continue;
    }
    const int64_t b0 = std::max<int64_t>(0, g.pl), b1 = std::min<int64_t>(wp, g.w + g.pl);
    std::memset(dst, 0, std::max<int64_t>(0, b0) * C * sizeof(float));
    if (b1 > b0)
      std::memcpy(dst + b0 * C, img + (ih * g.w + (b0 - g.pl)) * C,
                  (b1 - b0) * C * sizeof(float));
    if (wp > std::max(b0, b1))
      std::memset(dst + std::max(b0, b1) * C, 0, (wp - std::max(b0, b1)) * C * sizeof(float));
  }
}

int64_t PaddedHeight(const Geometry& g) { return (g.oh - 1) * g.sh + (g.kh - 1) * g.dh + 1; }
int64_t PaddedWidth(const Geometry& g) { return (g.ow - 1) * g.sw + (g.kw - 1) * g.dw + 1; }

// y[q, kb:kb+8*NV] for NQ consecutive output pixels of one row; `in` is the padded
// image at the first pixel's window corner, `w` the kernel (R x K) at column kb, and
// offs[r] where reduction index r = (i, j, c) sits relative to a window's corner. One
// flat loop over r, so that the accumulators stay in registers.
template <int NQ, int NV>
inline void ForwardTile(const Geometry& g, const float* in, const int32_t* offs,
                        const float* w, float* y) {
  __m256 acc[NQ][NV];
  for (int q = 0; q < NQ; ++q)
    for (int v = 0; v < NV; ++v) acc[q][v] = _mm256_setzero_ps();
  const int64_t R = g.Reduction(), K = g.k, step = g.sw * g.c;
  const float* px[NQ];
  for (int q = 0; q < NQ; ++q) px[q] = in + q * step;
  for (int64_t r = 0; r < R; ++r) {
    const int64_t o = offs[r];
    __m256 wv[NV];
    for (int v = 0; v < NV; ++v) wv[v] = _mm256_loadu_ps(w + r * K + 8 * v);
    for (int q = 0; q < NQ; ++q) {
      const __m256 b = _mm256_broadcast_ss(px[q] + o);
      for (int v = 0; v < NV; ++v) acc[q][v] = _mm256_fmadd_ps(b, wv[v], acc[q][v]);
    }
  }
  for (int q = 0; q < NQ; ++q)
    for (int v = 0; v < NV; ++v) _mm256_storeu_ps(y + q * K + 8 * v, acc[q][v]);
}

// offs[r] for r = (i, j, c): the offset of that tap and channel from a window corner
// in a padded image of width wp.
std::vector<int32_t> WindowOffsets(const Geometry& g, int64_t wp) {
  std::vector<int32_t> offs(g.Reduction());
  for (int64_t i = 0; i < g.kh; ++i)
    for (int64_t j = 0; j < g.kw; ++j)
      for (int64_t c = 0; c < g.c; ++c)
        offs[(i * g.kw + j) * g.c + c] = static_cast<int32_t>((i * g.dh * wp + j * g.dw) * g.c + c);
  return offs;
}

template <int NV>
void ForwardRow(const Geometry& g, const float* xp, int64_t wp, const int32_t* offs,
                int64_t oh_, const float* w, int64_t kb, float* y_img) {
  const float* row = xp + oh_ * g.sh * wp * g.c;
  float* yr = y_img + oh_ * g.ow * g.k + kb;
  int64_t ow_ = 0;
  for (; ow_ + 6 <= g.ow; ow_ += 6)
    ForwardTile<6, NV>(g, row + ow_ * g.sw * g.c, offs, w + kb, yr + ow_ * g.k);
  for (; ow_ < g.ow; ++ow_)
    ForwardTile<1, NV>(g, row + ow_ * g.sw * g.c, offs, w + kb, yr + ow_ * g.k);
}

// y = conv(x, w) for images [first, first + images), K a multiple of 8.
void DirectForward(const Geometry& g, const float* x, const float* w, int64_t first,
                   int64_t images, float* y) {
  const int64_t hp = PaddedHeight(g), wp = PaddedWidth(g);
  std::vector<float> xp(hp * wp * g.c);
  const std::vector<int32_t> offs = WindowOffsets(g, wp);
  for (int64_t b = first; b < first + images; ++b) {
    PadImage(g, x + b * g.h * g.w * g.c, hp, wp, xp.data());
    float* y_img = y + b * g.Pixels() * g.k;
    for (int64_t oh_ = 0; oh_ < g.oh; ++oh_) {
      int64_t kb = 0;
      for (; kb + 16 <= g.k; kb += 16)
        ForwardRow<2>(g, xp.data(), wp, offs.data(), oh_, w, kb, y_img);
      for (; kb < g.k; kb += 8)
        ForwardRow<1>(g, xp.data(), wp, offs.data(), oh_, w, kb, y_img);
    }
  }
}

// acc (R x K, row-major) += im2col(image)^T @ dy_img over one image, C a multiple of
// 4 and K of 8: 4 input channels of one tap x 8*NV output channels in registers, over
// every output pixel.
template <int NV>
void WeightGradBlock(const Geometry& g, const float* xp, int64_t wp, const float* dy_img,
                     int64_t i, int64_t j, int64_t c0, int64_t kb, float* acc) {
  const int64_t C = g.c, K = g.k;
  float* out = acc + ((i * g.kw + j) * C + c0) * K + kb;
  __m256 s[4][NV];
  for (int q = 0; q < 4; ++q)
    for (int v = 0; v < NV; ++v) s[q][v] = _mm256_loadu_ps(out + q * K + 8 * v);
  const int64_t tap = (i * g.dh * wp + j * g.dw) * C + c0;
  for (int64_t oh_ = 0; oh_ < g.oh; ++oh_) {
    const float* px = xp + oh_ * g.sh * wp * C + tap;
    const float* gr = dy_img + oh_ * g.ow * K + kb;
    for (int64_t ow_ = 0; ow_ < g.ow; ++ow_) {
      __m256 gv[NV];
      for (int v = 0; v < NV; ++v) gv[v] = _mm256_loadu_ps(gr + ow_ * K + 8 * v);
      const float* p = px + ow_ * g.sw * C;
#pragma GCC unroll 4
      for (int q = 0; q < 4; ++q) {
        const __m256 b = _mm256_broadcast_ss(p + q);
        for (int v = 0; v < NV; ++v) s[q][v] = _mm256_fmadd_ps(b, gv[v], s[q][v]);
      }
    }
  }
  for (int q = 0; q < 4; ++q)
    for (int v = 0; v < NV; ++v) _mm256_storeu_ps(out + q * K + 8 * v, s[q][v]);
}

void DirectWeightGrad(const Geometry& g, const float* x, const float* dy, int64_t first,
                      int64_t images, float* acc) {
  const int64_t hp = PaddedHeight(g), wp = PaddedWidth(g);
  std::vector<float> xp(hp * wp * g.c);
  for (int64_t b = first; b < first + images; ++b) {
    PadImage(g, x + b * g.h * g.w * g.c, hp, wp, xp.data());
    const float* dy_img = dy + b * g.Pixels() * g.k;
    for (int64_t i = 0; i < g.kh; ++i)
      for (int64_t j = 0; j < g.kw; ++j)
        for (int64_t c0 = 0; c0 < g.c; c0 += 4) {
          int64_t kb = 0;
          for (; kb + 16 <= g.k; kb += 16)
            WeightGradBlock<2>(g, xp.data(), wp, dy_img, i, j, c0, kb, acc);
          for (; kb < g.k; kb += 8)
            WeightGradBlock<1>(g, xp.data(), wp, dy_img, i, j, c0, kb, acc);
        }
  }
}
#else
constexpr bool kHaveAvx2 = false;
void DirectForward(const Geometry&, const float*, const float*, int64_t, int64_t, float*) {}
void DirectWeightGrad(const Geometry&, const float*, const float*, int64_t, int64_t,
                      float*) {}
#endif

// Which passes the direct kernels take (the others are im2col + sgemm).
// CNN_NATIVE_DIRECT=0 turns them off, for measuring one against the other.
bool DirectEnabled() {
  static const bool on = [] {
    const char* env = std::getenv("CNN_NATIVE_DIRECT");
    return kHaveAvx2 && !(env && env[0] == '0');
  }();
  return on;
}
// The direct kernels reach ~50 GFLOP/s per core here; OpenBLAS's sgemm 38 with 16
// output columns but 70-97 with 32-64 (single thread, CPU time, 2026-12-02), so the
// direct kernels take the products with at most kDirectMaxColumns output channels.
constexpr int64_t kDirectMaxColumns = 16;
bool DirectForwardApplies(const Geometry& g) {
  return DirectEnabled() && g.k % 8 == 0 && g.k <= kDirectMaxColumns;
}
bool DirectWeightGradApplies(const Geometry& g) {
  return DirectEnabled() && g.k % 8 == 0 && g.c % 4 == 0 && g.k <= kDirectMaxColumns;
}
// The input gradient of a stride-1 convolution is a stride-1 convolution of dy with
// the kernel flipped and its channels swapped, padded d*(k-1) - p before.
bool DirectInputGradApplies(const Geometry& g) {
  return DirectEnabled() && g.sh == 1 && g.sw == 1 && g.c % 8 == 0 &&
         g.c <= kDirectMaxColumns;
}
Geometry InputGradGeometry(const Geometry& g) {
  return Geometry{g.n, g.oh, g.ow, g.k, g.kh, g.kw, g.c, g.h, g.w, 1, 1,
                  g.dh * (g.kh - 1) - g.pt, g.dw * (g.kw - 1) - g.pl, g.dh, g.dw};
}
// w'[i, j, k, c] = w[kh-1-i, kw-1-j, c, k].
std::vector<float> FlippedKernel(const Geometry& g, const float* w) {
  std::vector<float> out(g.kh * g.kw * g.k * g.c);
  for (int64_t i = 0; i < g.kh; ++i)
    for (int64_t j = 0; j < g.kw; ++j)
      for (int64_t c = 0; c < g.c; ++c)
        for (int64_t k = 0; k < g.k; ++k)
          out[((i * g.kw + j) * g.k + k) * g.c + c] =
              w[(((g.kh - 1 - i) * g.kw + (g.kw - 1 - j)) * g.c + c) * g.k + k];
  return out;
}

// Reads the convolution's parameters; x_dims NHWC, w_dims HWIO, out_hw the output's.
ffi::Error MakeGeometry(ffi::Span<const int64_t> x_dims, ffi::Span<const int64_t> w_dims,
                        int64_t oh, int64_t ow, int64_t sh, int64_t sw, int64_t pt,
                        int64_t pl, int64_t dh, int64_t dw, Geometry* g) {
  if (x_dims.size() != 4 || w_dims.size() != 4)
    return ffi::Error::InvalidArgument("cnn native conv: expected NHWC input, HWIO kernel");
  if (x_dims[3] != w_dims[2])
    return ffi::Error::InvalidArgument("cnn native conv: input channels != kernel I (groups 1 only)");
  if (sh < 1 || sw < 1 || dh < 1 || dw < 1)
    return ffi::Error::InvalidArgument("cnn native conv: strides and dilations must be >= 1");
  *g = Geometry{x_dims[0], x_dims[1], x_dims[2], x_dims[3], w_dims[0], w_dims[1],
                w_dims[3], oh, ow, sh, sw, pt, pl, dh, dw};
  return ffi::Error::Success();
}

// y = conv(x, w).
ffi::Error ConvForward(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                       ffi::ResultBuffer<ffi::F32> y, int64_t sh, int64_t sw, int64_t pt,
                       int64_t pl, int64_t dh, int64_t dw) {
  auto y_dims = y->dimensions();
  Geometry g;
  if (auto e = MakeGeometry(x.dimensions(), w.dimensions(), y_dims[1], y_dims[2], sh, sw,
                            pt, pl, dh, dw, &g); e.failure())
    return e;
  SingleThreadedBlas();
  const float* xd = x.typed_data();
  const float* wd = w.typed_data();
  float* yd = y->typed_data();
  const int64_t P = g.Pixels(), R = g.Reduction();
  if (DirectForwardApplies(g)) {
    ParallelOverBlocks(g, [&](int64_t first, int64_t images, int) {
      DirectForward(g, xd, wd, first, images, yd);
    });
    return ffi::Error::Success();
  }
  const bool pointwise = g.Pointwise();
  ParallelOverBlocks(g, [&](int64_t first, int64_t images, int) {
    thread_local std::vector<float> col;
    const float* a = xd + first * g.h * g.w * g.c;
    if (!pointwise) {
      col.resize(images * P * R);
      Im2col(g, a, images, col.data());
      a = col.data();
    }
    Sgemm(false, false, images * P, g.k, R, a, R, wd, g.k, 0.0f, yd + first * P * g.k, g.k);
  });
  return ffi::Error::Success();
}

// dx = conv's input gradient for cotangent dy: col2im(dy @ w^T).
ffi::Error ConvInputGrad(ffi::Buffer<ffi::F32> dy, ffi::Buffer<ffi::F32> w,
                         ffi::ResultBuffer<ffi::F32> dx, int64_t sh, int64_t sw, int64_t pt,
                         int64_t pl, int64_t dh, int64_t dw) {
  auto dy_dims = dy.dimensions();
  Geometry g;
  if (auto e = MakeGeometry(dx->dimensions(), w.dimensions(), dy_dims[1], dy_dims[2], sh,
                            sw, pt, pl, dh, dw, &g); e.failure())
    return e;
  SingleThreadedBlas();
  const float* dyd = dy.typed_data();
  const float* wd = w.typed_data();
  float* dxd = dx->typed_data();
  if (DirectInputGradApplies(g)) {
    const Geometry gi = InputGradGeometry(g);
    const std::vector<float> flipped = FlippedKernel(g, wd);
    ParallelOverBlocks(gi, [&](int64_t first, int64_t images, int) {
      DirectForward(gi, dyd, flipped.data(), first, images, dxd);
    });
    return ffi::Error::Success();
  }
  const int64_t P = g.Pixels(), R = g.Reduction(), image = g.h * g.w * g.c;
  const bool pointwise = g.Pointwise();
  ParallelOverBlocks(g, [&](int64_t first, int64_t images, int) {
    thread_local std::vector<float> dcol;
    float* out = dxd + first * image;
    if (pointwise) {   // dx is dy @ w^T itself
      Sgemm(false, true, images * P, R, g.k, dyd + first * P * g.k, g.k, wd, g.k, 0.0f,
            out, R);
      return;
    }
    dcol.resize(images * P * R);
    Sgemm(false, true, images * P, R, g.k, dyd + first * P * g.k, g.k, wd, g.k, 0.0f,
          dcol.data(), R);
    std::memset(out, 0, images * image * sizeof(float));
    Col2im(g, dcol.data(), images, out);
  });
  return ffi::Error::Success();
}

// dw = conv's weight gradient for cotangent dy: im2col(x)^T @ dy, summed over images.
// Each thread sums its blocks into its own buffer; the buffers are added at the end.
ffi::Error ConvWeightGrad(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy,
                          ffi::ResultBuffer<ffi::F32> dw_out, int64_t sh, int64_t sw,
                          int64_t pt, int64_t pl, int64_t dh, int64_t dw) {
  auto dy_dims = dy.dimensions();
  Geometry g;
  if (auto e = MakeGeometry(x.dimensions(), dw_out->dimensions(), dy_dims[1], dy_dims[2],
                            sh, sw, pt, pl, dh, dw, &g); e.failure())
    return e;
  SingleThreadedBlas();
  const float* xd = x.typed_data();
  const float* dyd = dy.typed_data();
  float* out = dw_out->typed_data();
  const int64_t P = g.Pixels(), R = g.Reduction(), size = R * g.k;
  const bool pointwise = g.Pointwise();
  const bool direct = DirectWeightGradApplies(g);
  std::vector<std::vector<float>> partial(NumThreads());
  std::vector<char> touched(NumThreads(), 0);
  ParallelOverBlocks(g, [&](int64_t first, int64_t images, int t) {
    thread_local std::vector<float> col;
    std::vector<float>& acc = partial[t];
    if (acc.empty()) acc.assign(size, 0.0f);
    touched[t] = 1;
    if (direct) {
      DirectWeightGrad(g, xd, dyd, first, images, acc.data());
      return;
    }
    const float* a = xd + first * g.h * g.w * g.c;
    if (!pointwise) {
      col.resize(images * P * R);
      Im2col(g, a, images, col.data());
      a = col.data();
    }
    Sgemm(true, false, R, g.k, images * P, a, R, dyd + first * P * g.k, g.k, 1.0f,
          acc.data(), g.k);
  });
  std::fill(out, out + size, 0.0f);
  for (size_t t = 0; t < partial.size(); ++t) {
    if (!touched[t]) continue;
    for (int64_t i = 0; i < size; ++i) out[i] += partial[t][i];
  }
  return ffi::Error::Success();
}

}  // namespace

#define CNN_CONV_ATTRS                                                            \
  .Attr<int64_t>("sh").Attr<int64_t>("sw").Attr<int64_t>("pt").Attr<int64_t>("pl") \
      .Attr<int64_t>("dh").Attr<int64_t>("dw")

XLA_FFI_DEFINE_HANDLER_SYMBOL(CnnConvForward, ConvForward,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>() CNN_CONV_ATTRS);

XLA_FFI_DEFINE_HANDLER_SYMBOL(CnnConvInputGrad, ConvInputGrad,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>() CNN_CONV_ATTRS);

XLA_FFI_DEFINE_HANDLER_SYMBOL(CnnConvWeightGrad, ConvWeightGrad,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>() CNN_CONV_ATTRS);

// A version number for the Python side to check it loaded the library it expects.
extern "C" int CnnNativeConvVersion() { return 1; }

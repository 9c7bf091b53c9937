// Event-driven (sparse-input) 2-D convolution for spiking layers, channels-last float32.
//
// A conv layer of a spiking net sees mostly zeros (spike rates ~10%), so
// instead of a dense GEMM each non-zero input x[f, y, x, i] adds
// x * w[kh, kw, i, :] to the outputs it reaches: the way Loihi itself works
// and ~10x fewer multiply-adds. Used for the forward pass (exact: the inputs are
// integers or gated spikes and the weights lie on a 2^-5 grid, so every
// product and partial sum is an exact float32 whatever the order) and for the
// weight gradient (sum of x * g over the same pairs). The input gradient has
// no zeros to skip and stays with mkldnn.
//
// Layouts: x [F, H, W, C], w [K, K, C, O], out and g [F, Ho, Wo, O], all
// contiguous; out[f, oy, ox] = sum over kh, kw, i of
// x[f, oy * s + kh - pad, ox * s + kw - pad, i] * w[kh, kw, i] (torch's conv2d).
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#include <immintrin.h>
#endif

namespace {

struct Tap {
  int64_t k, o;  // kernel index, output index along one axis
};

// The (kernel, output) index pairs an input coordinate feeds, along one axis.
std::vector<std::vector<Tap>> taps_along(int64_t in, int64_t out, int64_t k, int64_t s, int64_t pad) {
  std::vector<std::vector<Tap>> taps(in);
  for (int64_t y = 0; y < in; ++y) {
    for (int64_t kk = 0; kk < k; ++kk) {
      const int64_t num = y + pad - kk;
      if (num < 0 || num % s != 0) continue;
      const int64_t o = num / s;
      if (o < out) taps[y].push_back({kk, o});
    }
  }
  return taps;
}

struct Geometry {
  int64_t frames, h, w, c, k, o, ho, wo;
  std::vector<std::vector<Tap>> ty, tx;
};

Geometry geometry(const at::Tensor& x, int64_t k, int64_t o, int64_t stride, int64_t pad,
                  int64_t ho, int64_t wo, const char* name) {
  TORCH_CHECK(x.dim() == 4 && x.is_contiguous() && x.scalar_type() == at::kFloat && x.is_cpu(),
              name, ": x must be a contiguous CPU float32 [F, H, W, C] tensor");
  TORCH_CHECK(k >= 1 && stride >= 1 && pad >= 0 && ho >= 0 && wo >= 0, name, ": bad geometry");
  Geometry g{x.size(0), x.size(1), x.size(2), x.size(3), k, o, ho, wo, {}, {}};
  g.ty = taps_along(g.h, ho, k, stride, pad);
  g.tx = taps_along(g.w, wo, k, stride, pad);
  return g;
}

// acc[0..n) += v * src[0..n); the loop vectorises under the caller's target.
#define LAVA_ALLNET_AXPY(acc, v, src, n)          \
  for (int64_t q = 0; q < (n); ++q) (acc)[q] += (v) * (src)[q];

template <typename Visit>
inline __attribute__((always_inline)) void for_each_event(const Geometry& g, const float* xf,
                                                          Visit&& visit) {
  for (int64_t y = 0; y < g.h; ++y) {
    const auto& ty = g.ty[y];
    if (ty.empty()) continue;
    for (int64_t xx = 0; xx < g.w; ++xx) {
      const auto& tx = g.tx[xx];
      if (tx.empty()) continue;
      const float* px = xf + (y * g.w + xx) * g.c;
      for (int64_t i = 0; i < g.c; ++i) {
        const float v = px[i];
        if (v == 0.0f) continue;
        for (const Tap& a : ty)
          for (const Tap& b : tx) visit(v, i, a, b);
      }
    }
  }
}

inline __attribute__((always_inline)) void fwd_frames(const Geometry& g, const float* x,
                                                      const float* w, float* out, int64_t f0,
                                                      int64_t f1) {
  const int64_t plane = g.ho * g.wo * g.o;
  for (int64_t f = f0; f < f1; ++f) {
    float* of = out + f * plane;
    std::fill(of, of + plane, 0.0f);
    for_each_event(g, x + f * g.h * g.w * g.c, [&](float v, int64_t i, const Tap& a, const Tap& b) {
      float* orow = of + (a.o * g.wo + b.o) * g.o;
      const float* wrow = w + ((a.k * g.k + b.k) * g.c + i) * g.o;
      LAVA_ALLNET_AXPY(orow, v, wrow, g.o)
    });
  }
}

inline __attribute__((always_inline)) void wgrad_frames(const Geometry& g, const float* x,
                                                        const float* gr, float* acc, int64_t f0,
                                                        int64_t f1) {
  const int64_t plane = g.ho * g.wo * g.o;
  for (int64_t f = f0; f < f1; ++f) {
    const float* gf = gr + f * plane;
    for_each_event(g, x + f * g.h * g.w * g.c, [&](float v, int64_t i, const Tap& a, const Tap& b) {
      float* arow = acc + ((a.k * g.k + b.k) * g.c + i) * g.o;
      const float* grow = gf + (a.o * g.wo + b.o) * g.o;
      LAVA_ALLNET_AXPY(arow, v, grow, g.o)
    });
  }
}

void fwd_plain(const Geometry& g, const float* x, const float* w, float* out, int64_t f0, int64_t f1) {
  fwd_frames(g, x, w, out, f0, f1);
}
void wgrad_plain(const Geometry& g, const float* x, const float* gr, float* acc, int64_t f0, int64_t f1) {
  wgrad_frames(g, x, gr, acc, f0, f1);
}
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define LAVA_ALLNET_SPARSE_AVX2 1
bool avx2() {
  static const bool value = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") != 0;
  }();
  return value;
}

// The non-zero channels of one input pixel, found 8 at a time with a compare
// and a bit mask (a branch per element mispredicts at ~10% density).
__attribute__((target("avx2"))) inline int64_t gather_events(const float* px, int64_t c,
                                                             int32_t* idx, float* val) {
  int64_t n = 0, i = 0;
  const __m256 zero = _mm256_setzero_ps();
  for (; i + 8 <= c; i += 8) {
    unsigned mask = static_cast<unsigned>(
        _mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(px + i), zero, _CMP_NEQ_UQ)));
    while (mask) {
      const int b = __builtin_ctz(mask);
      idx[n] = static_cast<int32_t>(i + b);
      val[n++] = px[i + b];
      mask &= mask - 1;
    }
  }
  for (; i < c; ++i)
    if (px[i] != 0.0f) { idx[n] = static_cast<int32_t>(i); val[n++] = px[i]; }
  return n;
}

// Calls visit(n, a, b) for every pixel of frame xf that feeds an output and
// has n > 0 events (gathered once into idx/val) and each of its taps (a, b).
template <typename Visit>
__attribute__((target("avx2"), always_inline)) inline void for_each_pixel_tap(
    const Geometry& g, const float* xf, int32_t* idx, float* val, Visit&& visit) {
  for (int64_t y = 0; y < g.h; ++y) {
    if (g.ty[y].empty()) continue;
    for (int64_t xx = 0; xx < g.w; ++xx) {
      if (g.tx[xx].empty()) continue;
      const int64_t n = gather_events(xf + (y * g.w + xx) * g.c, g.c, idx, val);
      if (n == 0) continue;
      for (const Tap& a : g.ty[y])
        for (const Tap& b : g.tx[xx]) visit(n, a, b);
    }
  }
}

// Output channels a multiple of 8 * NV. Per pixel and tap the output row
// (NV vectors at a time) stays in registers while every event of the pixel adds to it.
template <int NV>
__attribute__((target("avx2"))) void fwd_avx2(const Geometry& g, const float* x, const float* w,
                                              float* out, int64_t f0, int64_t f1) {
  std::vector<int32_t> idx(g.c);
  std::vector<float> val(g.c);
  const int64_t plane = g.ho * g.wo * g.o;
  for (int64_t f = f0; f < f1; ++f) {
    float* of = out + f * plane;
    std::fill(of, of + plane, 0.0f);
    for_each_pixel_tap(g, x + f * g.h * g.w * g.c, idx.data(), val.data(),
                       [&](int64_t n, const Tap& a, const Tap& b) __attribute__((target("avx2"))) {
      float* orow = of + (a.o * g.wo + b.o) * g.o;
      const float* wtap = w + (a.k * g.k + b.k) * g.c * g.o;
      for (int64_t o0 = 0; o0 < g.o; o0 += 8 * NV) {
        __m256 acc[NV];
        for (int j = 0; j < NV; ++j) acc[j] = _mm256_loadu_ps(orow + o0 + 8 * j);
        for (int64_t e = 0; e < n; ++e) {
          const __m256 v = _mm256_set1_ps(val[e]);
          const float* wr = wtap + idx[e] * g.o + o0;
          for (int j = 0; j < NV; ++j)
            acc[j] = _mm256_add_ps(acc[j], _mm256_mul_ps(v, _mm256_loadu_ps(wr + 8 * j)));
        }
        for (int j = 0; j < NV; ++j) _mm256_storeu_ps(orow + o0 + 8 * j, acc[j]);
      }
    });
  }
}

// Per pixel and tap the gradient row stays in registers; each event adds
// v * row to its own accumulator row.
template <int NV>
__attribute__((target("avx2"))) void wgrad_avx2(const Geometry& g, const float* x, const float* gr,
                                                float* acc, int64_t f0, int64_t f1) {
  std::vector<int32_t> idx(g.c);
  std::vector<float> val(g.c);
  const int64_t plane = g.ho * g.wo * g.o;
  for (int64_t f = f0; f < f1; ++f) {
    const float* gf = gr + f * plane;
    for_each_pixel_tap(g, x + f * g.h * g.w * g.c, idx.data(), val.data(),
                       [&](int64_t n, const Tap& a, const Tap& b) __attribute__((target("avx2"))) {
      const float* grow = gf + (a.o * g.wo + b.o) * g.o;
      float* atap = acc + (a.k * g.k + b.k) * g.c * g.o;
      for (int64_t o0 = 0; o0 < g.o; o0 += 8 * NV) {
        __m256 gv[NV];
        for (int j = 0; j < NV; ++j) gv[j] = _mm256_loadu_ps(grow + o0 + 8 * j);
        for (int64_t e = 0; e < n; ++e) {
          const __m256 v = _mm256_set1_ps(val[e]);
          float* ar = atap + idx[e] * g.o + o0;
          for (int j = 0; j < NV; ++j)
            _mm256_storeu_ps(ar + 8 * j, _mm256_add_ps(_mm256_loadu_ps(ar + 8 * j), _mm256_mul_ps(v, gv[j])));
        }
      }
    });
  }
}
#endif

at::Tensor sparse_conv_fwd(const at::Tensor& x, const at::Tensor& w, int64_t stride, int64_t pad,
                           int64_t ho, int64_t wo) {
  TORCH_CHECK(w.dim() == 4 && w.is_contiguous() && w.scalar_type() == at::kFloat && w.is_cpu() &&
                  w.size(0) == w.size(1) && w.size(2) == x.size(3),
              "sparse_conv_fwd: w must be a contiguous CPU float32 [K, K, C, O] tensor");
  const Geometry g = geometry(x, w.size(0), w.size(3), stride, pad, ho, wo, "sparse_conv_fwd");
  at::Tensor out = at::empty({g.frames, ho, wo, g.o}, x.options());
  const float* xp = x.const_data_ptr<float>();
  const float* wp = w.const_data_ptr<float>();
  float* op = out.mutable_data_ptr<float>();
  at::parallel_for(0, g.frames, 1, [&](int64_t f0, int64_t f1) {
#ifdef LAVA_ALLNET_SPARSE_AVX2
    if (avx2() && g.o % 64 == 0) return fwd_avx2<8>(g, xp, wp, op, f0, f1);
    if (avx2() && g.o % 32 == 0) return fwd_avx2<4>(g, xp, wp, op, f0, f1);
    if (avx2() && g.o % 8 == 0) return fwd_avx2<1>(g, xp, wp, op, f0, f1);
#endif
    fwd_plain(g, xp, wp, op, f0, f1);
  });
  return out;
}

// Weight gradient [K, K, C, O]: one accumulator per contiguous block of frames
// (as many blocks as threads), summed in block order.
at::Tensor sparse_conv_wgrad(const at::Tensor& x, const at::Tensor& grad, int64_t k, int64_t stride,
                             int64_t pad) {
  TORCH_CHECK(grad.dim() == 4 && grad.is_contiguous() && grad.scalar_type() == at::kFloat &&
                  grad.is_cpu() && grad.size(0) == x.size(0),
              "sparse_conv_wgrad: grad must be a contiguous CPU float32 [F, Ho, Wo, O] tensor");
  const Geometry g = geometry(x, k, grad.size(3), stride, pad, grad.size(1), grad.size(2),
                              "sparse_conv_wgrad");
  const int64_t size = k * k * g.c * g.o;
  const int64_t blocks = std::max<int64_t>(1, std::min<int64_t>(g.frames, at::get_num_threads()));
  at::Tensor acc = at::zeros({blocks, size}, x.options());
  const float* xp = x.const_data_ptr<float>();
  const float* gp = grad.const_data_ptr<float>();
  float* ap = acc.mutable_data_ptr<float>();
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t f0 = g.frames * b / blocks, f1 = g.frames * (b + 1) / blocks;
#ifdef LAVA_ALLNET_SPARSE_AVX2
      float* a = ap + b * size;
      if (avx2() && g.o % 64 == 0) { wgrad_avx2<8>(g, xp, gp, a, f0, f1); continue; }
      if (avx2() && g.o % 32 == 0) { wgrad_avx2<4>(g, xp, gp, a, f0, f1); continue; }
      if (avx2() && g.o % 8 == 0) { wgrad_avx2<1>(g, xp, gp, a, f0, f1); continue; }
#endif
      wgrad_plain(g, xp, gp, ap + b * size, f0, f1);
    }
  });
  for (int64_t b = 1; b < blocks; ++b) {
    const float* src = ap + b * size;
    for (int64_t q = 0; q < size; ++q) ap[q] += src[q];
  }
  return acc[0].view({k, k, g.c, g.o});
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(lava_allnet_cuba, m) {
  m.def("sparse_conv_fwd", &sparse_conv_fwd);
  m.def("sparse_conv_wgrad", &sparse_conv_wgrad);
}

// Fast CPU kernels for lava-dl SLAYER CUBA neurons (see training/fast_cuba.py):
// the time loops of the fixed-point leaky integrator
// (slayer/neuron/dynamics/leaky_integrator.py: _li_dynamics_fwd/_bwd), the
// spike function (slayer/spike/spike.py) and the scalar time shift
// (slayer/utils/time/shift.py).
//
// Every operation mirrors, element by element, the torch op the stock Python
// code performs, so results are bit-identical:
//   * int64 arithmetic wraps like torch's (done through uint64);
//   * right_shift_to_zero(x, 12) == sign(x) * (|x| >> 12), sign(0) = -1;
//   * (w_scale * x_float32).to(int64)  -> float32 product, truncation;
//   * int64 state / w_scale            -> float32(state) / float32(w_scale);
//   * state >= float threshold         -> compare in float32 (torch promotes
//     an int64 tensor vs a Python float to the default dtype float32);
//   * backward g = decay * g + grad    -> float32 multiply, then add; built
//     with -ffp-contract=off so the compiler never fuses them into an FMA.
//
// Time-last kernels take contiguous [..., T] tensors (M neurons, time
// innermost); the *_tm kernels take the time-major [N, T, M] layout instead
// (see the section "time-major layout" below). Decays are 1-D
// of length D with neuron m using decay[m % D]: D == 1 (shared), D == last
// spatial dim (torch's trailing-dim broadcast of a per-channel decay against
// [N, C]) or D == M (pre-expanded by the caller).
//
// Speed: the per-neuron recursion is latency bound, so on AVX2 CPUs 16
// neurons advance in lock step (4 groups of 4 SIMD lanes; 4x4 register
// transposes turn the [neuron][time] rows into [time][neuron] vectors). The
// forward's int64 state then lives in doubles, which is exact while |state|,
// |input * scale| < 2^40 and |4096 - decay| <= 4096 (every product < 2^53);
// blocks that leave that range are recomputed with the scalar int64 code.
// Other CPUs use the scalar code only.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/scalar_tensor.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <utility>
#include <vector>

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#include <immintrin.h>
#define LAVA_ALLNET_X86 1
#define LAVA_ALLNET_AVX2 __attribute__((target("avx2")))
#endif

namespace {

// Reset modes: none, float32 compare, int64 compare (a Python int threshold
// keeps torch's comparison integral).
constexpr int64_t kNoReset = 0;
constexpr int64_t kFloatThreshold = 1;
constexpr int64_t kIntThreshold = 2;

constexpr int64_t kShift = 12;             // right_shift_to_zero(., 12)
constexpr int64_t kMaxDecay = 1 << kShift;  // |4096 - decay| bound of the SIMD path
// SIMD path: |state| < 2^40, so |state * decay| < 2^52 is exact in a double.
constexpr double kExactLimit = 1099511627776.0;  // 2^40

inline int64_t wrap_add(int64_t a, int64_t b) {
  return static_cast<int64_t>(static_cast<uint64_t>(a) + static_cast<uint64_t>(b));
}

inline int64_t wrap_mul(int64_t a, int64_t b) {
  return static_cast<int64_t>(static_cast<uint64_t>(a) * static_cast<uint64_t>(b));
}

// slayer right_shift_to_zero(x, 12): x_sign = 2 * (x > 0) - 1;
// x_sign * ((x_sign * x) >> 12). Branch-free conditional negation, since the
// sign of the state is unpredictable.
inline int64_t right_shift_to_zero(int64_t x) {
  const uint64_t neg = x > 0 ? 0 : ~uint64_t{0};
  const int64_t mag = static_cast<int64_t>((static_cast<uint64_t>(x) ^ neg) - neg);
  return static_cast<int64_t>((static_cast<uint64_t>(mag >> kShift) ^ neg) - neg);
}

inline int64_t decay_index(int64_t m, int64_t num_decay) {
  return num_decay == 1 ? 0 : m % num_decay;
}

// stock `(1 << 12) - decay.to(int64)` for one raw float32 decay (wrapping).
inline int64_t decay_int_of(float raw) {
  return static_cast<int64_t>(static_cast<uint64_t>(kMaxDecay) -
                              static_cast<uint64_t>(static_cast<int64_t>(raw)));
}

// stock backward factor `1 - decay / (1 << 12)`, each op rounded to float32.
inline float bwd_factor(float raw) {
  const float scaled = raw / static_cast<float>(kMaxDecay);
  return 1.0f - scaled;
}

// x / 2^k == x * 2^-k exactly; 2^-k is a normal float for these.
inline bool pow2_scale(int64_t w_scale) {
  return w_scale > 0 && w_scale <= (int64_t{1} << 62) && (w_scale & (w_scale - 1)) == 0;
}

// Neurons per parallel task: enough work to amortise the thread hand-off.
inline int64_t grain(int64_t steps) {
  return std::max<int64_t>(8, 32768 / std::max<int64_t>(1, steps));
}

struct FwdArgs {
  const float* in;
  const int64_t* state;
  const int64_t* decay;
  int64_t num_decay;
  float* out;
  int64_t steps;
  float w_scale;
  float thr_f;
  int64_t thr_i;
  int64_t mode;
};

// Exact scalar forward of one neuron (the reference for every other path).
template <int64_t Mode>
void fwd_neuron(const FwdArgs& a, int64_t m) {
  const int64_t decay_int = a.decay[decay_index(m, a.num_decay)];
  const float* x = a.in + m * a.steps;
  float* y = a.out + m * a.steps;
  int64_t s = a.state[m];
  for (int64_t t = 0; t < a.steps; ++t) {
    const float scaled = a.w_scale * x[t];
    const int64_t v = wrap_add(right_shift_to_zero(wrap_mul(s, decay_int)),
                               static_cast<int64_t>(scaled));
    const float v_f = static_cast<float>(v);
    y[t] = v_f / a.w_scale;
    if constexpr (Mode == kFloatThreshold) {
      s = v_f >= a.thr_f ? 0 : v;
    } else if constexpr (Mode == kIntThreshold) {
      s = v >= a.thr_i ? 0 : v;
    } else {
      s = v;
    }
  }
}

void fwd_scalar(const FwdArgs& a, int64_t begin, int64_t end) {
  for (int64_t m = begin; m < end; ++m) {
    switch (a.mode) {
      case kFloatThreshold: fwd_neuron<kFloatThreshold>(a, m); break;
      case kIntThreshold: fwd_neuron<kIntThreshold>(a, m); break;
      default: fwd_neuron<kNoReset>(a, m);
    }
  }
}

void bwd_scalar(const float* go, const float* decay, int64_t num_decay, float* gi,
                int64_t steps, int64_t begin, int64_t end) {
  for (int64_t m = begin; m < end; ++m) {
    const float d = decay[decay_index(m, num_decay)];
    const float* g_out = go + m * steps;
    float* g_in = gi + m * steps;
    float g = g_out[steps - 1];
    g_in[steps - 1] = g;
    for (int64_t t = steps - 2; t >= 0; --t) {
      const float decayed = d * g;  // rounded to float32 before the add
      g = decayed + g_out[t];
      g_in[t] = g;
    }
  }
}

#ifdef LAVA_ALLNET_X86
constexpr int64_t kLanes = 4;   // neurons per SSE/AVX vector group
constexpr int64_t kGroups = 4;  // independent groups in flight (latency hiding)
constexpr int64_t kBlock = kLanes * kGroups;

// rows[j] = base + j * stride; v[k] = (rows[0][t0+k], ..., rows[3][t0+k]).
LAVA_ALLNET_AVX2 inline void load_t4x4(const float* base, int64_t stride, int64_t t0,
                                       __m128 v[4]) {
  for (int j = 0; j < 4; ++j) v[j] = _mm_loadu_ps(base + j * stride + t0);
  _MM_TRANSPOSE4_PS(v[0], v[1], v[2], v[3]);
}

LAVA_ALLNET_AVX2 inline void store_t4x4(float* base, int64_t stride, int64_t t0,
                                        __m128 v[4]) {
  _MM_TRANSPOSE4_PS(v[0], v[1], v[2], v[3]);
  for (int j = 0; j < 4; ++j) _mm_storeu_ps(base + j * stride + t0, v[j]);
}

LAVA_ALLNET_AVX2 inline __m128 load_column(const float* base, int64_t stride, int64_t t) {
  return _mm_setr_ps(base[t], base[stride + t], base[2 * stride + t], base[3 * stride + t]);
}

LAVA_ALLNET_AVX2 inline void store_column(float* base, int64_t stride, int64_t t, __m128 v) {
  alignas(16) float tmp[4];
  _mm_store_ps(tmp, v);
  for (int j = 0; j < 4; ++j) base[j * stride + t] = tmp[j];
}

// Forward state of 4 neurons, int64 values held exactly in doubles.
struct Lanes4 {
  __m256d s;  // state
  __m256d d;  // (4096 - decay) / 4096, exact
};

struct FwdConsts {
  __m128 w_scale, inv_w_scale, zero_f;
  __m256d spike_at, lim, abs_mask;
};

// One time step of 4 neurons; see fwd_neuron for the reference semantics.
// Only the state update (mul, trunc, add, compare, select) is on the
// loop-carried dependency chain.
template <bool Reset, bool Pow2Scale>
LAVA_ALLNET_AVX2 inline __m128 fwd_step(Lanes4& l, __m256d& ok, __m128 x,
                                        const FwdConsts& c) {
  const __m128 scaled = _mm_mul_ps(c.w_scale, x);  // float32, as torch
  const __m256d x_int = _mm256_round_pd(_mm256_cvtps_pd(scaled),
                                        _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
  // right_shift_to_zero(s * decay, 12) == trunc(s * (decay / 4096)).
  const __m256d decayed = _mm256_round_pd(_mm256_mul_pd(l.s, l.d),
                                          _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
  const __m256d v = _mm256_add_pd(decayed, x_int);
  // |v| < 2^40 keeps the next step exact; it also catches an input whose
  // int64 conversion is not a plain truncation (NaN, inf, >= 2^63), since
  // |decayed| < 2^40.
  ok = _mm256_and_pd(ok, _mm256_cmp_pd(_mm256_and_pd(v, c.abs_mask), c.lim, _CMP_LT_OQ));
  if constexpr (Reset) {
    // float(v) >= threshold  <=>  v >= spike_at (see spike_boundary).
    l.s = _mm256_andnot_pd(_mm256_cmp_pd(v, c.spike_at, _CMP_GE_OQ), v);
  } else {
    l.s = v;
  }
  // float(int64 v), exact integer v; + 0.0f turns the -0.0 that trunc gives
  // for small negatives into the +0.0 of int 0.
  const __m128 v_f = _mm_add_ps(_mm256_cvtpd_ps(v), c.zero_f);
  // x / 2^k and x * 2^-k are the same real number, hence the same rounded
  // float; the multiply is much cheaper than a division.
  if constexpr (Pow2Scale) return _mm_mul_ps(v_f, c.inv_w_scale);
  return _mm_div_ps(v_f, c.w_scale);
}

LAVA_ALLNET_AVX2 inline FwdConsts make_fwd_consts(float w_scale, double spike_at) {
  FwdConsts c;
  c.w_scale = _mm_set1_ps(w_scale);
  c.inv_w_scale = _mm_set1_ps(1.0f / w_scale);
  c.zero_f = _mm_setzero_ps();
  c.spike_at = _mm256_set1_pd(spike_at);
  c.lim = _mm256_set1_pd(kExactLimit);
  c.abs_mask = _mm256_castsi256_pd(_mm256_set1_epi64x(0x7fffffffffffffffLL));
  return c;
}

// decay_scaled[i] = decay[i] / 4096 as double (exact).
template <bool Reset, bool Pow2Scale>
LAVA_ALLNET_AVX2 void fwd_avx2(const FwdArgs& a, const double* decay_scaled, double spike_at,
                               int64_t begin, int64_t end) {
  const FwdConsts c = make_fwd_consts(a.w_scale, spike_at);
  const int64_t steps = a.steps;
  const int64_t num_decay = a.num_decay;

  int64_t m = begin;
  int64_t di = decay_index(m, num_decay);  // decay index of neuron m
  for (; m + kBlock <= end; m += kBlock) {
    Lanes4 l[kGroups];
    // One validity mask for the whole block keeps register pressure low.
    __m256d ok = _mm256_castsi256_pd(_mm256_set1_epi64x(-1));
    for (int g = 0; g < kGroups; ++g) {
      const int64_t* st = a.state + m + g * kLanes;
      // Built in registers: 4 scalar stores + one vector load of the same
      // stack slot would stall on store forwarding.
      l[g].s = _mm256_setr_pd(static_cast<double>(st[0]), static_cast<double>(st[1]),
                              static_cast<double>(st[2]), static_cast<double>(st[3]));
      ok = _mm256_and_pd(ok, _mm256_cmp_pd(_mm256_and_pd(l[g].s, c.abs_mask), c.lim, _CMP_LT_OQ));
      double d[4];
      for (int j = 0; j < 4; ++j) {
        d[j] = decay_scaled[di];
        if (num_decay != 1 && ++di == num_decay) di = 0;
      }
      l[g].d = _mm256_setr_pd(d[0], d[1], d[2], d[3]);
    }
    const float* in = a.in + m * steps;
    float* out = a.out + m * steps;
    int64_t t = 0;
    for (; t + 4 <= steps; t += 4) {
      __m128 x[kGroups][4], y[kGroups][4];
      for (int g = 0; g < kGroups; ++g) load_t4x4(in + g * kLanes * steps, steps, t, x[g]);
      for (int k = 0; k < 4; ++k)
        for (int g = 0; g < kGroups; ++g)
          y[g][k] = fwd_step<Reset, Pow2Scale>(l[g], ok, x[g][k], c);
      for (int g = 0; g < kGroups; ++g) store_t4x4(out + g * kLanes * steps, steps, t, y[g]);
    }
    for (; t < steps; ++t) {
      for (int g = 0; g < kGroups; ++g) {
        const int64_t off = g * kLanes * steps;
        store_column(out + off, steps, t,
                     fwd_step<Reset, Pow2Scale>(l[g], ok, load_column(in + off, steps, t), c));
      }
    }
    if (_mm256_movemask_pd(ok) != 0xF) fwd_scalar(a, m, m + kBlock);  // left the exact range
  }
  fwd_scalar(a, m, end);
}

LAVA_ALLNET_AVX2 void bwd_avx2(const float* go, const float* decay, int64_t num_decay,
                               float* gi, int64_t steps, int64_t begin, int64_t end) {
  int64_t m = begin;
  for (; m + kBlock <= end; m += kBlock) {
    __m128 d[kGroups], g[kGroups];
    const float* g_out = go + m * steps;
    float* g_in = gi + m * steps;
    for (int k = 0; k < kGroups; ++k) {
      const int64_t m0 = m + k * kLanes;
      d[k] = _mm_setr_ps(decay[decay_index(m0, num_decay)],
                         decay[decay_index(m0 + 1, num_decay)],
                         decay[decay_index(m0 + 2, num_decay)],
                         decay[decay_index(m0 + 3, num_decay)]);
      // Last step is a plain copy (no 0 * decay + grad, which would turn -0
      // into +0).
      g[k] = load_column(g_out + k * kLanes * steps, steps, steps - 1);
      store_column(g_in + k * kLanes * steps, steps, steps - 1, g[k]);
    }
    // Remaining steps steps-2 .. 0, in 4-step chunks from the top.
    int64_t t = steps - 1;  // exclusive upper end of the unprocessed steps
    for (; t >= 4; t -= 4) {
      __m128 v[kGroups][4];
      for (int k = 0; k < kGroups; ++k) load_t4x4(g_out + k * kLanes * steps, steps, t - 4, v[k]);
      for (int i = 3; i >= 0; --i)
        for (int k = 0; k < kGroups; ++k) {
          g[k] = _mm_add_ps(_mm_mul_ps(d[k], g[k]), v[k][i]);
          v[k][i] = g[k];
        }
      for (int k = 0; k < kGroups; ++k) store_t4x4(g_in + k * kLanes * steps, steps, t - 4, v[k]);
    }
    for (--t; t >= 0; --t) {
      for (int k = 0; k < kGroups; ++k) {
        const int64_t off = k * kLanes * steps;
        g[k] = _mm_add_ps(_mm_mul_ps(d[k], g[k]), load_column(g_out + off, steps, t));
        store_column(g_in + off, steps, t, g[k]);
      }
    }
  }
  bwd_scalar(go, decay, num_decay, gi, steps, m, end);
}

bool has_avx2() {
  static const bool value = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") != 0;
  }();
  return value;
}

// Smallest integer v with float(v) >= thr. float(.) is monotonic, so for
// integers float(v) >= thr <=> v >= spike_boundary(thr); outside the SIMD
// path's range |v| < 2^40 the answer is clamped to +-2^41.
double spike_boundary(float thr) {
  if (!(thr > -kExactLimit)) return -2 * kExactLimit;
  if (thr > kExactLimit) return 2 * kExactLimit;
  // float(hi) >= thr: thr is an integer if |thr| >= 2^23, else ceil(thr) is
  // exact. float(lo) < thr: float rounding moves values by < 2^17 here.
  int64_t hi = static_cast<int64_t>(std::ceil(static_cast<double>(thr)));
  int64_t lo = hi - (int64_t{1} << 20);
  while (hi - lo > 1) {
    const int64_t mid = lo + (hi - lo) / 2;
    (static_cast<float>(mid) >= thr ? hi : lo) = mid;
  }
  return static_cast<double>(hi);
}
#endif  // LAVA_ALLNET_X86

constexpr int64_t kElementGrain = 32768;  // elementwise kernels

// Neurons M and steps T of a contiguous CPU float32 [..., T] tensor.
std::pair<int64_t, int64_t> neurons_steps(const at::Tensor& x, const char* name) {
  TORCH_CHECK(x.dim() >= 1 && x.is_contiguous() && x.scalar_type() == at::kFloat && x.is_cpu(),
              name, ": expected a contiguous CPU float32 tensor");
  const int64_t steps = x.size(-1);
  TORCH_CHECK(steps >= 1, name, ": need at least one time step");
  return {x.numel() / steps, steps};
}

void check_vector(const at::Tensor& v, int64_t neurons, bool any_length, const char* what) {
  TORCH_CHECK(v.is_cpu() && v.is_contiguous() &&
                  (v.scalar_type() == at::kFloat || v.scalar_type() == at::kLong),
              what, " must be a contiguous CPU float32 or int64 tensor");
  const int64_t n = v.numel();
  TORCH_CHECK(any_length ? (n >= 1 && neurons % n == 0) : n == neurons,
              what, " has a bad number of elements");
}

// Forward time loop over input [..., T] (M neurons).
//   state: M values; float32 = stock's raw state (scaled and truncated here
//          exactly as `(state * w_scale).to(int64)`), int64 = already that.
//   decay: D values (D divides M, neuron m uses m % D); float32 = raw decay
//          (here `4096 - decay.to(int64)`), int64 = already that.
at::Tensor li_fwd(const at::Tensor& input, const at::Tensor& state, const at::Tensor& decay,
                  int64_t w_scale, int64_t mode, double threshold_f, int64_t threshold_i) {
  const auto [neurons, steps] = neurons_steps(input, "li_fwd");
  check_vector(state, neurons, false, "li_fwd: state");
  check_vector(decay, neurons, true, "li_fwd: decay");
  TORCH_CHECK(mode >= kNoReset && mode <= kIntThreshold, "li_fwd: bad mode");
  // torch's conversions of the Python scalars.
  const float w_scale_f = static_cast<float>(w_scale);

  at::Tensor state_int = state;
  if (state.scalar_type() == at::kFloat) {
    state_int = at::empty({neurons}, state.options().dtype(at::kLong));
    const float* src = state.const_data_ptr<float>();
    int64_t* dst = state_int.mutable_data_ptr<int64_t>();
    for (int64_t i = 0; i < neurons; ++i) dst[i] = static_cast<int64_t>(src[i] * w_scale_f);
  }
  const int64_t num_decay = decay.numel();
  std::vector<int64_t> decay_int(num_decay);
  if (decay.scalar_type() == at::kFloat) {
    const float* src = decay.const_data_ptr<float>();
    for (int64_t i = 0; i < num_decay; ++i) decay_int[i] = decay_int_of(src[i]);
  } else {
    const int64_t* src = decay.const_data_ptr<int64_t>();
    std::copy(src, src + num_decay, decay_int.begin());
  }

  at::Tensor output = at::empty_like(input);
  FwdArgs a;
  a.in = input.const_data_ptr<float>();
  a.state = state_int.const_data_ptr<int64_t>();
  a.decay = decay_int.data();
  a.num_decay = num_decay;
  a.out = output.mutable_data_ptr<float>();
  a.steps = steps;
  a.w_scale = w_scale_f;
  a.thr_f = static_cast<float>(threshold_f);
  a.thr_i = threshold_i;
  a.mode = mode;

  bool simd = false;
#ifdef LAVA_ALLNET_X86
  const bool pow2 = pow2_scale(w_scale);
  simd = has_avx2() && mode != kIntThreshold &&
         std::all_of(decay_int.begin(), decay_int.end(),
                     [](int64_t d) { return d >= -kMaxDecay && d <= kMaxDecay; });
  const double spike_at = spike_boundary(a.thr_f);
  std::vector<double> decay_scaled;
  if (simd) {
    decay_scaled.resize(num_decay);
    for (int64_t i = 0; i < num_decay; ++i)
      decay_scaled[i] = static_cast<double>(decay_int[i]) / static_cast<double>(kMaxDecay);
  }
#endif
  at::parallel_for(0, neurons, grain(steps), [&](int64_t begin, int64_t end) {
#ifdef LAVA_ALLNET_X86
    if (simd) {
      const double* ds = decay_scaled.data();
      const bool reset = mode == kFloatThreshold;
      if (reset && pow2) fwd_avx2<true, true>(a, ds, spike_at, begin, end);
      else if (reset) fwd_avx2<true, false>(a, ds, spike_at, begin, end);
      else if (pow2) fwd_avx2<false, true>(a, ds, spike_at, begin, end);
      else fwd_avx2<false, false>(a, ds, spike_at, begin, end);
      return;
    }
#endif
    fwd_scalar(a, begin, end);
  });
  return output;
}

// Backward time loop (reversed-time recursion) over grad_output [..., T].
// decay: D raw float32 decays; the factor is stock's `1 - decay / 4096`.
at::Tensor li_bwd(const at::Tensor& grad_output, const at::Tensor& decay) {
  const auto [neurons, steps] = neurons_steps(grad_output, "li_bwd");
  check_vector(decay, neurons, true, "li_bwd: decay");
  TORCH_CHECK(decay.scalar_type() == at::kFloat, "li_bwd: decay must be float32");
  const int64_t num_decay = decay.numel();
  std::vector<float> factor(num_decay);
  const float* src = decay.const_data_ptr<float>();
  for (int64_t i = 0; i < num_decay; ++i) factor[i] = bwd_factor(src[i]);

  at::Tensor grad_input = at::empty_like(grad_output);
  const float* go = grad_output.const_data_ptr<float>();
  const float* dc = factor.data();
  float* gi = grad_input.mutable_data_ptr<float>();

  at::parallel_for(0, neurons, grain(steps), [&](int64_t begin, int64_t end) {
#ifdef LAVA_ALLNET_X86
    if (has_avx2()) {
      bwd_avx2(go, dc, num_decay, gi, steps, begin, end);
      return;
    }
#endif
    bwd_scalar(go, dc, num_decay, gi, steps, begin, end);
  });
  return grad_input;
}

// ---------------------------------------------------------------------------
// Time-major layout: contiguous [N, T, M] (batch, time, M neurons innermost),
// i.e. conv2d's (N*T, C, H, W) frames. Zero initial state, one shared decay.
// The recursion runs t outer and neurons inner, so SIMD lanes are contiguous
// neurons (no transposes). One parallel task is a chunk of <= kTmChunk
// neurons of one sample, whose state lives in a small (L1) buffer.
// ---------------------------------------------------------------------------
constexpr int64_t kTmChunk = 512;

struct TmDims {
  int64_t batch, steps, neurons, chunks;
};

TmDims tm_dims(const at::Tensor& x, const char* name) {
  TORCH_CHECK(x.dim() >= 2 && x.is_contiguous() && x.scalar_type() == at::kFloat && x.is_cpu(),
              name, ": expected a contiguous CPU float32 [N, T, ...] tensor");
  TmDims d;
  d.batch = x.size(0);
  d.steps = x.size(1);
  d.neurons = d.batch * d.steps == 0 ? 0 : x.numel() / (d.batch * d.steps);
  d.chunks = (d.neurons + kTmChunk - 1) / kTmChunk;
  return d;
}

// Runs fn(n, m0, m1) over every (sample, neuron chunk) in parallel.
template <typename F>
void tm_parallel(const TmDims& d, const F& fn) {
  const int64_t units = d.batch * d.chunks;
  const int64_t work = d.steps * std::min(d.neurons, kTmChunk);
  at::parallel_for(0, units, std::max<int64_t>(1, 32768 / std::max<int64_t>(1, work)),
                   [&](int64_t begin, int64_t end) {
    for (int64_t u = begin; u < end; ++u) {
      const int64_t m0 = (u % d.chunks) * kTmChunk;
      fn(u / d.chunks, m0, std::min(m0 + kTmChunk, d.neurons));
    }
  });
}

struct TmArgs {
  const float* in;
  float* out;
  int64_t steps, neurons;
  int64_t decay;  // 4096 - raw decay
  float w_scale;
  float thr_f;
  int64_t thr_i;
  int64_t mode;
  // Input row of (n, t) at in + n * in_n + t * in_t (in_t = 0: the same input
  // at every step, e.g. a conv of the static image).
  int64_t in_n = 0, in_t = 0;
  const float* bias = nullptr;  // [M] subtracted from the input (float32), or none
  float* spikes = nullptr;      // [N, T, M] out >= spike_thr as 1/0 (slayer's spike), or none
  float spike_thr = 0.0f;
};

// Exact scalar forward of neurons [m0, m1) of sample n (the reference for the
// SIMD path; same per-element ops as fwd_neuron).
template <int64_t Mode>
void fwd_tm_scalar_mode(const TmArgs& a, int64_t n, int64_t m0, int64_t m1) {
  int64_t state[kTmChunk] = {};
  for (int64_t t = 0; t < a.steps; ++t) {
    const int64_t row = (n * a.steps + t) * a.neurons;
    const float* x = a.in + n * a.in_n + t * a.in_t;
    float* y = a.out + row;
    for (int64_t m = m0; m < m1; ++m) {
      int64_t& s = state[m - m0];
      const float in = a.bias ? x[m] - a.bias[m] : x[m];  // torch's `current - centre`
      const float scaled = a.w_scale * in;
      const int64_t v = wrap_add(right_shift_to_zero(wrap_mul(s, a.decay)),
                                 static_cast<int64_t>(scaled));
      const float v_f = static_cast<float>(v);
      y[m] = v_f / a.w_scale;
      if (a.spikes) a.spikes[row + m] = y[m] >= a.spike_thr ? 1.0f : 0.0f;
      if constexpr (Mode == kFloatThreshold) {
        s = v_f >= a.thr_f ? 0 : v;
      } else if constexpr (Mode == kIntThreshold) {
        s = v >= a.thr_i ? 0 : v;
      } else {
        s = v;
      }
    }
  }
}

void fwd_tm_scalar(const TmArgs& a, int64_t n, int64_t m0, int64_t m1) {
  switch (a.mode) {
    case kFloatThreshold: fwd_tm_scalar_mode<kFloatThreshold>(a, n, m0, m1); break;
    case kIntThreshold: fwd_tm_scalar_mode<kIntThreshold>(a, n, m0, m1); break;
    default: fwd_tm_scalar_mode<kNoReset>(a, n, m0, m1);
  }
}

void bwd_tm_scalar(const float* go, float d, float* gi, int64_t neurons, int64_t t,
                   int64_t m0, int64_t m1) {
  const float* g_out = go + t * neurons;
  const float* next = gi + (t + 1) * neurons;
  float* g_in = gi + t * neurons;
  for (int64_t m = m0; m < m1; ++m) {
    const float decayed = d * next[m];  // rounded to float32 before the add
    g_in[m] = decayed + g_out[m];
  }
}

#ifdef LAVA_ALLNET_X86
// SIMD forward of neurons [m0, m1) of sample n, (m1 - m0) % 4 == 0, with the
// same double-state scheme as fwd_avx2 (fwd_step). Returns false if a value
// left the exact range; the caller then recomputes these neurons exactly.
template <bool Reset, bool Pow2Scale>
LAVA_ALLNET_AVX2 bool fwd_tm_avx2(const TmArgs& a, double spike_at, int64_t n, int64_t m0,
                                  int64_t m1) {
  const FwdConsts c = make_fwd_consts(a.w_scale, spike_at);
  const __m256d decay = _mm256_set1_pd(static_cast<double>(a.decay) / kMaxDecay);
  alignas(32) double state[kTmChunk] = {};
  __m256d ok = _mm256_castsi256_pd(_mm256_set1_epi64x(-1));
  const __m128 spike_thr = _mm_set1_ps(a.spike_thr), one = _mm_set1_ps(1.0f);
  for (int64_t t = 0; t < a.steps; ++t) {
    const int64_t row = (n * a.steps + t) * a.neurons;
    const float* x = a.in + n * a.in_n + t * a.in_t;
    float* y = a.out + row;
    for (int64_t m = m0; m < m1; m += kLanes) {
      double* s = state + (m - m0);
      Lanes4 l{_mm256_load_pd(s), decay};
      __m128 in = _mm_loadu_ps(x + m);
      if (a.bias) in = _mm_sub_ps(in, _mm_loadu_ps(a.bias + m));
      const __m128 out = fwd_step<Reset, Pow2Scale>(l, ok, in, c);
      _mm_storeu_ps(y + m, out);
      if (a.spikes)
        _mm_storeu_ps(a.spikes + row + m, _mm_and_ps(_mm_cmp_ps(out, spike_thr, _CMP_GE_OQ), one));
      _mm256_store_pd(s, l.s);
    }
  }
  return _mm256_movemask_pd(ok) == 0xF;
}

LAVA_ALLNET_AVX2 void bwd_tm_avx2(const float* go, float d, float* gi, int64_t neurons, int64_t t,
                                  int64_t m0, int64_t m1) {
  const float* g_out = go + t * neurons;
  const float* next = gi + (t + 1) * neurons;
  float* g_in = gi + t * neurons;
  const __m256 dv = _mm256_set1_ps(d);
  int64_t m = m0;
  for (; m + 8 <= m1; m += 8) {
    const __m256 decayed = _mm256_mul_ps(dv, _mm256_loadu_ps(next + m));
    _mm256_storeu_ps(g_in + m, _mm256_add_ps(decayed, _mm256_loadu_ps(g_out + m)));
  }
  bwd_tm_scalar(go, d, gi, neurons, t, m, m1);
}
#endif  // LAVA_ALLNET_X86

// float32 raw decay of numel 1 (stock passes quantize(decay), shape [1]).
float tm_decay(const at::Tensor& decay, const char* name) {
  TORCH_CHECK(decay.is_cpu() && decay.scalar_type() == at::kFloat && decay.numel() == 1,
              name, ": decay must be a CPU float32 tensor with one element");
  return decay.contiguous().const_data_ptr<float>()[0];
}

void run_fwd_tm(const TmDims& d, TmArgs& a, int64_t w_scale, float* sums);
std::vector<at::Tensor> li_fwd_tm_ex(const at::Tensor& input, int64_t steps,
                                     const at::Tensor& decay, int64_t w_scale, int64_t mode,
                                     double threshold_f, int64_t threshold_i,
                                     const at::Tensor& bias, double spike_threshold,
                                     bool time_sums);

// Time-major forward: input [N, T, ...] from a zero state; the output equals
// stock's on input.movedim(1, -1), moved back. mode/thresholds as li_fwd.
at::Tensor li_fwd_tm(const at::Tensor& input, const at::Tensor& decay, int64_t w_scale,
                     int64_t mode, double threshold_f, int64_t threshold_i) {
  tm_dims(input, "li_fwd_tm");
  return li_fwd_tm_ex(input, 0, decay, w_scale, mode, threshold_f, threshold_i, at::Tensor(),
                      std::nan(""), false)[0];
}

// li_fwd_tm with the extras a CUBA layer fuses into it:
//   * input [N, T, *S], or [N, *S] held for `steps` steps (steps > 0);
//   * bias [M] (or empty): the input is `input - bias` in float32 (the batch
//     norm's centre, broadcast over the neurons by the caller);
//   * spike_threshold (NaN: none): also returns slayer's spikes of the output;
//   * time_sums: also returns the output summed over time, [N, M] (what a
//     batch mean needs, without another pass over the output).
// Returns {output [N, T, *S], spikes, sums} (empty tensors where not asked).
std::vector<at::Tensor> li_fwd_tm_ex(const at::Tensor& input, int64_t steps,
                                     const at::Tensor& decay, int64_t w_scale, int64_t mode,
                                     double threshold_f, int64_t threshold_i,
                                     const at::Tensor& bias, double spike_threshold,
                                     bool time_sums) {
  TORCH_CHECK(input.dim() >= 1 && input.is_contiguous() && input.scalar_type() == at::kFloat &&
                  input.is_cpu(),
              "li_fwd_tm_ex: expected a contiguous CPU float32 input");
  TORCH_CHECK(mode >= kNoReset && mode <= kIntThreshold, "li_fwd_tm_ex: bad mode");
  std::vector<int64_t> shape(input.sizes().begin(), input.sizes().end());
  const bool held = steps > 0;
  if (held) shape.insert(shape.begin() + 1, steps);
  TORCH_CHECK(shape.size() >= 2, "li_fwd_tm_ex: need [N, T, ...] or [N, ...] with steps");
  at::Tensor output = at::empty(shape, input.options());
  TmDims d;
  d.batch = shape[0];
  d.steps = shape[1];
  d.neurons = d.batch * d.steps == 0 ? 0 : output.numel() / (d.batch * d.steps);
  d.chunks = (d.neurons + kTmChunk - 1) / kTmChunk;
  const bool spiking = !std::isnan(spike_threshold);
  at::Tensor spikes = spiking ? at::empty(shape, input.options()) : at::empty({0}, input.options());
  at::Tensor sums = time_sums ? at::zeros({d.batch, d.neurons}, input.options())
                              : at::empty({0}, input.options());
  if (output.numel() == 0) return {output, spikes, sums};
  TmArgs a;
  a.in = input.const_data_ptr<float>();
  a.in_t = held ? 0 : d.neurons;
  a.in_n = held ? d.neurons : d.steps * d.neurons;
  if (bias.defined() && bias.numel() > 0) {
    TORCH_CHECK(bias.is_cpu() && bias.is_contiguous() && bias.scalar_type() == at::kFloat &&
                    bias.numel() == d.neurons,
                "li_fwd_tm_ex: bias must be a contiguous CPU float32 tensor with one value per neuron");
    a.bias = bias.const_data_ptr<float>();
  }
  if (spiking) {
    a.spikes = spikes.mutable_data_ptr<float>();
    a.spike_thr = static_cast<float>(spike_threshold);
  }
  a.out = output.mutable_data_ptr<float>();
  a.steps = d.steps;
  a.neurons = d.neurons;
  a.decay = decay_int_of(tm_decay(decay, "li_fwd_tm_ex"));
  a.w_scale = static_cast<float>(w_scale);
  a.thr_f = static_cast<float>(threshold_f);
  a.thr_i = threshold_i;
  a.mode = mode;
  run_fwd_tm(d, a, w_scale, time_sums ? sums.mutable_data_ptr<float>() : nullptr);
  return {output, spikes, sums};
}

// sums[n, m] = sum over t of x[n, t, m] for m in [m0, m1), t rising: a chunk
// just written is still in cache, so this costs far less than a torch reduction.
void sum_over_time(const float* x, float* sums, int64_t steps, int64_t neurons, int64_t n,
                   int64_t m0, int64_t m1) {
  float* s = sums + n * neurons;
  const float* xn = x + n * steps * neurons;
  std::copy(xn + m0, xn + m1, s + m0);
  for (int64_t t = 1; t < steps; ++t) {
    const float* row = xn + t * neurons;
    for (int64_t m = m0; m < m1; ++m) s[m] += row[m];
  }
}


void run_fwd_tm(const TmDims& d, TmArgs& a, int64_t w_scale, float* sums) {
  const int64_t mode = a.mode;

#ifdef LAVA_ALLNET_X86
  const bool simd = has_avx2() && mode != kIntThreshold && a.decay >= -kMaxDecay &&
                    a.decay <= kMaxDecay;
  const bool pow2 = pow2_scale(w_scale);
  const double spike_at = spike_boundary(a.thr_f);
  const bool reset = mode == kFloatThreshold;
  auto kernel = reset ? (pow2 ? fwd_tm_avx2<true, true> : fwd_tm_avx2<true, false>)
                      : (pow2 ? fwd_tm_avx2<false, true> : fwd_tm_avx2<false, false>);
#endif
  tm_parallel(d, [&](int64_t n, int64_t m0, int64_t m1) {
#ifdef LAVA_ALLNET_X86
    if (simd) {
      const int64_t m_vec = m0 + (m1 - m0) / kLanes * kLanes;
      if (!kernel(a, spike_at, n, m0, m_vec)) fwd_tm_scalar(a, n, m0, m_vec);
      fwd_tm_scalar(a, n, m_vec, m1);
    } else {
      fwd_tm_scalar(a, n, m0, m1);
    }
#else
    fwd_tm_scalar(a, n, m0, m1);
#endif
    if (sums) sum_over_time(a.out, sums, d.steps, d.neurons, n, m0, m1);
  });
}

// Time-major backward: grad_input[n, t] = f * grad_input[n, t + 1] +
// grad_output[n, t] with stock's f = 1 - decay / 4096 (float32 ops). With
// sums, also the result summed over time per sample and neuron [N, M] (t
// rising), read back from cache right after each chunk is computed.
void run_bwd_tm(const TmDims& d, const float* go, float f, float* gi, float* sums) {
  const int64_t sample = d.steps * d.neurons;
  tm_parallel(d, [&](int64_t n, int64_t m0, int64_t m1) {
    const float* g_out = go + n * sample;
    float* g_in = gi + n * sample;
    // Last step is a plain copy (no 0 * f + g, which would turn -0 into +0).
    const int64_t last = (d.steps - 1) * d.neurons;
    std::copy(g_out + last + m0, g_out + last + m1, g_in + last + m0);
    for (int64_t t = d.steps - 2; t >= 0; --t) {
#ifdef LAVA_ALLNET_X86
      if (has_avx2()) {
        bwd_tm_avx2(g_out, f, g_in, d.neurons, t, m0, m1);
        continue;
      }
#endif
      bwd_tm_scalar(g_out, f, g_in, d.neurons, t, m0, m1);
    }
    if (sums) sum_over_time(gi, sums, d.steps, d.neurons, n, m0, m1);
  });
}

at::Tensor li_bwd_tm(const at::Tensor& grad_output, const at::Tensor& decay) {
  const TmDims d = tm_dims(grad_output, "li_bwd_tm");
  at::Tensor grad_input = at::empty_like(grad_output);
  if (grad_input.numel() == 0) return grad_input;
  run_bwd_tm(d, grad_output.const_data_ptr<float>(), bwd_factor(tm_decay(decay, "li_bwd_tm")),
             grad_input.mutable_data_ptr<float>(), nullptr);
  return grad_input;
}

std::vector<at::Tensor> li_bwd_tm_ex(const at::Tensor& grad_output, const at::Tensor& decay) {
  const TmDims d = tm_dims(grad_output, "li_bwd_tm_ex");
  at::Tensor grad_input = at::empty_like(grad_output);
  at::Tensor sums = at::zeros({d.batch, d.neurons}, grad_output.options());
  if (grad_input.numel() == 0) return {grad_input, sums};
  run_bwd_tm(d, grad_output.const_data_ptr<float>(), bwd_factor(tm_decay(decay, "li_bwd_tm_ex")),
             grad_input.mutable_data_ptr<float>(), sums.mutable_data_ptr<float>());
  return {grad_input, sums};
}

// li_bwd_tm summed over time: the input gradient of an input held constant
// for every step ([N, *S] -> [N, T, *S] broadcast), without the [N, T, M]
// tensor. Sums in falling t (the order the recursion produces them).
at::Tensor li_bwd_tm_sum(const at::Tensor& grad_output, const at::Tensor& decay) {
  const TmDims d = tm_dims(grad_output, "li_bwd_tm_sum");
  std::vector<int64_t> shape(grad_output.sizes().begin(), grad_output.sizes().end());
  shape.erase(shape.begin() + 1);
  at::Tensor grad_input = at::empty(shape, grad_output.options());
  if (grad_input.numel() == 0 || d.steps == 0) return grad_input.zero_();
  const float f = bwd_factor(tm_decay(decay, "li_bwd_tm_sum"));
  const float* go = grad_output.const_data_ptr<float>();
  float* gi = grad_input.mutable_data_ptr<float>();
  tm_parallel(d, [&](int64_t n, int64_t m0, int64_t m1) {
    const float* g_out = go + n * d.steps * d.neurons;
    float cur[kTmChunk], acc[kTmChunk];
    const int64_t w = m1 - m0;
    const float* last = g_out + (d.steps - 1) * d.neurons + m0;
    for (int64_t k = 0; k < w; ++k) cur[k] = acc[k] = last[k];
    for (int64_t t = d.steps - 2; t >= 0; --t) {
      const float* row = g_out + t * d.neurons + m0;
      for (int64_t k = 0; k < w; ++k) {
        const float decayed = f * cur[k];  // rounded before the add, as li_bwd_tm
        cur[k] = decayed + row[k];
        acc[k] += cur[k];
      }
    }
    std::copy(acc, acc + w, gi + n * d.neurons + m0);
  });
  return grad_input;
}

// The terms of stock's shared-decay gradient, grad_input[..., 1:] *
// output[..., :-1], from time-major tensors but laid out time-last
// [N, M, T - 1]: torch.sum over it then adds them in stock's order.
at::Tensor li_decay_terms_tm(const at::Tensor& grad_input, const at::Tensor& output) {
  const TmDims d = tm_dims(grad_input, "li_decay_terms_tm");
  tm_dims(output, "li_decay_terms_tm");
  TORCH_CHECK(grad_input.sizes() == output.sizes(), "li_decay_terms_tm: size mismatch");
  const int64_t lag = std::max<int64_t>(d.steps - 1, 0);
  at::Tensor terms = at::empty({d.batch, d.neurons, lag}, grad_input.options());
  if (terms.numel() == 0) return terms;
  const float* gi = grad_input.const_data_ptr<float>();
  const float* y = output.const_data_ptr<float>();
  float* o = terms.mutable_data_ptr<float>();
  constexpr int64_t kBlockM = 64;  // contiguous reads; writes stay in L1
  tm_parallel(d, [&](int64_t n, int64_t m0, int64_t m1) {
    const float* g_n = gi + n * d.steps * d.neurons;
    const float* y_n = y + n * d.steps * d.neurons;
    float* o_n = o + n * d.neurons * lag;
    for (int64_t mb = m0; mb < m1; mb += kBlockM) {
      const int64_t me = std::min(mb + kBlockM, m1);
      for (int64_t t = 0; t < lag; ++t) {
        const float* g_row = g_n + (t + 1) * d.neurons;
        const float* y_row = y_n + t * d.neurons;
        for (int64_t m = mb; m < me; ++m) o_n[m * lag + t] = g_row[m] * y_row[m];
      }
    }
  });
  return terms;
}

// slayer Spike.forward (non-graded): (voltage >= threshold).to(float32); torch
// compares a float32 tensor with a Python float in float32.
at::Tensor spike_fwd(const at::Tensor& voltage, double threshold) {
  neurons_steps(voltage, "spike_fwd");
  const float thr = static_cast<float>(threshold);
  at::Tensor spikes = at::empty_like(voltage);
  const float* v = voltage.const_data_ptr<float>();
  float* s = spikes.mutable_data_ptr<float>();
  at::parallel_for(0, voltage.numel(), kElementGrain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) s[i] = v[i] >= thr ? 1.0f : 0.0f;
  });
  return spikes;
}

// Argument of the exp in slayer's _spike_backward, in its op order:
// (-|voltage - threshold|) / tau_rho, each step rounded to float32.
at::Tensor spike_grad_exponent(const at::Tensor& voltage, double threshold, double tau_rho) {
  neurons_steps(voltage, "spike_grad_exponent");
  const float thr = static_cast<float>(threshold);
  const float tau = static_cast<float>(tau_rho);
  at::Tensor out = at::empty_like(voltage);
  const float* v = voltage.const_data_ptr<float>();
  float* o = out.mutable_data_ptr<float>();
  at::parallel_for(0, voltage.numel(), kElementGrain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) o[i] = -std::fabs(v[i] - thr) / tau;
  });
  return out;
}

// In place: e = (coef * e) * grad, i.e. slayer's
// `scale_rho / 2 / tau_rho * torch.exp(...) * grad_spikes` after the exp.
at::Tensor spike_grad_scale_(at::Tensor e, double coef, const at::Tensor& grad) {
  neurons_steps(e, "spike_grad_scale_");
  neurons_steps(grad, "spike_grad_scale_");
  TORCH_CHECK(e.numel() == grad.numel(), "spike_grad_scale_: size mismatch");
  const float c = static_cast<float>(coef);
  float* x = e.mutable_data_ptr<float>();
  const float* g = grad.const_data_ptr<float>();
  at::parallel_for(0, e.numel(), kElementGrain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const float scaled = c * x[i];  // rounded before the second multiply
      x[i] = scaled * g[i];
    }
  });
  return e;
}

// slayer utils.time.shift for a scalar shift of a [..., T] float32 tensor:
// out[..., t] = in[..., t - shift] where 0 <= t - shift < T, else 0.
// Rows are short (T ~ 8), so per-row copies would be dominated by call
// overhead: copy each chunk of rows as one block shifted by `shift`
// elements, then zero the |shift| entries per row that came from the
// neighbouring row (or from outside the tensor).
at::Tensor time_shift(const at::Tensor& input, int64_t shift) {
  const auto [rows, steps] = neurons_steps(input, "time_shift");
  at::Tensor out = at::empty_like(input);
  const float* in = input.const_data_ptr<float>();
  float* o = out.mutable_data_ptr<float>();
  const int64_t gap = std::min<int64_t>(shift < 0 ? -shift : shift, steps);
  at::parallel_for(0, rows, std::max<int64_t>(1, kElementGrain / steps),
                   [&](int64_t begin, int64_t end) {
    const int64_t first = begin * steps;
    const int64_t count = (end - begin) * steps;
    if (gap < steps) {
      if (shift > 0) std::memcpy(o + first + gap, in + first, (count - gap) * sizeof(float));
      else std::memcpy(o + first, in + first + gap, (count - gap) * sizeof(float));
    }
    // Zeroed slots: t in [0, gap) for shift > 0, t in [steps - gap, steps) else.
    float* z = o + first + (shift > 0 ? 0 : steps - gap);
    if (gap == 1) {
      for (int64_t r = 0; r < end - begin; ++r) z[r * steps] = 0.0f;
    } else {
      for (int64_t r = 0; r < end - begin; ++r)
        std::fill(z + r * steps, z + r * steps + gap, 0.0f);
    }
  });
  return out;
}

// ---------------------------------------------------------------------------
}  // namespace

// The 24-bit range penalty (lava_allnet.fixed_point.state_range_penalty):
// sum(relu(|x| * scale - margin)^2) in one pass instead of six torch ops
// over the whole state (measured: the penalty had doubled a training step).
// Accumulated in double per chunk; a training loss, not a deployment value,
// so it need not match the torch expression bit for bit.
at::Tensor range_penalty_fwd(const at::Tensor& x, double scale, double margin) {
  TORCH_CHECK(x.is_contiguous() && x.scalar_type() == at::kFloat && x.is_cpu(),
              "range_penalty_fwd: expected a contiguous CPU float32 tensor");
  const float* p = x.const_data_ptr<float>();
  const double total = at::parallel_reduce(
      int64_t{0}, x.numel(), kElementGrain, 0.0,
      [&](int64_t begin, int64_t end, double acc) {
        for (int64_t i = begin; i < end; ++i) {
          const double d = std::fabs(static_cast<double>(p[i])) * scale - margin;
          if (d > 0) acc += d * d;
        }
        return acc;
      },
      [](double a, double b) { return a + b; });
  return at::scalar_tensor(total, x.options());
}

// d/dx of the above times the incoming scalar gradient: 2 g scale sign(x) relu(|x| scale - margin).
at::Tensor range_penalty_bwd(const at::Tensor& x, double scale, double margin, double grad) {
  TORCH_CHECK(x.is_contiguous() && x.scalar_type() == at::kFloat && x.is_cpu(),
              "range_penalty_bwd: expected a contiguous CPU float32 tensor");
  at::Tensor out = at::empty_like(x);
  const float* p = x.const_data_ptr<float>();
  float* o = out.mutable_data_ptr<float>();
  const float s = static_cast<float>(scale), m = static_cast<float>(margin);
  const float k = static_cast<float>(2.0 * grad * scale);
  at::parallel_for(0, x.numel(), kElementGrain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const float d = std::fabs(p[i]) * s - m;
      o[i] = d > 0.0f ? std::copysign(k * d, p[i]) : 0.0f;
    }
  });
  return out;
}

TORCH_LIBRARY(lava_allnet_cuba, m) {
  m.def("li_fwd", &li_fwd);
  m.def("li_bwd", &li_bwd);
  m.def("li_fwd_tm", &li_fwd_tm);
  m.def("li_fwd_tm_ex", &li_fwd_tm_ex);
  m.def("li_bwd_tm_sum", &li_bwd_tm_sum);
  m.def("li_bwd_tm_ex", &li_bwd_tm_ex);
  m.def("li_bwd_tm", &li_bwd_tm);
  m.def("li_decay_terms_tm", &li_decay_terms_tm);
  m.def("spike_fwd", &spike_fwd);
  m.def("spike_grad_exponent", &spike_grad_exponent);
  m.def("spike_grad_scale_", &spike_grad_scale_);
  m.def("time_shift", &time_shift);
  m.def("range_penalty_fwd", &range_penalty_fwd);
  m.def("range_penalty_bwd", &range_penalty_bwd);
}

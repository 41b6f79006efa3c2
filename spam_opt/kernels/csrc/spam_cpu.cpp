// The fused SPAM and Stable-SPAM steps on CPU: vectorised, multi-threaded, a whole param group per call.
//
// SPAM, per parameter: one pass that clips, updates the moments and the parameter, and counts the clipped
// entries; an entry whose gradient is NaN/Inf keeps its values, so no separate check of g is needed.
// Stable-SPAM needs its statistics before its update (max|g| with the NaN check, AdaClip's count and the
// clipped norm for AdaGN): one read of g gives them all, with the entries that AdaClip could clip kept
// aside (a second read only where too many could be).
// SPAM and Stable-SPAM with 8-bit moments dequantize, update and requantize each block in the same pass.
// Registered as torch.ops.spam_opt.spam_step_, spam_step8_, stable_spam_step_, stable_spam_step8_,
// kept_entries, kept_bits and kept_bits_of; spam_opt/_cpp_build.py builds and loads this file (spam_opt/kernels/cpp_ops.py
// names it), spam_opt/kernels/{spam,stable_spam}/cpp.py and spam_opt/kernels/draw.py call its ops.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#if defined(__AVX2__)
#include <immintrin.h>
#endif
#include <torch/library.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <functional>
#include <type_traits>
#include <utility>
#include <vector>

namespace {

// Entries per task: large enough to amortise scheduling, small enough to split one big tensor over threads.
constexpr int64_t kGrain = 1 << 15;
// Entries per inner loop of a reduction: float32 partial sums over this many, then a double total.
constexpr int64_t kBlock = 1 << 12;
// Entries of g above the least bound AdaClip can have that Stable-SPAM's statistics keep (plus 1 in 1024 of
// the tensor's entries) before giving up and reading g again on a step where AdaClip clips.
constexpr int64_t kTailCap = 1 << 12;
// Sparse momentum stores flat indices per block of 2**kBlockBits entries (spam_opt/sparse.py, BLOCK_BITS).
constexpr int64_t kBlockBits = 16;

// Each constant is rounded to float32 once, from double, as torch rounds a Python scalar operand; with
// -ffp-contract=off every operation below then rounds exactly as the reference path's tensor ops do.
struct Hyper {
  float beta1, one_minus_beta1, beta2, one_minus_beta2, eps, step, decay, clip, sign;
};

struct AbsMax {
  float amax;
  bool finite;
  double sum_sq;  // Stable-SPAM's AdaGN norm, squared, on a step where AdaClip scales nothing
  // AdaClip's bound is at least `lower` (known before g is read): the entries above it, the only ones it can
  // clip, are kept (their values; `tail`), and the squares of the others summed (`sum_below`), so that a step
  // where AdaClip clips needs no second read of g. Past `cap` entries above `lower`, `tail_complete` is false.
  double sum_below;
  std::vector<float> tail;
  bool tail_complete;
};

// max|g|, whether g is all finite, the sum of g^2, and AbsMax's split at `lower`, in one read of g
// (Stable-SPAM's statistics). Four streams a quarter of the range apart: one sequential stream leaves much of
// the memory bandwidth unused, and this read comes on top of the update pass. |x| as IEEE bits orders like an
// unsigned integer, and NaN and Inf are exactly the bit patterns from 0x7f800000 up: an integer max reduction
// (which vectorises, unlike a float max with NaN semantics) answers both questions, and an integer compare
// with lower's bits splits the entries. The tail is gathered from a chunk (in L1/L2, just read) only where the
// chunk's count of entries above `lower` is not 0: with the bound near max|g|, rarely.
// The entries of x[0, len) whose |x| bits exceed lower_bits, in order, written from `out` on (which has room
// for them and 16 more); returns the end of what it wrote.
float* gather_above(const float* x, int64_t len, uint32_t lower_bits, float* out) {
  int64_t i = 0;
#if defined(__AVX512F__)
  const __m512i abs_mask = _mm512_set1_epi32(0x7fffffff), lower = _mm512_set1_epi32(static_cast<int32_t>(lower_bits));
  for (; i + 16 <= len; i += 16) {
    const __m512 v = _mm512_loadu_ps(x + i);
    const __mmask16 k = _mm512_cmpgt_epu32_mask(_mm512_and_si512(_mm512_castps_si512(v), abs_mask), lower);
    if (k != 0) {
      _mm512_storeu_ps(out, _mm512_maskz_compress_ps(k, v));  // into a register: the store form is slow on Zen 4
      out += std::popcount(static_cast<uint32_t>(k));
    }
  }
#endif
  for (; i < len; ++i) {
    *out = x[i];
    out += (std::bit_cast<uint32_t>(x[i]) & 0x7fffffffu) > lower_bits;
  }
  return out;
}

AbsMax abs_max(const float* g, int64_t n, float lower, int64_t cap) {
  constexpr uint32_t kAbs = 0x7fffffffu;
  auto bits = [](float x) { return std::bit_cast<uint32_t>(x) & kAbs; };
  const uint32_t low_bits = bits(lower);
  struct Partial {
    uint32_t top = 0;
    double total = 0.0, below = 0.0;
    std::vector<float> tail;
    bool complete = true;
  };
  // Appends the entries above `lower` among the ranges (the caller counted them: `above`), unless that makes
  // more than `cap`: then the tail is given up.
  auto keep_tail = [cap, low_bits](Partial& part, std::initializer_list<const float*> ranges, int64_t len,
                                   int64_t above) {
    if (!part.complete) return;
    const size_t at = part.tail.size();
    if (static_cast<int64_t>(at) + above > cap) {
      part.complete = false;
      part.tail = {};
      return;
    }
    part.tail.resize(at + above + 16);
    float* out = part.tail.data() + at;
    for (const float* x : ranges) out = gather_above(x, len, low_bits, out);
    part.tail.resize(out - part.tail.data());
  };
  Partial r = at::parallel_reduce(
      0, n, kGrain, Partial{},
      [=](int64_t begin, int64_t end, Partial part) {
        const int64_t q = (end - begin) / 4;
        const float* __restrict a = g + begin;
        const float* __restrict b = a + q;
        const float* __restrict c = b + q;
        const float* __restrict d = c + q;
        const uint32_t lb = low_bits;
        uint32_t top = part.top;
        for (int64_t start = 0; start < q; start += kBlock) {
          const int64_t stop = std::min(q, start + kBlock);
          float sum = 0.f, below = 0.f;
          int32_t above = 0;
#pragma omp simd reduction(max : top) reduction(+ : sum, below, above)
          for (int64_t i = start; i < stop; ++i) {
            const uint32_t ua = bits(a[i]), ub = bits(b[i]), uc = bits(c[i]), ud = bits(d[i]);
            const uint32_t x = ua > ub ? ua : ub;
            const uint32_t y = uc > ud ? uc : ud;
            const uint32_t z = x > y ? x : y;
            top = z > top ? z : top;
            const float sa = a[i] * a[i], sb = b[i] * b[i], sc = c[i] * c[i], sd = d[i] * d[i];
            sum += (sa + sb) + (sc + sd);
            below += ((ua > lb ? 0.f : sa) + (ub > lb ? 0.f : sb)) + ((uc > lb ? 0.f : sc) + (ud > lb ? 0.f : sd));
            above += (ua > lb) + (ub > lb) + (uc > lb) + (ud > lb);
          }
          part.total += sum;
          part.below += below;
          if (above > 0) keep_tail(part, {a + start, b + start, c + start, d + start}, stop - start, above);
        }
        for (int64_t i = begin + 4 * q; i < end; ++i) {
          top = std::max(top, bits(g[i]));
          const double sq = static_cast<double>(g[i]) * g[i];
          part.total += sq;
          if (bits(g[i]) > lb) {
            keep_tail(part, {g + i}, 1, 1);
          } else {
            part.below += sq;
          }
        }
        part.top = top;
        return part;
      },
      [cap](Partial x, Partial y) {
        x.top = std::max(x.top, y.top);
        x.total += y.total;
        x.below += y.below;
        x.complete = x.complete && y.complete && static_cast<int64_t>(x.tail.size() + y.tail.size()) <= cap;
        if (x.complete) {
          x.tail.insert(x.tail.end(), y.tail.begin(), y.tail.end());
        } else {
          x.tail = {};
        }
        return x;
      });
  return AbsMax{std::bit_cast<float>(r.top), r.top < 0x7f800000u, r.total, r.below, std::move(r.tail),
                r.complete};
}

using Vec = at::vec::Vectorized<float>;
constexpr int kAllLanes = (1 << Vec::size()) - 1;

// The lanes of a comparison result that are true, one bit each.
inline int true_lanes(const Vec& mask) { return ~mask.zero_mask() & kAllLanes; }

// The step's constants, broadcast once per task rather than per vector.
struct VecHyper {
  Vec beta1, one_minus_beta1, beta2, one_minus_beta2, eps, step, decay, clip, sign;
  Vec zero{0.f}, inf{INFINITY}, sign_bit{-0.f};
  explicit VecHyper(const Hyper& h)
      : beta1(h.beta1), one_minus_beta1(h.one_minus_beta1), beta2(h.beta2), one_minus_beta2(h.one_minus_beta2),
        eps(h.eps), step(h.step), decay(h.decay), clip(h.clip), sign(h.sign) {}
};

// What an update reports: entries clipped, and whether any gradient entry was NaN/Inf (and so skipped).
struct Tally {
  int64_t clipped = 0;
  bool nonfinite = false;
};

Tally operator+(Tally a, Tally b) { return Tally{a.clipped + b.clipped, a.nonfinite || b.nonfinite}; }

// One vector of entries. Spikes are rare and non-finite gradients rarer, so a vector with neither (decided
// by one compare-and-branch) takes the plain Adam update, at the cost of fused AdamW; only the others pay
// for the clip's sqrt and the selects. An entry whose gradient is NaN/Inf keeps p, m and v.
inline void update_vec(float* p, const float* g, float* m, float* v, const VecHyper& h, Tally& tally) {
  const Vec gv = Vec::loadu(g) * h.sign;
  const Vec vv = Vec::loadu(v);
  const Vec g2 = gv * gv;
  const Vec cv = h.clip * vv;  // clip is +inf when clipping is off: cv is then inf, or NaN where v == 0
  // g^2 < clip * v rules out a spike and a NaN/Inf gradient (both compare false); so does g == 0, which
  // covers v == 0. A vector with any other lane takes the exact path below.
  const Vec plain = (g2 < cv) | (g2 == h.zero);
  if (true_lanes(plain) == kAllLanes) [[likely]] {
    const Vec m_new = Vec::loadu(m) * h.beta1 + gv * h.one_minus_beta1;
    const Vec v_new = vv * h.beta2 + g2 * h.one_minus_beta2;
    const Vec p_new = (Vec::loadu(p) - h.step * (m_new / (v_new.sqrt() + h.eps))) * h.decay;
    m_new.store(m);
    v_new.store(v);
    p_new.store(p);
    return;
  }
  // v > 0: a first gradient is never a spike (docs/algorithm.md). The clipped value is sign(g) * sqrt(clip * v).
  const Vec finite = gv.abs() < h.inf;
  const Vec spike = finite & (vv > h.zero) & (g2 > cv);
  const Vec gc = Vec::blendv(gv, cv.sqrt() | (gv & h.sign_bit), spike);
  const Vec m_old = Vec::loadu(m), p_old = Vec::loadu(p);
  const Vec m_new = m_old * h.beta1 + gc * h.one_minus_beta1;
  const Vec v_new = vv * h.beta2 + gc * gc * h.one_minus_beta2;
  const Vec p_new = (p_old - h.step * (m_new / (v_new.sqrt() + h.eps))) * h.decay;
  Vec::blendv(m_old, m_new, finite).store(m);
  Vec::blendv(vv, v_new, finite).store(v);
  Vec::blendv(p_old, p_new, finite).store(p);
  tally.clipped += __builtin_popcount(true_lanes(spike));
  tally.nonfinite |= true_lanes(finite) != kAllLanes;
}

#if defined(__AVX512F__)
// Whole vectors of 16 entries, then one masked vector for the rest (kTail), as update_span's tail and the
// 8-bit blocks run: masked loads and stores on every vector measured about 7% slower there. `lanes`: the
// lanes that hold entries.
inline __mmask16 tail_lanes(int64_t left) { return static_cast<__mmask16>((1u << left) - 1); }

template <bool kTail>
inline __m512 load16(const float* x, __mmask16 lanes) {
  if constexpr (kTail) return _mm512_maskz_loadu_ps(lanes, x);
  return _mm512_loadu_ps(x);
}

template <bool kTail>
inline void store16(float* x, __mmask16 lanes, __m512 v) {
  if constexpr (kTail) {
    _mm512_mask_storeu_ps(x, lanes, v);
  } else {
    _mm512_storeu_ps(x, v);
  }
}

template <bool kTail>
inline __m128i load_codes(const void* x, __mmask16 lanes) {
  if constexpr (kTail) return _mm_maskz_loadu_epi8(lanes, x);
  return _mm_loadu_si128(static_cast<const __m128i*>(x));
}

template <bool kTail>
inline void store_codes(void* x, __mmask16 lanes, __m128i codes) {
  if constexpr (kTail) {
    _mm_mask_storeu_epi8(x, lanes, codes);
  } else {
    _mm_storeu_si128(static_cast<__m128i*>(x), codes);
  }
}

// f(i, std::false_type) for each whole vector of 16 among n entries, then f(i, std::true_type) for the rest.
template <typename F>
inline void for_vectors(int64_t n, F&& f) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) f(i, std::false_type{});
  if (i < n) f(i, std::true_type{});
}

#endif

// n consecutive entries: whole vectors, then the rest through the same code from zero-padded copies
// (g = v = 0 is finite and never a spike, so the padding adds nothing to the tally): with AVX-512 by masked
// vector loads and stores, since the sparse step ends a span every kStretch entries.
void update_span(float* p, const float* g, float* m, float* v, int64_t n, const VecHyper& h, Tally& tally) {
  constexpr int64_t kLanes = Vec::size();
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) update_vec(p + i, g + i, m + i, v + i, h, tally);
  const int64_t rest = n - i;
  if (rest == 0) return;
#if defined(__AVX512F__)
  // Byte copies into the buffers stall the vector loads that read them back (about a tenth of the sparse
  // step's time).
  static_assert(kLanes == 16);
  const __mmask16 lanes = tail_lanes(rest);
  alignas(64) float pb[16], gb[16], mb[16], vb[16];
  _mm512_store_ps(pb, load16<true>(p + i, lanes));
  _mm512_store_ps(gb, load16<true>(g + i, lanes));
  _mm512_store_ps(mb, load16<true>(m + i, lanes));
  _mm512_store_ps(vb, load16<true>(v + i, lanes));
  update_vec(pb, gb, mb, vb, h, tally);
  store16<true>(p + i, lanes, _mm512_load_ps(pb));
  store16<true>(m + i, lanes, _mm512_load_ps(mb));
  store16<true>(v + i, lanes, _mm512_load_ps(vb));
#else
  float pb[kLanes] = {}, gb[kLanes] = {}, mb[kLanes] = {}, vb[kLanes] = {};
  std::copy_n(p + i, rest, pb);
  std::copy_n(g + i, rest, gb);
  std::copy_n(m + i, rest, mb);
  std::copy_n(v + i, rest, vb);
  update_vec(pb, gb, mb, vb, h, tally);
  std::copy_n(pb, rest, p + i);
  std::copy_n(mb, rest, m + i);
  std::copy_n(vb, rest, v + i);
#endif
}

Tally dense_update(float* p, const float* g, float* m, float* v, int64_t n, const Hyper& h) {
  return at::parallel_reduce(
      0, n, kGrain, Tally{},
      [=](int64_t begin, int64_t end, Tally ident) {
        const VecHyper vh(h);
        update_span(p + begin, g + begin, m + begin, v + begin, end - begin, vh, ident);
        return ident;
      },
      std::plus<Tally>());
}

// Sparse momentum: m and v hold the kept entries only, in ascending order of flat index. Which entries are
// kept comes as a bitmap (spam_opt/state/kept.py: bit j % 32 of word j / 32, built once per draw by
// kept_bits_of) and starts[b], the number of kept entries before block b of 2**16 entries (kBlockBits).
// Adam moves the kept entries and the decoupled decay shrinks every entry. A kept entry whose gradient is
// NaN/Inf keeps p, m and v; the entries left out never read their gradient. Defined with the 8-bit kernels,
// whose gather and scatter it shares.
Tally sparse_update(float* p, const float* g, float* m, float* v, const uint32_t* words, const int64_t* starts,
                    int64_t k, int64_t numel, const Hyper& h);

// Advance a parameter's bias-correction count n and return the step's constants for it.
Hyper count_step(const at::Tensor& count_tensor, double lr_w, double beta1, double beta2, double eps, double decay,
                 double clip, double sign) {
  float* count = count_tensor.data_ptr<float>();
  const double steps = static_cast<double>(*count) + 1.0;
  *count = static_cast<float>(steps);
  const double bias = std::sqrt(1.0 - std::pow(beta2, steps)) / (1.0 - std::pow(beta1, steps));
  return Hyper{static_cast<float>(beta1), static_cast<float>(1.0 - beta1), static_cast<float>(beta2),
               static_cast<float>(1.0 - beta2), static_cast<float>(eps), static_cast<float>(lr_w * bias),
               static_cast<float>(decay), static_cast<float>(clip), static_cast<float>(sign)};
}

// `op` names the op in the message, so that an error says which of the ops was given what.
void check_float32(const char* op, const at::Tensor& t, const char* what, int64_t i) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat && t.is_contiguous(), op, ": ", what, "[",
              i, "] must be a contiguous float32 CPU tensor, got ", t.scalar_type(), " on ", t.device(),
              t.is_contiguous() ? "" : " (not contiguous)");
}

// Whether `bits` is a bitmap of `numel` entries (spam_opt/state/kept.py: int32 words, one word of padding).
bool is_bitmap_of(const at::Tensor& bits, int64_t numel) {
  return bits.scalar_type() == at::kInt && bits.is_contiguous() && bits.numel() == (numel + 31) / 32 + 1;
}

// Parameter i, its gradient and its moments: what both optimizer ops read and write.
void check_param_tensors(const char* op, int64_t i, const at::Tensor& p, const at::Tensor& g, const at::Tensor& m,
                         const at::Tensor& v) {
  check_float32(op, p, "params", i);
  check_float32(op, g, "grads", i);
  check_float32(op, m, "exp_avgs", i);
  check_float32(op, v, "exp_avg_sqs", i);
}

// What every optimizer op starts with: its lists checked for one entry per parameter, its per-parameter
// outputs (entries clipped: int64 [N]; a NaN/Inf gradient skipped: bool [N]), and whether the gate is open.
struct StepOutputs {
  at::Tensor clipped, nonfinite;
  bool open;
  StepOutputs(const char* op, int64_t n, std::initializer_list<size_t> list_sizes,
              const std::optional<at::Tensor>& gate)
      : clipped(at::zeros({n}, at::kLong)), nonfinite(at::zeros({n}, at::kBool)),
        open(!gate.has_value() || gate->item<bool>()) {
    for (size_t size : list_sizes) {
      TORCH_CHECK(static_cast<int64_t>(size) == n, op, ": all lists need one entry per parameter");
    }
  }
};

// Returns (clipped: int64 [N], nonfinite: bool [N]).
std::tuple<at::Tensor, at::Tensor> spam_step(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                                             at::TensorList exp_avg_sqs, at::TensorList counts,
                                             const c10::List<std::optional<at::Tensor>>& kept_bits,
                                             const c10::List<std::optional<at::Tensor>>& kept_starts,
                                             const std::optional<at::Tensor>& gate, double lr_w, double beta1,
                                             double beta2, double eps, double decay, double clip, double sign) {
  const int64_t n = static_cast<int64_t>(params.size());
  const StepOutputs out("spam_step_", n, {grads.size(), exp_avgs.size(), exp_avg_sqs.size(), counts.size(),
                                          kept_bits.size(), kept_starts.size()}, gate);
  auto* clipped_out = out.clipped.data_ptr<int64_t>();
  auto* nonfinite_out = out.nonfinite.data_ptr<bool>();
  for (int64_t i = 0; i < n; ++i) {
    const at::Tensor& p = params[i];
    const at::Tensor& g = grads[i];
    check_param_tensors("spam_step_", i, p, g, exp_avgs[i], exp_avg_sqs[i]);
    TORCH_CHECK(g.numel() == p.numel(), "spam_step_: grads[", i, "] has ", g.numel(), " entries, params[", i,
                "] ", p.numel());
    if (!out.open) continue;  // a closed gate: nothing moves, nothing is read
    const Hyper h = count_step(counts[i], lr_w, beta1, beta2, eps, decay, clip, sign);
    float* pp = p.data_ptr<float>();
    const float* gp = g.const_data_ptr<float>();
    float* mp = exp_avgs[i].data_ptr<float>();
    float* vp = exp_avg_sqs[i].data_ptr<float>();
    const std::optional<at::Tensor> bits = kept_bits.get(i);
    Tally tally;
    if (!bits.has_value()) {
      TORCH_CHECK(exp_avgs[i].numel() == p.numel() && exp_avg_sqs[i].numel() == p.numel(),
                  "spam_step_: the moments of params[", i, "] do not match its size");
      tally = dense_update(pp, gp, mp, vp, p.numel(), h);
    } else {
      const std::optional<at::Tensor> starts = kept_starts.get(i);
      const int64_t k = exp_avgs[i].numel();
      // starts' total bounds every write to m and v (a block's kept entries start at starts[b]).
      TORCH_CHECK(starts.has_value() && is_bitmap_of(*bits, p.numel()) && starts->scalar_type() == at::kLong &&
                      starts->is_contiguous() && starts->numel() == (p.numel() >> kBlockBits) + 2 &&
                      starts->const_data_ptr<int64_t>()[starts->numel() - 1] == k && exp_avg_sqs[i].numel() == k,
                  "spam_step_: the kept entries and moments of params[", i, "] do not match");
      tally = sparse_update(pp, gp, mp, vp, reinterpret_cast<const uint32_t*>(bits->const_data_ptr<int32_t>()),
                            starts->const_data_ptr<int64_t>(), k, p.numel(), h);
    }
    clipped_out[i] = tally.clipped;
    nonfinite_out[i] = tally.nonfinite;
  }
  return {out.clipped, out.nonfinite};
}

// ---- SPAM with 8-bit moments (spam_opt/state/quantized.py: the blocks, the maps and the layout) ----------
//
// With AVX-512, update_block8_avx512: two passes, the first deciding per vector (below). Otherwise, per block
// of up to kQBlock entries of one row, three loops over L1-resident buffers,
// each vectorised by the compiler: (1) dequantize m̂ and v̂ from the codes, and find whether any entry needs
// the exact path (a spike,
// a NaN/Inf gradient, or v̂ = 0 with g != 0, the same test as the float32 kernel's per vector); (2) update the
// moments and p as the float32 kernel does, keeping s = sqrt(v) and r = m / (s + eps) (the update's own sqrt
// and division) and their block maxima; (3) requantize r and s against the new maxima. Most blocks take the
// plain update in (2); the exact one, with the clip, its selects and its counts, costs about 40% more.

constexpr int64_t kQBlock = 256;  // spam_opt.state.quantized.BLOCK
// Codes of r are linear in r (127 steps a side); codes of s are linear in sqrt(s) (255 steps, 255^2 = 65025).
constexpr float kRLevels = 127.f, kSLevels = 65025.f;

// levels / scale, and 0 for an all-zero block (QuantizedMoments: _inverse).
inline float inverse(float scale, float levels) { return scale > 0.f ? levels / scale : 0.f; }

// A block's codes and scales from its new r (rb) and s (sb), whose largest |r| and s are r_max and s_max.
inline void requantize(const float* __restrict rb, const float* __restrict sb, float r_max, float s_max,
                       int8_t* __restrict mc, uint8_t* __restrict vc, float* r_scale, float* s_scale, int64_t n) {
  *r_scale = r_max;
  *s_scale = s_max;
  const float r_inv = inverse(r_max, kRLevels), s_inv = inverse(s_max, kSLevels);
  // nearbyint rounds ties to even (the default rounding mode), as torch.round does. |r| <= r_max and s <= s_max,
  // so the codes stay within ±127 and 255 (r · r_inv is at most 127 · (1 + 2^-22)). GCC vectorises this loop
  // without an `omp simd` pragma, and not with one.
  for (int64_t i = 0; i < n; ++i) {
    float code_s = std::nearbyint(std::sqrt(sb[i] * s_inv));
    code_s = sb[i] > 0.f ? std::max(code_s, 1.f) : code_s;  // only 0 rounds to code 0
    mc[i] = static_cast<int8_t>(static_cast<int32_t>(std::nearbyint(rb[i] * r_inv)));
    vc[i] = static_cast<uint8_t>(static_cast<int32_t>(code_s));
  }
}

#if defined(__AVX512F__)
// The stored m̂ and v̂ of 16 entries from their codes: s = code_s² · s_step is sqrt(v̂) (the code is linear in
// v̂'s 4th root), m̂ = code_m · r_step · (s + eps) (the code is linear in m̂ / (sqrt(v̂) + eps)).
struct Moments16 {
  __m512 s, m, v;
};
// The lanes past `lanes` read as code 0.
template <bool kTail>
inline Moments16 dequantize16(const int8_t* __restrict mc, const uint8_t* __restrict vc, __m512 r_step,
                              __m512 s_step, __m512 eps, __mmask16 lanes) {
  const __m512 code_s = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(load_codes<kTail>(vc, lanes)));
  const __m512 code_m = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(load_codes<kTail>(mc, lanes)));
  const __m512 s = _mm512_mul_ps(_mm512_mul_ps(code_s, code_s), s_step);
  return {s, _mm512_mul_ps(_mm512_mul_ps(code_m, r_step), _mm512_add_ps(s, eps)), _mm512_mul_ps(s, s)};
}

// requantize for a block of n entries (rb and sb hold whole vectors of 16), whose largest |r| and s are the
// lanes' maxima of r_max and s_max: one rounding conversion and a truncating narrow per code (what nearbyint
// and the integer casts do).
inline void requantize_avx512(const float* __restrict rb, const float* __restrict sb, __m512 r_max, __m512 s_max,
                              int8_t* __restrict mc, uint8_t* __restrict vc, float* r_scale, float* s_scale,
                              int64_t n) {
  const float rm = _mm512_reduce_max_ps(r_max), sm = _mm512_reduce_max_ps(s_max);
  *r_scale = rm;
  *s_scale = sm;
  const __m512 r_inv = _mm512_set1_ps(inverse(rm, kRLevels)), s_inv = _mm512_set1_ps(inverse(sm, kSLevels));
  const __m512i one = _mm512_set1_epi32(1);
  const __m512 zero = _mm512_setzero_ps();
  for_vectors(n, [=](int64_t i, auto tail) {
    constexpr bool kTail = decltype(tail)::value;
    const __mmask16 lanes = kTail ? tail_lanes(n - i) : __mmask16(0xffff);
    const __m512 s = _mm512_load_ps(sb + i);
    // Round to nearest even under the default rounding mode, as nearbyint; only 0 rounds to code 0.
    __m512i code_s = _mm512_cvtps_epi32(_mm512_sqrt_ps(_mm512_mul_ps(s, s_inv)));
    code_s = _mm512_mask_max_epi32(code_s, _mm512_cmp_ps_mask(s, zero, _CMP_GT_OQ), code_s, one);
    const __m512i code_m = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_load_ps(rb + i), r_inv));
    store_codes<kTail>(mc + i, lanes, _mm512_cvtepi32_epi8(code_m));
    store_codes<kTail>(vc + i, lanes, _mm512_cvtepi32_epi8(code_s));
  });
}

// update_block8 written out with AVX-512, 16 entries per vector (the last one masked): one pass that dequantizes,
// updates and keeps r, s and their maxima, deciding per vector whether the exact path is needed (the plain
// and the exact arithmetic agree on every lane the plain test passes, so per vector and per block give the
// same result), then one pass that requantizes with a single rounding conversion and a truncating narrow
// (what nearbyint and the integer casts do). Every operation is the one the scalar loops make, in order,
// but for the multiplications by a sign of +1 and a decay of 1 (the defaults), left out where kUnit says
// both are 1: x * 1 is x exactly.
template <bool kUnit>
void update_block8_avx512(float* __restrict p, const float* __restrict g, int8_t* __restrict mc,
                          uint8_t* __restrict vc, float* r_scale, float* s_scale, int64_t n, const Hyper& h,
                          Tally& tally) {
  alignas(64) float rb[kQBlock];
  alignas(64) float sb[kQBlock];
  const __m512 r_step = _mm512_set1_ps(*r_scale / kRLevels), s_step = _mm512_set1_ps(*s_scale / kSLevels);
  const __m512 beta1 = _mm512_set1_ps(h.beta1), one_minus_beta1 = _mm512_set1_ps(h.one_minus_beta1);
  const __m512 beta2 = _mm512_set1_ps(h.beta2), one_minus_beta2 = _mm512_set1_ps(h.one_minus_beta2);
  const __m512 eps = _mm512_set1_ps(h.eps), step = _mm512_set1_ps(h.step), decay = _mm512_set1_ps(h.decay);
  const __m512 clip = _mm512_set1_ps(h.clip), sign = _mm512_set1_ps(h.sign), zero = _mm512_setzero_ps();
  const __m512 inf = _mm512_set1_ps(INFINITY);
  const __m512i abs_mask = _mm512_set1_epi32(0x7fffffff), sign_mask = _mm512_set1_epi32(INT32_MIN);
  auto shrink = [&](__m512 x) { return kUnit ? x : _mm512_mul_ps(x, decay); };
  __m512 r_max = zero, s_max = zero;
  int64_t clipped = 0;
  bool bad = false;
  for_vectors(n, [=, &rb, &sb, &r_max, &s_max, &clipped, &bad](int64_t i, auto tail) {
    // Lanes past n read as zeros: g = 0 is a plain entry whose r and s are 0, so the maxima are unchanged.
    constexpr bool kTail = decltype(tail)::value;
    const __mmask16 lanes = kTail ? tail_lanes(n - i) : __mmask16(0xffff);
    const auto [s_old, m, v] = dequantize16<kTail>(mc + i, vc + i, r_step, s_step, eps, lanes);
    const __m512 graw = load16<kTail>(g + i, lanes);
    const __m512 g2raw = _mm512_mul_ps(graw, graw);
    const __m512 cv = _mm512_mul_ps(clip, v);
    // g^2 < clip * v rules out a spike and a NaN/Inf gradient (both compare false); so does g == 0.
    const __mmask16 plain =
        _mm512_cmp_ps_mask(g2raw, cv, _CMP_LT_OQ) | _mm512_cmp_ps_mask(g2raw, zero, _CMP_EQ_OQ);
    const __m512 gi = kUnit ? graw : _mm512_mul_ps(graw, sign);
    const __m512 p_old = load16<kTail>(p + i, lanes);
    __m512 s, r, p_new;
    if (plain == 0xffff) [[likely]] {
      const __m512 m_new = _mm512_add_ps(_mm512_mul_ps(m, beta1), _mm512_mul_ps(gi, one_minus_beta1));
      // (g * sign)^2 is g^2 exactly: sign is +-1.
      const __m512 v_new = _mm512_add_ps(_mm512_mul_ps(v, beta2), _mm512_mul_ps(g2raw, one_minus_beta2));
      s = _mm512_sqrt_ps(v_new);
      r = _mm512_div_ps(m_new, _mm512_add_ps(s, eps));
      p_new = shrink(_mm512_sub_ps(p_old, _mm512_mul_ps(step, r)));
    } else {
      const __m512 g2 = _mm512_mul_ps(gi, gi);
      const __m512 abs_g = _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(gi), abs_mask));
      const __mmask16 finite = _mm512_cmp_ps_mask(abs_g, inf, _CMP_LT_OQ);
      const __mmask16 spike = finite & _mm512_cmp_ps_mask(v, zero, _CMP_GT_OQ) &
                              _mm512_cmp_ps_mask(g2, _mm512_mul_ps(clip, v), _CMP_GT_OQ);
      const __m512 bound = _mm512_castsi512_ps(
          _mm512_or_si512(_mm512_castps_si512(_mm512_sqrt_ps(_mm512_mul_ps(clip, v))),
                          _mm512_and_si512(_mm512_castps_si512(gi), sign_mask)));
      const __m512 gc = _mm512_mask_blend_ps(spike, gi, bound);
      const __m512 m_new = _mm512_mask_blend_ps(
          finite, m, _mm512_add_ps(_mm512_mul_ps(m, beta1), _mm512_mul_ps(gc, one_minus_beta1)));
      const __m512 v_new = _mm512_mask_blend_ps(
          finite, v, _mm512_add_ps(_mm512_mul_ps(v, beta2), _mm512_mul_ps(_mm512_mul_ps(gc, gc), one_minus_beta2)));
      s = _mm512_sqrt_ps(v_new);
      r = _mm512_div_ps(m_new, _mm512_add_ps(s, eps));
      p_new = _mm512_mask_blend_ps(finite, p_old, shrink(_mm512_sub_ps(p_old, _mm512_mul_ps(step, r))));
      clipped += std::popcount(static_cast<uint32_t>(spike));
      bad |= finite != 0xffff;
    }
    store16<kTail>(p + i, lanes, p_new);
    _mm512_store_ps(rb + i, r);
    _mm512_store_ps(sb + i, s);
    r_max = _mm512_max_ps(r_max, _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(r), abs_mask)));
    s_max = _mm512_max_ps(s_max, s);
  });
  tally.clipped += clipped;
  tally.nonfinite |= bad;
  requantize_avx512(rb, sb, r_max, s_max, mc, vc, r_scale, s_scale, n);
}
#endif

// One block of n <= kQBlock stored entries whose p and g are at p, g (contiguous, or gathered by the caller).
void update_block8(float* __restrict p, const float* __restrict g, int8_t* __restrict mc, uint8_t* __restrict vc,
                   float* r_scale, float* s_scale, int64_t n, const Hyper& h, Tally& tally) {
#if defined(__AVX512F__)
  if (h.sign == 1.f && h.decay == 1.f) return update_block8_avx512<true>(p, g, mc, vc, r_scale, s_scale, n, h, tally);
  return update_block8_avx512<false>(p, g, mc, vc, r_scale, s_scale, n, h, tally);
#else
  alignas(64) float mb[kQBlock];  // m̂, then r
  alignas(64) float vb[kQBlock];  // v̂, then s
  const float r_step = *r_scale / kRLevels, s_step = *s_scale / kSLevels;
  int32_t exact = 0;
#pragma omp simd reduction(+ : exact)
  for (int64_t i = 0; i < n; ++i) {
    const float code_s = static_cast<float>(vc[i]);
    const float s_old = code_s * code_s * s_step;
    const float v = s_old * s_old;
    vb[i] = v;
    mb[i] = static_cast<float>(mc[i]) * r_step * (s_old + h.eps);
    // g^2 < clip * v rules out a spike and a NaN/Inf gradient (both compare false); so does g == 0.
    const float g2 = g[i] * g[i];
    exact += !((g2 < h.clip * v) | (g2 == 0.f));
  }
  float r_max = 0.f, s_max = 0.f;
  if (exact == 0) [[likely]] {
#pragma omp simd reduction(max : r_max, s_max)
    for (int64_t i = 0; i < n; ++i) {
      const float gi = g[i] * h.sign;
      const float m_new = mb[i] * h.beta1 + gi * h.one_minus_beta1;
      const float v_new = vb[i] * h.beta2 + gi * gi * h.one_minus_beta2;
      const float s = std::sqrt(v_new);
      const float r = m_new / (s + h.eps);
      p[i] = (p[i] - h.step * r) * h.decay;
      mb[i] = r;
      vb[i] = s;
      r_max = std::max(r_max, std::fabs(r));
      s_max = std::max(s_max, s);
    }
  } else {
    int32_t clipped = 0, bad = 0;
#pragma omp simd reduction(max : r_max, s_max) reduction(+ : clipped, bad)
    for (int64_t i = 0; i < n; ++i) {
      const float gi = g[i] * h.sign;
      const float m = mb[i], v = vb[i];
      const float g2 = gi * gi;
      const bool finite = std::fabs(gi) < INFINITY;
      // v > 0: a first gradient is never a spike (docs/algorithm.md); clip is +inf when clipping is off.
      const bool spike = finite & (v > 0.f) & (g2 > h.clip * v);
      const float gc = spike ? std::copysign(std::sqrt(h.clip * v), gi) : gi;
      // An entry with a NaN/Inf gradient keeps m̂, v̂ (requantized with its block below) and p.
      const float m_new = finite ? m * h.beta1 + gc * h.one_minus_beta1 : m;
      const float v_new = finite ? v * h.beta2 + gc * gc * h.one_minus_beta2 : v;
      const float s = std::sqrt(v_new);
      const float r = m_new / (s + h.eps);
      p[i] = finite ? (p[i] - h.step * r) * h.decay : p[i];
      mb[i] = r;
      vb[i] = s;
      r_max = std::max(r_max, std::fabs(r));
      s_max = std::max(s_max, s);
      clipped += spike;
      bad += !finite;
    }
    tally.clipped += clipped;
    tally.nonfinite |= bad > 0;
  }
  requantize(mb, vb, r_max, s_max, mc, vc, r_scale, s_scale, n);
#endif
}

// 32 bits of a bitmap from bit `pos` on (the bitmap carries one word of padding).
inline uint32_t bits_at(const uint32_t* words, int64_t pos) {
  const uint64_t pair = static_cast<uint64_t>(words[pos >> 5]) | (static_cast<uint64_t>(words[(pos >> 5) + 1]) << 32);
  return static_cast<uint32_t>(pair >> (pos & 31));
}

inline uint32_t low_bits(int64_t n) { return n >= 32 ? ~0u : (1u << n) - 1u; }

// Kept entries among local entries [start, start + n).
inline int64_t kept_in(const uint32_t* words, int64_t start, int64_t n) {
  int64_t count = 0;
  for (int64_t k = 0; k < n; k += 32) count += std::popcount(bits_at(words, start + k) & low_bits(n - k));
  return count;
}

#if defined(__AVX2__)
// For each byte of kept bits, the lanes of its set bits, first: a permutation that packs those lanes of a vector
// of 8 to its front (AVX2 has no compress instruction).
struct CompressTable {
  int32_t lanes[256][8];
  constexpr CompressTable() : lanes{} {
    for (int bits = 0; bits < 256; ++bits) {
      int n = 0;
      for (int j = 0; j < 8; ++j) {
        if ((bits >> j) & 1) lanes[bits][n++] = j;
      }
    }
  }
};
constexpr CompressTable kCompress{};
#endif

// The p and g of the kept entries among local entries [first, first + len) into pk, gk (ascending), with
// their offsets from `first` in ix (but for AVX-512's, which scatter_kept does not need); returns how many. With AVX-512 16 entries per step, with AVX2 8 through
// kCompress, with no branch per entry (a branch per kept entry mispredicts about once per word of bits).
int64_t gather_kept(const uint32_t* kept, int64_t first, int64_t len, const float* p, const float* g, float* pk,
                    float* gk, int32_t* ix) {
  int64_t n = 0, k = 0;
#if defined(__AVX512F__)
  // 16 entries per step through AVX-512's compress (into a register: its store form is slow on Zen 4). No
  // offsets: scatter_kept finds the entries again from the bits.
  for (; k + 16 <= len; k += 16) {
    const __mmask16 bits = static_cast<__mmask16>(bits_at(kept, first + k));
    _mm512_storeu_ps(pk + n, _mm512_maskz_compress_ps(bits, _mm512_loadu_ps(p + k)));
    _mm512_storeu_ps(gk + n, _mm512_maskz_compress_ps(bits, _mm512_loadu_ps(g + k)));
    n += std::popcount(static_cast<uint32_t>(bits));
  }
#endif
#if defined(__AVX2__)
  for (; k + 8 <= len; k += 8) {
    const uint32_t bits = bits_at(kept, first + k) & 0xffu;
    const __m256i lanes = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kCompress.lanes[bits]));
    _mm256_storeu_ps(pk + n, _mm256_permutevar8x32_ps(_mm256_loadu_ps(p + k), lanes));
    _mm256_storeu_ps(gk + n, _mm256_permutevar8x32_ps(_mm256_loadu_ps(g + k), lanes));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(ix + n),
                        _mm256_add_epi32(lanes, _mm256_set1_epi32(static_cast<int32_t>(k))));
    n += std::popcount(bits);
  }
#endif
  for (; k < len; ++k) {
    if (bits_at(kept, first + k) & 1u) {
      ix[n] = static_cast<int32_t>(k);
      pk[n] = p[k];
      gk[n] = g[k];
      ++n;
    }
  }
  return n;
}

// The inverse of gather_kept, with the decay: the kept entries of p among local entries [first, first + len)
// take pk's n values, the others are multiplied by `decay`. With AVX-512 one pass of 16 entries per step (an
// expand of pk's next values into the kept lanes, blended over the decayed p); otherwise the decay, then a
// store per kept entry at its offset in ix.
void scatter_kept(const uint32_t* kept, int64_t first, int64_t len, float* p, const float* pk, const int32_t* ix,
                  int64_t n, float decay) {
  const bool decays = decay != 1.f;
#if defined(__AVX512F__)
  int64_t used = 0, k = 0;
  const __m512 d = _mm512_set1_ps(decay);
  for (; k + 16 <= len; k += 16) {
    const __mmask16 bits = static_cast<__mmask16>(bits_at(kept, first + k));
    const __m512 values = _mm512_maskz_expand_ps(bits, _mm512_loadu_ps(pk + used));
    if (decays) {
      _mm512_storeu_ps(p + k, _mm512_mask_blend_ps(bits, _mm512_mul_ps(_mm512_loadu_ps(p + k), d), values));
    } else {
      _mm512_mask_storeu_ps(p + k, bits, values);
    }
    used += std::popcount(static_cast<uint32_t>(bits));
  }
  for (; k < len; ++k) {
    if (bits_at(kept, first + k) & 1u) {
      p[k] = pk[used++];
    } else if (decays) {
      p[k] *= decay;
    }
  }
  (void)ix;
  (void)n;
#else
  if (decays) {
    float* __restrict pr = p;
#pragma omp simd
    for (int64_t q = 0; q < len; ++q) pr[q] *= decay;
  }
  for (int64_t j = 0; j < n; ++j) p[ix[j]] = pk[j];
#endif
}

// sparse_update (declared above), per index block of 2**16 entries: per stretch of kStretch entries,
// gather_kept packs the kept entries' p and g, update_span updates them with their m and v (stored in the same
// ascending order), and scatter_kept puts them back over the decayed stretch: vector compress and expand
// rather than a load and a store at an index per kept entry. The bitmap is built once per draw: built from
// the indices at every step, it cost more than the rest of the step (a chain of read-modify-writes per word).
constexpr int64_t kStretch = 1024;  // 256 and 4096 measured slower

Tally sparse_update(float* p, const float* g, float* m, float* v, const uint32_t* words, const int64_t* starts,
                    int64_t k, int64_t numel, const Hyper& h) {
  const bool decays = h.decay != 1.f;
  auto decay_range = [=](float* __restrict pr, int64_t len) {
    const float d = h.decay;
#pragma omp simd
    for (int64_t q = 0; q < len; ++q) pr[q] *= d;
  };
  if (k == 0) {  // nothing kept: the decay alone
    if (decays) at::parallel_for(0, numel, kGrain, [=](int64_t lo, int64_t hi) { decay_range(p + lo, hi - lo); });
    return Tally{};
  }
  constexpr int64_t kEntries = int64_t(1) << kBlockBits;
  return at::parallel_reduce(
      0, (numel + kEntries - 1) / kEntries, 1, Tally{},
      [=](int64_t b0, int64_t b1, Tally tally) {
        const VecHyper vh(h);
        alignas(64) float pk[kStretch + 16];
        alignas(64) float gk[kStretch + 16];
        alignas(64) int32_t ix[kStretch + 16];
        for (int64_t b = b0; b < b1; ++b) {
          const int64_t lo = b * kEntries, len = std::min(numel, lo + kEntries) - lo;
          int64_t at = starts[b];
          if (at == starts[b + 1]) {  // nothing kept here: the decay alone
            if (decays) decay_range(p + lo, len);
            continue;
          }
          for (int64_t first = lo; first < lo + len; first += kStretch) {
            const int64_t sl = std::min(kStretch, lo + len - first);
            const int64_t n = gather_kept(words, first, sl, p + first, g + first, pk, gk, ix);
            update_span(pk, gk, m + at, v + at, n, vh, tally);
            scatter_kept(words, first, sl, p + first, pk, ix, n, h.decay);
            at += n;
          }
        }
        return tally;
      },
      std::plus<Tally>());
}

struct Param8 {
  float* p;
  const float* g;
  int8_t* mc;
  uint8_t* vc;
  float* r_scale;
  float* s_scale;
  const uint32_t* kept;  // nullptr: dense
  int64_t numel, row_length, stored;
};

Tally update_param8(const Param8& a, const Hyper& hyper) {
  const int64_t per_row = (a.row_length + kQBlock - 1) / kQBlock;
  const int64_t blocks = a.numel / a.row_length * per_row;
  auto span = [&](int64_t b) {  // first local entry and length of block b
    const int64_t row = b / per_row, seg = b % per_row;
    return std::pair<int64_t, int64_t>{row * a.row_length + seg * kQBlock,
                                       std::min(kQBlock, a.row_length - seg * kQBlock)};
  };
  // Sparse: where each block's codes start (a popcount of the bitmap, 1 bit per entry).
  std::vector<int64_t> starts;
  if (a.kept != nullptr) {
    starts.assign(blocks + 1, 0);
    at::parallel_for(0, blocks, kGrain / kQBlock, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        const auto [first, len] = span(b);
        starts[b + 1] = kept_in(a.kept, first, len);
      }
    });
    for (int64_t b = 0; b < blocks; ++b) starts[b + 1] += starts[b];
    TORCH_CHECK(starts[blocks] == a.stored, "spam_step8_: ", a.stored, " codes for ", starts[blocks],
                " kept entries");
  }
  return at::parallel_reduce(
      0, blocks, kGrain / kQBlock, Tally{},
      [&](int64_t b0, int64_t b1, Tally tally) {
        alignas(64) float pk[kQBlock + 16];  // gather_kept writes whole vectors of up to 16
        alignas(64) float gk[kQBlock + 16];
        alignas(64) int32_t ix[kQBlock + 16];
        for (int64_t b = b0; b < b1; ++b) {
          const auto [first, len] = span(b);
          if (a.kept == nullptr) {
            update_block8(a.p + first, a.g + first, a.mc + first, a.vc + first, a.r_scale + b, a.s_scale + b, len,
                          hyper, tally);
            continue;
          }
          // Gather the kept entries' p and g, update them with their codes in place, decay the whole block,
          // scatter them back.
          const int64_t n = gather_kept(a.kept, first, len, a.p + first, a.g + first, pk, gk, ix);
          update_block8(pk, gk, a.mc + starts[b], a.vc + starts[b], a.r_scale + b, a.s_scale + b, n, hyper, tally);
          scatter_kept(a.kept, first, len, a.p + first, pk, ix, n, hyper.decay);
        }
        return tally;
      },
      std::plus<Tally>());
}

// Parameter i, its gradient and its 8-bit moments (codes, block scales; rows of `row` entries).
void check_codes(const char* op, int64_t i, const at::Tensor& p, const at::Tensor& g, const at::Tensor& mc,
                 const at::Tensor& vc, const at::Tensor& r_scale, const at::Tensor& s_scale, int64_t row) {
  check_float32(op, p, "params", i);
  check_float32(op, g, "grads", i);
  check_float32(op, r_scale, "exp_avg_scales", i);
  check_float32(op, s_scale, "exp_avg_sq_scales", i);
  const int64_t numel = p.numel();
  TORCH_CHECK(g.numel() == numel && row > 0 && numel % row == 0 &&
                  r_scale.numel() == numel / row * ((row + kQBlock - 1) / kQBlock) &&
                  s_scale.numel() == r_scale.numel(),
              op, ": the gradient, row length or scales of params[", i, "] do not match it");
  TORCH_CHECK(mc.scalar_type() == at::kChar && vc.scalar_type() == at::kByte && mc.is_contiguous() &&
                  vc.is_contiguous() && vc.numel() == mc.numel(),
              op, ": exp_avgs[", i, "] must be contiguous int8 codes and exp_avg_sqs[", i,
              "] uint8 codes of the same size");
}

// Returns (clipped: int64 [N], nonfinite: bool [N]).
std::tuple<at::Tensor, at::Tensor> spam_step8(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                                              at::TensorList exp_avg_sqs, at::TensorList exp_avg_scales,
                                              at::TensorList exp_avg_sq_scales, at::TensorList counts,
                                              const c10::List<std::optional<at::Tensor>>& kept_bits,
                                              at::IntArrayRef row_lengths, const std::optional<at::Tensor>& gate,
                                              double lr_w, double beta1, double beta2, double eps, double decay,
                                              double clip, double sign) {
  const int64_t n = static_cast<int64_t>(params.size());
  const StepOutputs out("spam_step8_", n, {grads.size(), exp_avgs.size(), exp_avg_sqs.size(),
                                           exp_avg_scales.size(), exp_avg_sq_scales.size(), counts.size(),
                                           kept_bits.size(), row_lengths.size()}, gate);
  for (int64_t i = 0; i < n; ++i) {
    const at::Tensor& p = params[i];
    const at::Tensor& g = grads[i];
    check_codes("spam_step8_", i, p, g, exp_avgs[i], exp_avg_sqs[i], exp_avg_scales[i], exp_avg_sq_scales[i],
                row_lengths[i]);
    const int64_t numel = p.numel();
    const std::optional<at::Tensor> kept = kept_bits.get(i);
    const uint32_t* words = nullptr;
    if (kept.has_value()) {
      TORCH_CHECK(is_bitmap_of(*kept, numel), "spam_step8_: kept_bits[", i, "] is not the bitmap of params[", i, "]");
      words = reinterpret_cast<const uint32_t*>(kept->const_data_ptr<int32_t>());
    } else {
      TORCH_CHECK(exp_avgs[i].numel() == numel, "spam_step8_: the codes of params[", i, "] do not match its size");
    }
    if (!out.open) continue;  // a closed gate: nothing moves, nothing is read
    const Hyper h = count_step(counts[i], lr_w, beta1, beta2, eps, decay, clip, sign);
    const Param8 a{p.data_ptr<float>(), g.const_data_ptr<float>(), exp_avgs[i].data_ptr<int8_t>(),
                   exp_avg_sqs[i].data_ptr<uint8_t>(), exp_avg_scales[i].data_ptr<float>(),
                   exp_avg_sq_scales[i].data_ptr<float>(), words, numel, row_lengths[i], exp_avgs[i].numel()};
    const Tally tally = update_param8(a, h);
    out.clipped.data_ptr<int64_t>()[i] = tally.clipped;
    out.nonfinite.data_ptr<bool>()[i] = tally.nonfinite;
  }
  return {out.clipped, out.nonfinite};
}

// ---- Stable-SPAM (see spam_opt/kernels/stable_spam/reference.py for the rule) -------------------------

struct ClipSum {
  int64_t clipped;
  double sum_sq;
};

// AdaClip's count and the squared norm of the clipped gradient.
ClipSum clip_sum(const float* g, int64_t n, float bound, float ratio) {
  return at::parallel_reduce(
      0, n, kGrain, ClipSum{0, 0.0},
      [=](int64_t begin, int64_t end, ClipSum ident) {
        const float* __restrict gr = g;
        for (int64_t start = begin; start < end; start += kBlock) {
          const int64_t stop = std::min(end, start + kBlock);
          int32_t count = 0;
          float sum = 0.f;
#pragma omp simd reduction(+ : count, sum)
          for (int64_t i = start; i < stop; ++i) {
            const float gi = gr[i];
            const bool spike = std::fabs(gi) > bound;
            const float x = spike ? gi * ratio : gi;
            count += spike;
            sum += x * x;
          }
          ident.clipped += count;
          ident.sum_sq += sum;
        }
        return ident;
      },
      [](ClipSum x, ClipSum y) { return ClipSum{x.clipped + y.clipped, x.sum_sq + y.sum_sq}; });
}

struct StableHyper {
  float bound, ratio, scale, beta1, one_minus_beta1, beta2, one_minus_beta2, inv_bias2_sqrt, eps, step, decay;
  float keep;  // 0 on a reset step, else 1
};

void stable_update(float* p, const float* g, float* m, float* v, int64_t n, const StableHyper& h) {
  at::parallel_for(0, n, kGrain, [=](int64_t begin, int64_t end) {
    const StableHyper hh = h;
    float* __restrict pr = p;
    const float* __restrict gr = g;
    float* __restrict mr = m;
    float* __restrict vr = v;
#pragma omp simd
    for (int64_t i = begin; i < end; ++i) {
      // Branch-free, so that it vectorises (and times 0 after a reset rather than a branch).
      const float gi = gr[i];
      const bool spike = std::fabs(gi) > hh.bound;
      const float x = (spike ? gi * hh.ratio : gi) * hh.scale;
      const float m0 = mr[i] * hh.keep;
      const float v0 = vr[i] * hh.keep;
      const float m_new = m0 * hh.beta1 + x * hh.one_minus_beta1;
      const float v_new = v0 * hh.beta2 + x * x * hh.one_minus_beta2;
      mr[i] = m_new;
      vr[i] = v_new;
      pr[i] = pr[i] * hh.decay - hh.step * m_new / (std::sqrt(v_new) * hh.inv_bias2_sqrt + hh.eps);
    }
  });
}

float* scalar(const at::Tensor& t) { return t.data_ptr<float>(); }

// A Stable-SPAM tensor's per-tensor state, and its step's scalars.
struct StableTensor {
  at::Tensor step, max_ema, norm_ema, norm_sq_ema;
  bool reset;
};

struct StableScalars {
  double lr, beta1, beta2, gamma1, gamma2, theta, eps, weight_decay;
};

// One tensor's step, but for the moments: the statistics of g (max|g| with the NaN check, AdaClip's count and
// the clipped norm), the EMAs and the count, and the update's constants for `update`. A tensor with a NaN/Inf
// gradient, or any under a closed gate, keeps everything but a due reset, done by `zero_moments`. Sets
// clipped and nonfinite.
template <typename Update, typename Zero>
void stable_tensor_step(const float* g, int64_t numel, const StableTensor& t, const StableScalars& c, bool open,
                        int64_t& clipped, bool& nonfinite, Update update, Zero zero_moments) {
  float* count = scalar(t.step);
  const double n_c = static_cast<double>(*count) + 1.0;
  // AdaClip's bound in float32, operation by operation as the reference path computes it: entries right
  // at the bound then count the same on both paths. The bound is the EMA kept from earlier steps plus this
  // step's max|g| share, so at least `lower` (rounding is monotonic): only entries above it can be clipped.
  const float theta_f = static_cast<float>(c.theta);
  const float kept_ema = *scalar(t.max_ema) * theta_f;
  const float debias = 1.f - std::pow(theta_f, static_cast<float>(n_c));
  const float lower = kept_ema / debias;
  const AbsMax am = abs_max(g, numel, lower >= 0.f ? lower : 0.f, kTailCap + numel / 1024);
  nonfinite = !am.finite;
  if (!am.finite || !open) {
    // A due reset belongs to the schedule and still happens on a skipped step.
    if (t.reset) {
      zero_moments();
      *count = 0.f;
    }
    return;
  }
  const float max_ema = kept_ema + am.amax * static_cast<float>(1.0 - c.theta);
  const float max_hat = max_ema / debias;
  const float ratio = max_hat / am.amax;  // only used where |g| > max_hat, so amax > 0 there
  // No entry above the bound: nothing is clipped and the first read already summed the squares. Otherwise
  // the clipped entries are among the tail the first read kept; a second read only if it kept too many.
  ClipSum cs{0, am.sum_sq};
  if (am.amax > max_hat) {
    if (am.tail_complete) {
      cs.sum_sq = am.sum_below;
      for (const float x : am.tail) {
        const bool spike = std::fabs(x) > max_hat;
        const float y = spike ? x * ratio : x;
        cs.clipped += spike;
        cs.sum_sq += static_cast<double>(y * y);
      }
    } else {
      cs = clip_sum(g, numel, max_hat, ratio);
    }
  }
  const double norm = std::sqrt(cs.sum_sq);
  const double norm_ema = *scalar(t.norm_ema) * c.gamma1 + norm * (1.0 - c.gamma1);
  const double norm_sq_ema = *scalar(t.norm_sq_ema) * c.gamma2 + norm * norm * (1.0 - c.gamma2);
  const double target = (norm_ema / (1.0 - std::pow(c.gamma1, n_c))) /
                        (std::sqrt(norm_sq_ema / (1.0 - std::pow(c.gamma2, n_c))) + c.eps);
  const double steps_now = t.reset ? 1.0 : n_c;
  const double bias1 = 1.0 - std::pow(c.beta1, steps_now);
  const double bias2 = 1.0 - std::pow(c.beta2, steps_now);
  update(StableHyper{max_hat,
                     ratio,
                     static_cast<float>(norm > 0 ? target / norm : 1.0),
                     static_cast<float>(c.beta1),
                     static_cast<float>(1.0 - c.beta1),
                     static_cast<float>(c.beta2),
                     static_cast<float>(1.0 - c.beta2),
                     static_cast<float>(1.0 / std::sqrt(bias2)),
                     static_cast<float>(c.eps),
                     static_cast<float>(c.lr / bias1),
                     static_cast<float>(1.0 - c.lr * c.weight_decay),
                     t.reset ? 0.f : 1.f});
  *count = static_cast<float>(steps_now);
  *scalar(t.max_ema) = max_ema;
  *scalar(t.norm_ema) = static_cast<float>(norm_ema);
  *scalar(t.norm_sq_ema) = static_cast<float>(norm_sq_ema);
  clipped = cs.clipped;
}

std::tuple<at::Tensor, at::Tensor> stable_spam_step(
    at::TensorList params, at::TensorList grads, at::TensorList exp_avgs, at::TensorList exp_avg_sqs,
    at::TensorList steps, at::TensorList max_emas, at::TensorList norm_emas, at::TensorList norm_sq_emas,
    const c10::List<bool>& resets, const std::optional<at::Tensor>& gate, double lr, double beta1, double beta2,
    double gamma1, double gamma2, double theta, double eps, double weight_decay) {
  const int64_t n = static_cast<int64_t>(params.size());
  const StepOutputs out("stable_spam_step_", n, {grads.size(), exp_avgs.size(), exp_avg_sqs.size(), steps.size(),
                                                 max_emas.size(), norm_emas.size(), norm_sq_emas.size(),
                                                 resets.size()}, gate);
  const StableScalars c{lr, beta1, beta2, gamma1, gamma2, theta, eps, weight_decay};
  for (int64_t i = 0; i < n; ++i) {
    const at::Tensor& p = params[i];
    const at::Tensor& g = grads[i];
    check_param_tensors("stable_spam_step_", i, p, g, exp_avgs[i], exp_avg_sqs[i]);
    TORCH_CHECK(g.numel() == p.numel() && exp_avgs[i].numel() == p.numel() &&
                    exp_avg_sqs[i].numel() == p.numel(),
                "stable_spam_step_: params[", i, "] and its gradient and moments differ in size");
    const float* gp = g.const_data_ptr<float>();
    stable_tensor_step(
        gp, p.numel(), StableTensor{steps[i], max_emas[i], norm_emas[i], norm_sq_emas[i], resets.get(i)}, c,
        out.open, out.clipped.data_ptr<int64_t>()[i], out.nonfinite.data_ptr<bool>()[i],
        [&](const StableHyper& h) {
          stable_update(p.data_ptr<float>(), gp, exp_avgs[i].data_ptr<float>(), exp_avg_sqs[i].data_ptr<float>(),
                        p.numel(), h);
        },
        [&] {
          exp_avgs[i].zero_();
          exp_avg_sqs[i].zero_();
        });
  }
  return {out.clipped, out.nonfinite};
}

// ---- Stable-SPAM with 8-bit moments: SPAM's layout and maps (spam_opt/quantized_state.py), dense --------

// One block: dequantize m̂ and v̂, stable_update's arithmetic, and r = m / (s + eps), s = sqrt(v) with their
// maxima, in one loop; then requantize (with AVX-512, stable_block8_avx512).
#if defined(__AVX512F__)
// stable_block8 written out with AVX-512, 16 entries per vector (the last one masked, its missing lanes read
// as zeros, which leave the maxima unchanged): the same operations in the same order, then
// requantize_avx512. A tensor with a NaN/Inf gradient never gets here (stable_tensor_step).
void stable_block8_avx512(float* __restrict p, const float* __restrict g, int8_t* __restrict mc,
                          uint8_t* __restrict vc, float* r_scale, float* s_scale, int64_t n, const StableHyper& h) {
  alignas(64) float rb[kQBlock];
  alignas(64) float sb[kQBlock];
  const __m512 r_step = _mm512_set1_ps(*r_scale / kRLevels), s_step = _mm512_set1_ps(*s_scale / kSLevels);
  const __m512 bound = _mm512_set1_ps(h.bound), ratio = _mm512_set1_ps(h.ratio), scale = _mm512_set1_ps(h.scale);
  const __m512 beta1 = _mm512_set1_ps(h.beta1), one_minus_beta1 = _mm512_set1_ps(h.one_minus_beta1);
  const __m512 beta2 = _mm512_set1_ps(h.beta2), one_minus_beta2 = _mm512_set1_ps(h.one_minus_beta2);
  const __m512 inv_bias2_sqrt = _mm512_set1_ps(h.inv_bias2_sqrt), eps = _mm512_set1_ps(h.eps);
  const __m512 step = _mm512_set1_ps(h.step), decay = _mm512_set1_ps(h.decay), keep = _mm512_set1_ps(h.keep);
  const __m512i abs_mask = _mm512_set1_epi32(0x7fffffff);
  auto abs = [&](__m512 x) { return _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(x), abs_mask)); };
  __m512 r_max = _mm512_setzero_ps(), s_max = _mm512_setzero_ps();
  for_vectors(n, [=, &rb, &sb, &r_max, &s_max](int64_t i, auto tail) {
    constexpr bool kTail = decltype(tail)::value;
    const __mmask16 lanes = kTail ? tail_lanes(n - i) : __mmask16(0xffff);
    const auto [s_old, m_hat, v_hat] = dequantize16<kTail>(mc + i, vc + i, r_step, s_step, eps, lanes);
    const __m512 gi = load16<kTail>(g + i, lanes);
    const __mmask16 spike = _mm512_cmp_ps_mask(abs(gi), bound, _CMP_GT_OQ);
    const __m512 x = _mm512_mul_ps(_mm512_mask_blend_ps(spike, gi, _mm512_mul_ps(gi, ratio)), scale);
    const __m512 m_new =
        _mm512_add_ps(_mm512_mul_ps(_mm512_mul_ps(m_hat, keep), beta1), _mm512_mul_ps(x, one_minus_beta1));
    const __m512 v_new = _mm512_add_ps(_mm512_mul_ps(_mm512_mul_ps(v_hat, keep), beta2),
                                       _mm512_mul_ps(_mm512_mul_ps(x, x), one_minus_beta2));
    const __m512 s = _mm512_sqrt_ps(v_new);
    const __m512 p_new = _mm512_sub_ps(
        _mm512_mul_ps(load16<kTail>(p + i, lanes), decay),
        _mm512_div_ps(_mm512_mul_ps(step, m_new), _mm512_add_ps(_mm512_mul_ps(s, inv_bias2_sqrt), eps)));
    const __m512 r = _mm512_div_ps(m_new, _mm512_add_ps(s, eps));
    store16<kTail>(p + i, lanes, p_new);
    _mm512_store_ps(rb + i, r);
    _mm512_store_ps(sb + i, s);
    r_max = _mm512_max_ps(r_max, abs(r));
    s_max = _mm512_max_ps(s_max, s);
  });
  requantize_avx512(rb, sb, r_max, s_max, mc, vc, r_scale, s_scale, n);
}
#endif

void stable_block8(float* __restrict p, const float* __restrict g, int8_t* __restrict mc, uint8_t* __restrict vc,
                   float* r_scale, float* s_scale, int64_t n, const StableHyper& h) {
#if defined(__AVX512F__)
  return stable_block8_avx512(p, g, mc, vc, r_scale, s_scale, n, h);
#else
  alignas(64) float rb[kQBlock];
  alignas(64) float sb[kQBlock];
  const float r_step = *r_scale / kRLevels, s_step = *s_scale / kSLevels;
  float r_max = 0.f, s_max = 0.f;
#pragma omp simd reduction(max : r_max, s_max)
  for (int64_t i = 0; i < n; ++i) {
    const float code_s = static_cast<float>(vc[i]);
    const float s_old = code_s * code_s * s_step;
    const float m_hat = static_cast<float>(mc[i]) * r_step * (s_old + h.eps);
    const float v_hat = s_old * s_old;
    const float gi = g[i];
    const bool spike = std::fabs(gi) > h.bound;
    const float x = (spike ? gi * h.ratio : gi) * h.scale;
    const float m_new = m_hat * h.keep * h.beta1 + x * h.one_minus_beta1;
    const float v_new = v_hat * h.keep * h.beta2 + x * x * h.one_minus_beta2;
    const float s = std::sqrt(v_new);
    p[i] = p[i] * h.decay - h.step * m_new / (s * h.inv_bias2_sqrt + h.eps);
    const float r = m_new / (s + h.eps);
    rb[i] = r;
    sb[i] = s;
    r_max = std::max(r_max, std::fabs(r));
    s_max = std::max(s_max, s);
  }
  requantize(rb, sb, r_max, s_max, mc, vc, r_scale, s_scale, n);
#endif
}

std::tuple<at::Tensor, at::Tensor> stable_spam_step8(
    at::TensorList params, at::TensorList grads, at::TensorList exp_avgs, at::TensorList exp_avg_sqs,
    at::TensorList exp_avg_scales, at::TensorList exp_avg_sq_scales, at::TensorList steps, at::TensorList max_emas,
    at::TensorList norm_emas, at::TensorList norm_sq_emas, const c10::List<bool>& resets,
    at::IntArrayRef row_lengths, const std::optional<at::Tensor>& gate, double lr, double beta1, double beta2,
    double gamma1, double gamma2, double theta, double eps, double weight_decay) {
  const int64_t n = static_cast<int64_t>(params.size());
  const StepOutputs out("stable_spam_step8_", n, {grads.size(), exp_avgs.size(), exp_avg_sqs.size(),
                                                  exp_avg_scales.size(), exp_avg_sq_scales.size(), steps.size(),
                                                  max_emas.size(), norm_emas.size(), norm_sq_emas.size(),
                                                  resets.size(), row_lengths.size()}, gate);
  const StableScalars c{lr, beta1, beta2, gamma1, gamma2, theta, eps, weight_decay};
  for (int64_t i = 0; i < n; ++i) {
    const at::Tensor& p = params[i];
    const at::Tensor& g = grads[i];
    check_codes("stable_spam_step8_", i, p, g, exp_avgs[i], exp_avg_sqs[i], exp_avg_scales[i],
                exp_avg_sq_scales[i], row_lengths[i]);
    TORCH_CHECK(exp_avgs[i].numel() == p.numel(), "stable_spam_step8_: the codes of params[", i,
                "] do not match its size (Stable-SPAM's 8-bit moments are dense)");
    const float* gp = g.const_data_ptr<float>();
    const int64_t numel = p.numel(), row = row_lengths[i], per_row = (row + kQBlock - 1) / kQBlock;
    stable_tensor_step(
        gp, numel, StableTensor{steps[i], max_emas[i], norm_emas[i], norm_sq_emas[i], resets.get(i)}, c,
        out.open, out.clipped.data_ptr<int64_t>()[i], out.nonfinite.data_ptr<bool>()[i],
        [&](const StableHyper& h) {
          float* pp = p.data_ptr<float>();
          int8_t* mc = exp_avgs[i].data_ptr<int8_t>();
          uint8_t* vc = exp_avg_sqs[i].data_ptr<uint8_t>();
          float* rs = exp_avg_scales[i].data_ptr<float>();
          float* ss = exp_avg_sq_scales[i].data_ptr<float>();
          at::parallel_for(0, numel / row * per_row, kGrain / kQBlock, [&](int64_t b0, int64_t b1) {
            for (int64_t b = b0; b < b1; ++b) {
              const int64_t first = b / per_row * row + b % per_row * kQBlock;
              const int64_t len = std::min(kQBlock, row - b % per_row * kQBlock);
              stable_block8(pp + first, gp + first, mc + first, vc + first, rs + b, ss + b, len, h);
            }
          });
        },
        [&] {
          exp_avgs[i].zero_();
          exp_avg_sqs[i].zero_();
          exp_avg_scales[i].zero_();
          exp_avg_sq_scales[i].zero_();
        });
  }
  return {out.clipped, out.nonfinite};
}

// ---- Sparse momentum's draw (spam_opt/sparse.py holds the specification and a torch version) ------------

inline uint32_t mix32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7FEB352Du;
  x ^= x >> 15;
  x *= 0x1B873593u;
  return x ^ (x >> 16);
}

inline bool keep(int64_t flat, uint32_t key, uint64_t threshold) {
  const uint64_t f = static_cast<uint64_t>(flat);
  const uint32_t h = mix32(mix32(static_cast<uint32_t>(f) ^ key) ^ static_cast<uint32_t>(f >> 32));
  return h < threshold;
}

// The kept entries of `numel` consecutive entries starting at flat index `offset` of the full tensor, in
// the compact layout (low 16 bits of each index relative to the first entry, kept count before each block).
std::tuple<at::Tensor, at::Tensor> kept_entries(int64_t numel, int64_t key, int64_t threshold, int64_t offset) {
  TORCH_CHECK(numel >= 0 && offset >= 0 && key >= 0 && key < (int64_t(1) << 32) && threshold >= 0 &&
                  threshold <= (int64_t(1) << 32),
              "kept_entries: invalid arguments");
  const int64_t block_size = int64_t(1) << kBlockBits;
  const int64_t blocks = (numel >> kBlockBits) + 1;
  auto starts = at::zeros({blocks + 1}, at::kLong);
  int64_t* st = starts.data_ptr<int64_t>();
  const uint32_t k32 = static_cast<uint32_t>(key);
  const uint64_t thr = static_cast<uint64_t>(threshold);
  // Blocks are independent: count each block's kept entries in parallel, then fill each block's slice.
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t lo = b * block_size, hi = std::min(numel, lo + block_size);
      int32_t count = 0;
#pragma omp simd reduction(+ : count)
      for (int64_t i = lo; i < hi; ++i) count += keep(offset + i, k32, thr);
      st[b + 1] = count;
    }
  });
  for (int64_t b = 0; b < blocks; ++b) st[b + 1] += st[b];
  auto low = at::empty({st[blocks]}, at::kShort);
  int16_t* out = low.data_ptr<int16_t>();
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t lo = b * block_size, hi = std::min(numel, lo + block_size);
      int64_t j = st[b];
      for (int64_t i = lo; i < hi; ++i) {
        if (keep(offset + i, k32, thr)) out[j++] = static_cast<int16_t>(static_cast<uint16_t>(i - lo));
      }
    }
  });
  return {low, starts};
}

// The kept entries of `numel` consecutive entries from flat index `offset` as a bitmap: bit j % 32 of word
// j / 32 for entry j, plus one word of padding (the 8-bit layout, spam_opt/state/kept.py).
at::Tensor kept_bits(int64_t numel, int64_t key, int64_t threshold, int64_t offset) {
  TORCH_CHECK(numel >= 0 && offset >= 0 && key >= 0 && key < (int64_t(1) << 32) && threshold >= 0 &&
                  threshold <= (int64_t(1) << 32),
              "kept_bits: invalid arguments");
  const int64_t words = (numel + 31) / 32;
  auto out = at::zeros({words + 1}, at::kInt);
  uint32_t* w = reinterpret_cast<uint32_t*>(out.data_ptr<int32_t>());
  const uint32_t k32 = static_cast<uint32_t>(key);
  const uint64_t thr = static_cast<uint64_t>(threshold);
  at::parallel_for(0, words, kGrain / 32, [&](int64_t w0, int64_t w1) {
    for (int64_t i = w0; i < w1; ++i) {
      const int64_t lo = i * 32, n = std::min<int64_t>(32, numel - lo);
      uint32_t word = 0;
#pragma omp simd reduction(| : word)
      for (int64_t j = 0; j < n; ++j) word |= static_cast<uint32_t>(keep(offset + lo + j, k32, thr)) << j;
      w[i] = word;
    }
  });
  return out;
}

// The bitmap (as kept_bits makes) of the kept entries that `low` and `starts` hold (spam_opt/state/kept.py's
// index layout) among `numel` entries. The index blocks of 2**16 entries own whole words, so they fill in
// parallel.
at::Tensor kept_bits_of(const at::Tensor& low, const at::Tensor& starts, int64_t numel) {
  const int64_t blocks = (numel >> kBlockBits) + 1;
  TORCH_CHECK(numel >= 0 && low.device().is_cpu() && starts.device().is_cpu() && low.scalar_type() == at::kShort &&
                  low.is_contiguous() && starts.scalar_type() == at::kLong && starts.is_contiguous() &&
                  starts.numel() == blocks + 1,
              "kept_bits_of: low must be int16 and starts int64 (", blocks + 1, " of them) on the CPU");
  const int64_t* st = starts.const_data_ptr<int64_t>();
  const int16_t* lw = low.const_data_ptr<int16_t>();
  TORCH_CHECK(st[0] == 0 && st[blocks] == low.numel(), "kept_bits_of: starts does not count the ", low.numel(),
              " kept entries");
  auto out = at::zeros({(numel + 31) / 32 + 1}, at::kInt);
  uint32_t* w = reinterpret_cast<uint32_t*>(out.data_ptr<int32_t>());
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t lo = b << kBlockBits;
      TORCH_CHECK(st[b] <= st[b + 1], "kept_bits_of: starts is not ascending");
      for (int64_t j = st[b]; j < st[b + 1]; ++j) {
        const int64_t e = lo + static_cast<uint16_t>(lw[j]);
        TORCH_CHECK(e < numel, "kept_bits_of: a kept entry lies past the ", numel, " entries");
        w[e >> 5] |= 1u << (e & 31);
      }
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY(spam_opt, m) {
  m.def(
      "spam_step_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avgs, Tensor(c!)[] exp_avg_sqs, "
      "Tensor(d!)[] counts, Tensor?[] kept_bits, Tensor?[] kept_starts, Tensor? gate, float lr_w, float beta1, float beta2, float eps, "
      "float decay, float clip, float sign) -> (Tensor, Tensor)");
  m.def(
      "stable_spam_step_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avgs, Tensor(c!)[] exp_avg_sqs, "
      "Tensor(d!)[] steps, Tensor(e!)[] max_emas, Tensor(f!)[] norm_emas, Tensor(g!)[] norm_sq_emas, "
      "bool[] resets, Tensor? gate, float lr, float beta1, float beta2, float gamma1, float gamma2, "
      "float theta, float eps, float weight_decay) -> (Tensor, Tensor)");
  // No tensor inputs, so no dispatch key to choose a backend by: one kernel for all, producing CPU tensors.
  m.def(
      "spam_step8_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avgs, Tensor(c!)[] exp_avg_sqs, "
      "Tensor(d!)[] exp_avg_scales, Tensor(e!)[] exp_avg_sq_scales, Tensor(f!)[] counts, Tensor?[] kept_bits, "
      "int[] row_lengths, Tensor? gate, float lr_w, float beta1, float beta2, float eps, float decay, "
      "float clip, float sign) -> (Tensor, Tensor)");
  m.def(
      "stable_spam_step8_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avgs, Tensor(c!)[] exp_avg_sqs, "
      "Tensor(d!)[] exp_avg_scales, Tensor(e!)[] exp_avg_sq_scales, Tensor(f!)[] steps, Tensor(g!)[] max_emas, "
      "Tensor(h!)[] norm_emas, Tensor(i!)[] norm_sq_emas, bool[] resets, int[] row_lengths, Tensor? gate, "
      "float lr, float beta1, float beta2, float gamma1, float gamma2, float theta, float eps, "
      "float weight_decay) -> (Tensor, Tensor)");
  m.def("kept_entries(int numel, int key, int threshold, int offset) -> (Tensor, Tensor)", &kept_entries);
  m.def("kept_bits(int numel, int key, int threshold, int offset) -> Tensor", &kept_bits);
  m.def("kept_bits_of(Tensor low, Tensor starts, int numel) -> Tensor", &kept_bits_of);
}

TORCH_LIBRARY_IMPL(spam_opt, CPU, m) {
  m.impl("spam_step_", &spam_step);
  m.impl("spam_step8_", &spam_step8);
  m.impl("stable_spam_step_", &stable_spam_step);
  m.impl("stable_spam_step8_", &stable_spam_step8);
}

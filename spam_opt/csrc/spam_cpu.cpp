// The fused SPAM step on CPU: one pass over p, g, m, v per tensor, vectorised and multi-threaded.
//
// Per parameter it first checks the gradient for NaN/Inf (a read of g only: a parameter whose gradient is
// not finite must be left untouched, so the check has to finish before the first write), then clips,
// updates the moments and the parameter, and counts the clipped entries in the same loop. Registered as
// torch.ops.spam_opt.spam_step_; spam_opt/_spam_cpu.py builds and loads this file.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <vector>

namespace {

// Entries per task: large enough to amortise scheduling, small enough to split one big tensor over threads.
constexpr int64_t kGrain = 1 << 15;
// Entries per inner loop of the update (whose clip count fits an int32).
constexpr int64_t kBlock = 1 << 12;
// Kept entries gathered per block under sparse momentum (two float buffers of this size on the stack).
constexpr int64_t kGather = 1 << 10;

// Each constant is rounded to float32 once, from double, as torch rounds a Python scalar operand; with
// -ffp-contract=off every operation below then rounds exactly as the reference path's tensor ops do.
struct Hyper {
  float beta1, one_minus_beta1, beta2, one_minus_beta2, eps, step, decay, clip, sign;
};

bool all_finite(const float* g, int64_t n) {
  return at::parallel_reduce(
      0, n, kGrain, true,
      [=](int64_t begin, int64_t end, bool ident) {
        // Four streams a quarter of the range apart: one sequential read stream leaves most of the memory
        // bandwidth unused (measured 1.7x slower), and this read is pure overhead on top of the update.
        const int64_t q = (end - begin) / 4;
        const float* __restrict a = g + begin;
        const float* __restrict b = a + q;
        const float* __restrict c = b + q;
        const float* __restrict d = c + q;
        // x * 0 is 0 for a finite x and NaN for NaN or Inf; one NaN makes the sum NaN.
        float acc = 0.f;
#pragma omp simd reduction(+ : acc)
        for (int64_t i = 0; i < q; ++i) acc += (a[i] * 0.f + b[i] * 0.f) + (c[i] * 0.f + d[i] * 0.f);
        for (int64_t i = begin + 4 * q; i < end; ++i) acc += g[i] * 0.f;
        return ident && acc == 0.f;
      },
      [](bool x, bool y) { return x && y; });
}

// The update of one entry; returns whether its gradient was clipped. clip is +inf when clipping is off.
inline bool update_entry(float& p, float g, float& m, float& v, const Hyper& h) {
  g *= h.sign;
  const float bound = std::sqrt(h.clip * v);
  // v > 0: a first gradient is never a spike (DESIGN.md); v == 0 would also make the bound NaN. A bitwise
  // & instead of && keeps the loop free of branches, which is what lets the compiler vectorise it.
  const bool spike = (v > 0.f) & (std::fabs(g) > bound);
  g = spike ? std::copysign(bound, g) : g;
  const float m_new = m * h.beta1 + g * h.one_minus_beta1;
  const float v_new = v * h.beta2 + g * g * h.one_minus_beta2;
  m = m_new;
  v = v_new;
  p = (p - h.step * (m_new / (std::sqrt(v_new) + h.eps))) * h.decay;
  return spike;
}

int64_t dense_update(float* p, const float* g, float* m, float* v, int64_t n, const Hyper& h) {
  return at::parallel_reduce(
      0, n, kGrain, int64_t(0),
      [=](int64_t begin, int64_t end, int64_t ident) {
        // Local restrict copies: otherwise the compiler must assume a store to p, m or v may change the
        // hyperparameters or the pointers, reloads them per entry and gives up on vectorising.
        const Hyper hh = h;
        float* __restrict pr = p;
        const float* __restrict gr = g;
        float* __restrict mr = m;
        float* __restrict vr = v;
        int64_t count = 0;
        for (int64_t start = begin; start < end; start += kBlock) {
          const int64_t stop = std::min(end, start + kBlock);
          // An int32 count per block: int64 lanes would halve the vector width of the reduction.
          int32_t block = 0;
#pragma omp simd reduction(+ : block)
          for (int64_t i = start; i < stop; ++i) block += update_entry(pr[i], gr[i], mr[i], vr[i], hh);
          count += block;
        }
        return ident + count;
      },
      std::plus<int64_t>());
}

// Sparse momentum: m and v hold the kept entries only, idx (sorted) their flat positions. Adam moves the
// kept entries and the decoupled decay shrinks every entry. Per block of kept entries: gather their p and
// g into small contiguous buffers, update those with the dense (vectorised) loop, decay the stretch of p
// the block spans (vectorised, in cache), then scatter the kept entries' new values over it.
template <typename Index>
int64_t sparse_update(float* p, const float* g, float* m, float* v, const Index* idx, int64_t k,
                      int64_t numel, const Hyper& h) {
  const bool decay = h.decay != 1.f;
  auto decay_range = [=](int64_t lo, int64_t hi) {
    float* __restrict pr = p;
    const float d = h.decay;
#pragma omp simd
    for (int64_t q = lo; q < hi; ++q) pr[q] *= d;
  };
  if (k == 0) {
    if (decay) at::parallel_for(0, numel, kGrain, decay_range);
    return 0;
  }
  return at::parallel_reduce(
      0, k, kGrain / 4, int64_t(0),
      [=](int64_t begin, int64_t end, int64_t ident) {
        const Hyper hh = h;
        float pk[kGather];
        float gk[kGather];
        int64_t count = 0;
        int64_t lo = begin == 0 ? 0 : static_cast<int64_t>(idx[begin - 1]) + 1;
        for (int64_t start = begin; start < end; start += kGather) {
          const int64_t len = std::min(end - start, kGather);
          const Index* __restrict ix = idx + start;
          for (int64_t j = 0; j < len; ++j) {
            pk[j] = p[ix[j]];
            gk[j] = g[ix[j]];
          }
          float* __restrict mr = m + start;
          float* __restrict vr = v + start;
          int32_t block = 0;
#pragma omp simd reduction(+ : block)
          for (int64_t j = 0; j < len; ++j) block += update_entry(pk[j], gk[j], mr[j], vr[j], hh);
          count += block;
          const int64_t hi = start + len == k ? numel : static_cast<int64_t>(ix[len - 1]) + 1;
          if (decay) decay_range(lo, hi);
          for (int64_t j = 0; j < len; ++j) p[ix[j]] = pk[j];
          lo = hi;
        }
        return ident + count;
      },
      std::plus<int64_t>());
}

void check_float32(const at::Tensor& t, const char* what, int64_t i) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat && t.is_contiguous(), "spam_step_: ", what,
              "[", i, "] must be a contiguous float32 CPU tensor, got ", t.scalar_type(), " on ", t.device(),
              t.is_contiguous() ? "" : " (not contiguous)");
}

// Returns (clipped: int64 [N], nonfinite: bool [N]).
std::tuple<at::Tensor, at::Tensor> spam_step(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                                             at::TensorList exp_avg_sqs, at::TensorList counts,
                                             const c10::List<std::optional<at::Tensor>>& kept,
                                             const std::optional<at::Tensor>& gate, double lr_w, double beta1,
                                             double beta2, double eps, double decay, double clip, double sign) {
  const int64_t n = static_cast<int64_t>(params.size());
  TORCH_CHECK(static_cast<int64_t>(grads.size()) == n && static_cast<int64_t>(exp_avgs.size()) == n &&
                  static_cast<int64_t>(exp_avg_sqs.size()) == n && static_cast<int64_t>(counts.size()) == n &&
                  static_cast<int64_t>(kept.size()) == n,
              "spam_step_: all tensor lists must have one entry per parameter");
  auto clipped = at::zeros({n}, at::kLong);
  auto nonfinite = at::zeros({n}, at::kBool);
  auto* clipped_out = clipped.data_ptr<int64_t>();
  auto* nonfinite_out = nonfinite.data_ptr<bool>();
  const bool open = !gate.has_value() || gate->item<bool>();
  for (int64_t i = 0; i < n; ++i) {
    const at::Tensor& p = params[i];
    const at::Tensor& g = grads[i];
    check_float32(p, "params", i);
    check_float32(g, "grads", i);
    check_float32(exp_avgs[i], "exp_avgs", i);
    check_float32(exp_avg_sqs[i], "exp_avg_sqs", i);
    TORCH_CHECK(g.numel() == p.numel(), "spam_step_: grads[", i, "] has ", g.numel(), " entries, params[", i,
                "] ", p.numel());
    const bool finite = all_finite(g.const_data_ptr<float>(), g.numel());
    nonfinite_out[i] = !finite;
    if (!finite || !open) continue;
    float* count = counts[i].data_ptr<float>();
    const double steps = static_cast<double>(*count) + 1.0;
    *count = static_cast<float>(steps);
    const double bias = std::sqrt(1.0 - std::pow(beta2, steps)) / (1.0 - std::pow(beta1, steps));
    const Hyper h{static_cast<float>(beta1), static_cast<float>(1.0 - beta1), static_cast<float>(beta2),
                  static_cast<float>(1.0 - beta2), static_cast<float>(eps), static_cast<float>(lr_w * bias),
                  static_cast<float>(decay), static_cast<float>(clip), static_cast<float>(sign)};
    float* pp = p.data_ptr<float>();
    const float* gp = g.const_data_ptr<float>();
    float* mp = exp_avgs[i].data_ptr<float>();
    float* vp = exp_avg_sqs[i].data_ptr<float>();
    const std::optional<at::Tensor> idx = kept.get(i);
    if (!idx.has_value()) {
      TORCH_CHECK(exp_avgs[i].numel() == p.numel() && exp_avg_sqs[i].numel() == p.numel(),
                  "spam_step_: the moments of params[", i, "] do not match its size");
      clipped_out[i] = dense_update(pp, gp, mp, vp, p.numel(), h);
      continue;
    }
    const int64_t k = idx->numel();
    TORCH_CHECK(idx->is_contiguous() && exp_avgs[i].numel() == k && exp_avg_sqs[i].numel() == k,
                "spam_step_: the kept indices and moments of params[", i, "] do not match");
    if (idx->scalar_type() == at::kInt) {
      clipped_out[i] = sparse_update(pp, gp, mp, vp, idx->const_data_ptr<int32_t>(), k, p.numel(), h);
    } else {
      TORCH_CHECK(idx->scalar_type() == at::kLong, "spam_step_: kept indices must be int32 or int64");
      clipped_out[i] = sparse_update(pp, gp, mp, vp, idx->const_data_ptr<int64_t>(), k, p.numel(), h);
    }
  }
  return {clipped, nonfinite};
}

}  // namespace

TORCH_LIBRARY(spam_opt, m) {
  m.def(
      "spam_step_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avgs, Tensor(c!)[] exp_avg_sqs, "
      "Tensor(d!)[] counts, Tensor?[] kept, Tensor? gate, float lr_w, float beta1, float beta2, float eps, "
      "float decay, float clip, float sign) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(spam_opt, CPU, m) { m.impl("spam_step_", &spam_step); }

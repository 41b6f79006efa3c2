// The monitor's element-wise Gradient Spike Score on CPU: one pass per tensor instead of six.
//
// Per entry: gss = |g| / max(s + |g|, tiny) * t (|g| over its mean over the t steps so far, the current one
// included; the smallest normal float keeps an entry whose gradient was always 0 at score 0, not 0/0), then
// s = max(s + r, tiny) where r is |g|, or for an entry above the threshold the value that would have scored
// exactly the threshold, so that one spike does not hide the next. Per tensor: the largest gss and how many
// exceed the threshold. Registered as
// torch.ops.spam_opt_monitor.gradient_spike_scores_; spam_opt/monitor/statistics.py calls it, and keeps the torch
// version of the same operations for other devices and dtypes (the tests compare the two).

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <tuple>

namespace {

// Entries per task, as in the optimizers' kernels.
constexpr int64_t kGrain = 1 << 15;

struct Scores {
  float largest;
  int64_t above;
  bool nan;  // a NaN score anywhere makes the largest NaN, as torch's max would
};

Scores combine(Scores a, Scores b) {
  return Scores{std::max(a.largest, b.largest), a.above + b.above, a.nan || b.nan};
}

Scores update(float* sums, const float* grads, int64_t n, float steps, float threshold) {
  return at::parallel_reduce(
      0, n, kGrain, Scores{0.f, 0, false},
      [=](int64_t begin, int64_t end, Scores ident) {
        constexpr float kTiny = std::numeric_limits<float>::min();
        float* __restrict s = sums;
        const float* __restrict g = grads;
        float largest = ident.largest;
        int64_t above = 0;
        bool nan = false;
#pragma omp simd reduction(max : largest) reduction(+ : above) reduction(|| : nan)
        for (int64_t i = begin; i < end; ++i) {
          const float a = std::fabs(g[i]);
          const float gss = a / std::max(s[i] + a, kTiny) * steps;
          const bool spike = gss > threshold;
          // spike implies steps > threshold (a score is at most steps), so the bound below is positive
          const float recorded = spike ? s[i] * threshold / (steps - threshold) : a;
          s[i] = std::max(s[i] + recorded, kTiny);
          largest = std::max(largest, gss);
          above += spike;
          nan = nan || gss != gss;
        }
        return Scores{largest, ident.above + above, ident.nan || nan};
      },
      combine);
}

// Returns (largest score: float32 [N], entries above the threshold: float32 [N]).
std::tuple<at::Tensor, at::Tensor> gradient_spike_scores(at::TensorList sums, at::TensorList grads,
                                                         at::ArrayRef<double> steps, double threshold) {
  const int64_t n = static_cast<int64_t>(sums.size());
  TORCH_CHECK(static_cast<int64_t>(grads.size()) == n && static_cast<int64_t>(steps.size()) == n,
              "gradient_spike_scores_: sums, grads and steps need one entry per parameter");
  auto largest = at::empty({n}, at::kFloat);
  auto above = at::empty({n}, at::kFloat);
  for (int64_t i = 0; i < n; ++i) {
    for (const at::Tensor* t : {&sums[i], &grads[i]}) {
      TORCH_CHECK(t->device().is_cpu() && t->scalar_type() == at::kFloat && t->is_contiguous(),
                  "gradient_spike_scores_: sums[", i, "] and grads[", i, "] must be contiguous float32 CPU tensors");
    }
    TORCH_CHECK(sums[i].numel() == grads[i].numel(), "gradient_spike_scores_: sums[", i, "] and grads[", i,
                "] differ in size");
    const Scores r = update(sums[i].data_ptr<float>(), grads[i].const_data_ptr<float>(), sums[i].numel(),
                            static_cast<float>(steps[i]), static_cast<float>(threshold));
    largest.data_ptr<float>()[i] = r.nan ? std::numeric_limits<float>::quiet_NaN() : r.largest;
    above.data_ptr<float>()[i] = static_cast<float>(r.above);
  }
  return {largest, above};
}

}  // namespace

TORCH_LIBRARY(spam_opt_monitor, m) {
  m.def("gradient_spike_scores_(Tensor(a!)[] sums, Tensor[] grads, float[] steps, float threshold) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(spam_opt_monitor, CPU, m) { m.impl("gradient_spike_scores_", &gradient_spike_scores); }

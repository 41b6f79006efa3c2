// Sparse-momentum layouts at density 0.25, the update of the kept entries alone (no NaN check, no decay):
// the design's element-wise draw (gather/scatter at sorted indices, as spam_opt/kernels/csrc/spam_cpu.cpp does)
// against kept blocks of 64 contiguous entries (the same state size, one index per block).
//
//   g++ -O3 -mavx2 -mfma -fopenmp -fno-math-errno -fno-trapping-math -ffp-contract=off \
//       benchmarks/sparse_layout.cpp -o /tmp/sparse_layout && /tmp/sparse_layout
//
// Results: benchmarks/results/sparse_layout_cpu.md
#include <cmath>
#include <cstdint>
#include <chrono>
#include <cstdio>
#include <vector>
#include <random>
#include <algorithm>
struct H { float b1, ob1, b2, ob2, eps, step, decay, clip, sign; };
inline bool upd(float& p, float g, float& m, float& v, const H& h) {
  const float bound = std::sqrt(h.clip * v);
  const bool spike = (v > 0.f) & (std::fabs(g) > bound);
  g = spike ? std::copysign(bound, g) : g;
  const float mn = m * h.b1 + g * h.ob1, vn = v * h.b2 + g * g * h.ob2;
  m = mn; v = vn; p = (p - h.step * (mn / (std::sqrt(vn) + h.eps))) * h.decay;
  return spike;
}
__attribute__((noinline)) int64_t elem(float* p, const float* g, float* m, float* v, const int64_t* idx, int64_t k, const H& h) {
  const H hh = h; float pk[1024], gk[1024]; int64_t count = 0;
  for (int64_t s = 0; s < k; s += 1024) {
    int64_t len = std::min<int64_t>(1024, k - s);
    for (int64_t j = 0; j < len; ++j) { pk[j] = p[idx[s + j]]; gk[j] = g[idx[s + j]]; }
    float* __restrict mr = m + s; float* __restrict vr = v + s; int32_t c = 0;
#pragma omp simd reduction(+ : c)
    for (int64_t j = 0; j < len; ++j) c += upd(pk[j], gk[j], mr[j], vr[j], hh);
    for (int64_t j = 0; j < len; ++j) p[idx[s + j]] = pk[j];
    count += c;
  }
  return count;
}
__attribute__((noinline)) int64_t blocks(float* p, const float* g, float* m, float* v, const int64_t* bidx, int64_t nb, int64_t B, const H& h) {
  const H hh = h; int64_t count = 0;
  for (int64_t b = 0; b < nb; ++b) {
    float* __restrict pr = p + bidx[b] * B; const float* __restrict gr = g + bidx[b] * B;
    float* __restrict mr = m + b * B; float* __restrict vr = v + b * B; int32_t c = 0;
#pragma omp simd reduction(+ : c)
    for (int64_t j = 0; j < B; ++j) c += upd(pr[j], gr[j], mr[j], vr[j], hh);
    count += c;
  }
  return count;
}
int main() {
  const int64_t n = 1 << 25; const int64_t B = 64;
  std::vector<float> p(n), g(n);
  std::mt19937 r(0); std::normal_distribution<float> d; std::uniform_real_distribution<float> u;
  for (auto& x : g) x = d(r);
  std::vector<int64_t> idx; for (int64_t i = 0; i < n; ++i) if (u(r) < 0.25f) idx.push_back(i);
  std::vector<int64_t> bidx; for (int64_t b = 0; b < n / B; ++b) if (u(r) < 0.25f) bidx.push_back(b);
  std::vector<float> m1(idx.size()), v1(idx.size(), 1e-6f), m2(bidx.size() * B), v2(bidx.size() * B, 1e-6f);
  H h{0.9f, 0.1f, 0.999f, 0.001f, 1e-6f, 1e-3f, 1.f, 5000.f, 1.f};
  std::vector<double> te, tb;
  for (int k = 0; k < 9; ++k) {
    auto t0 = std::chrono::steady_clock::now(); elem(p.data(), g.data(), m1.data(), v1.data(), idx.data(), idx.size(), h);
    te.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    t0 = std::chrono::steady_clock::now(); blocks(p.data(), g.data(), m2.data(), v2.data(), bidx.data(), bidx.size(), B, h);
    tb.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(te.begin(), te.end()); std::sort(tb.begin(), tb.end());
  printf("n=%ld density 0.25: element-wise %.2f ms (%zu kept), blocks of 64 %.2f ms (%zu kept)\n", n, te[4], idx.size(), tb[4], bidx.size() * B);
}

// What Stable-SPAM's second read of g costs at the memory limit, without the optimizer around it: an
// AdamW-like update pass over the block matrices (p, g, m, v read; p, m, v written: 28 bytes per entry),
// alone and with the per-tensor statistics Stable-SPAM needs before its update (max|g| and the sum of g^2:
// 4 bytes more per entry), read three ways:
//   - before each tensor's update, in one stream (as a plain reduction would);
//   - before each tensor's update, in four streams a quarter of the tensor apart (as spam_cpu.cpp's abs_max);
//   - during the update of the tensor before, a slice of the next tensor's g per slice of the update, so
//     that the read might fill what the update leaves of the memory system.
// If the update saturates what one core (or both) can move, every way costs about 32/28 = 1.14x the update.
//
//   g++ -O3 -march=native -fopenmp -fno-math-errno -fno-trapping-math \
//       benchmarks/stable_spam_read_bound.cpp -o /tmp/stable_spam_read_bound
//   OMP_NUM_THREADS=1 /tmp/stable_spam_read_bound; OMP_NUM_THREADS=2 /tmp/stable_spam_read_bound
//
// Results: benchmarks/results/stable_spam_read_bound_cpu.md
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

namespace {

struct Tensor {
  float *p, *g, *m, *v;
  int64_t n;
};

struct Stats {
  uint32_t top = 0;  // max |g| as IEEE bits
  double sum = 0.0;
};

constexpr int64_t kSlice = 16384;  // entries of the update per slice of the interleaved read

void update(const Tensor& t, int64_t lo, int64_t hi) {
  float* __restrict p = t.p;
  const float* __restrict g = t.g;
  float* __restrict m = t.m;
  float* __restrict v = t.v;
#pragma omp simd
  for (int64_t i = lo; i < hi; ++i) {
    const float mi = 0.9f * m[i] + 0.1f * g[i];
    const float vi = 0.999f * v[i] + 0.001f * g[i] * g[i];
    m[i] = mi;
    v[i] = vi;
    p[i] = (p[i] - 1e-3f * mi / (std::sqrt(vi) + 1e-8f)) * 0.9999f;
  }
}

// Statistics of g[lo, hi), added to s.
void read_stats(const float* g, int64_t lo, int64_t hi, Stats& s) {
  uint32_t top = s.top;
  float sum = 0.f;
#pragma omp simd reduction(max : top) reduction(+ : sum)
  for (int64_t i = lo; i < hi; ++i) {
    uint32_t bits;
    std::memcpy(&bits, g + i, 4);
    bits &= 0x7fffffffu;
    top = bits > top ? bits : top;
    sum += g[i] * g[i];
  }
  s.top = std::max(s.top, top);
  s.sum += sum;
}

void merge(Stats& into, const Stats& s) {
  into.top = std::max(into.top, s.top);
  into.sum += s.sum;
}

void update_all(const Tensor& t) {
#pragma omp parallel for schedule(static)
  for (int64_t lo = 0; lo < t.n; lo += kSlice) update(t, lo, std::min(t.n, lo + kSlice));
}

Stats one_stream(const Tensor& t) {
  Stats total;
#pragma omp parallel
  {
    Stats s;
#pragma omp for schedule(static) nowait
    for (int64_t lo = 0; lo < t.n; lo += kSlice) read_stats(t.g, lo, std::min(t.n, lo + kSlice), s);
#pragma omp critical
    merge(total, s);
  }
  return total;
}

Stats four_streams(const Tensor& t) {
  const int64_t q = t.n / 4;  // the block matrices' sizes are multiples of 4
  Stats total;
#pragma omp parallel
  {
    Stats s;
#pragma omp for schedule(static) nowait
    for (int64_t lo = 0; lo < q; lo += 4096) {
      for (int k = 0; k < 4; ++k) read_stats(t.g + k * q, lo, std::min(q, lo + 4096), s);
    }
#pragma omp critical
    merge(total, s);
  }
  return total;
}

// t's update, with `next`'s statistics read alongside: slice j of t's update, then the same share of next's g.
Stats update_reading_next(const Tensor& t, const Tensor& next) {
  const int64_t slices = (t.n + kSlice - 1) / kSlice;
  Stats total;
#pragma omp parallel
  {
    Stats s;
#pragma omp for schedule(static) nowait
    for (int64_t j = 0; j < slices; ++j) {
      update(t, j * kSlice, std::min(t.n, (j + 1) * kSlice));
      read_stats(next.g, j * next.n / slices, (j + 1) * next.n / slices, s);
    }
#pragma omp critical
    merge(total, s);
  }
  return total;
}

double ms_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

int main() {
  std::vector<Tensor> tensors;
  for (int i = 0; i < 28; ++i) {
    Tensor t{};
    t.n = (i < 16 ? 1024 : 2752) * int64_t(1024);  // 16 x 1024 x 1024 and 12 x 2752 x 1024, 50.6M entries
    for (float** x : {&t.p, &t.g, &t.m, &t.v}) {
      *x = static_cast<float*>(std::aligned_alloc(64, t.n * sizeof(float)));
#pragma omp parallel for schedule(static)
      for (int64_t k = 0; k < t.n; ++k) (*x)[k] = 1e-3f * static_cast<float>(k % 97 + 1);
    }
    tensors.push_back(t);
  }
  const char* names[] = {"update alone (28 B/entry)", "g read first, one stream (32 B/entry)",
                         "g read first, four streams (32 B/entry)", "next g read during the update (32 B/entry)"};
  constexpr int kWays = 4, kRounds = 21;
  std::vector<double> times[kWays];
  double checksum = 0.0;  // keeps the reads from being optimised away
  for (int round = 0; round < kRounds; ++round) {
    for (int way = 0; way < kWays; ++way) {  // interleaved rounds: drift on a shared machine hits every way
      const auto start = std::chrono::steady_clock::now();
      Stats s;
      if (way == 3) merge(s, four_streams(tensors[0]));
      for (size_t k = 0; k < tensors.size(); ++k) {
        const Tensor& t = tensors[k];
        if (way == 1) merge(s, one_stream(t));
        if (way == 2) merge(s, four_streams(t));
        if (way == 3 && k + 1 < tensors.size()) {
          merge(s, update_reading_next(t, tensors[k + 1]));
        } else {
          update_all(t);
        }
      }
      times[way].push_back(ms_since(start));
      checksum += s.sum + s.top;
    }
  }
  std::printf("%d thread(s), %d interleaved rounds (checksum %g)\n\n", omp_get_max_threads(), kRounds, checksum);
  std::printf("| pass | ms, median | x update alone |\n|---|---:|---:|\n");
  for (auto& t : times) std::sort(t.begin(), t.end());
  const double base = times[0][kRounds / 2];
  for (int way = 0; way < kWays; ++way) {
    std::printf("| %s | %.1f | %.3f |\n", names[way], times[way][kRounds / 2], times[way][kRounds / 2] / base);
  }
}

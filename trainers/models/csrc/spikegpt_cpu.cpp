// SpikeGPT on CPU: RWKV-4's WKV recurrence and the multi-step LIF neuron, each one pass over the tokens per
// (batch row, block of channels) forward and one back, vectorised across channels and run in parallel over
// the blocks; and the element-wise work around them (the token shift with its mixes, the receptance gate, the
// squared ReLU), fused into one pass each way. Inputs are (batch, tokens, channels) as the linear layers
// write them, so nothing is transposed. trainers/models/spikegpt_kernels.py builds this file (through
// spam_opt._cpp_build) and wraps its ops in autograd functions; the pure-PyTorch paths in
// trainers/models/spikegpt.py and spiking_neuron.py are the reference they are tested against.
//
// Registered as torch.ops.spikegpt.<name>_forward and <name>_backward for wkv, lif, shift_mix, sigmoid_gate
// and relu_square.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <numbers>
#include <optional>
#include <tuple>
#include <vector>

namespace {

// Channels per task: two vectors, so that a task reads whole cache lines of each token's row.
template <typename scalar_t>
constexpr int64_t kBlock = 2 * at::vec::Vectorized<scalar_t>::size();
// Below this many (token, channel) entries per thread, splitting the work costs more than it saves
// (generation feeds one token at a time).
constexpr int64_t kMinWork = 1 << 14;

struct Dims {
  int64_t batch, tokens, channels;
};

// Runs f(row, first channel, width) for every (batch row, channel block), in parallel over the blocks.
template <typename scalar_t, typename F>
void for_each_block(int64_t batch, int64_t tokens, int64_t channels, const F& f) {
  constexpr int64_t block = kBlock<scalar_t>;
  const int64_t blocks = (channels + block - 1) / block;
  const int64_t grain = std::max<int64_t>(1, kMinWork / std::max<int64_t>(1, tokens * block));
  at::parallel_for(0, batch * blocks, grain, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t c0 = (task % blocks) * block;
      f(task / blocks, c0, std::min(block, channels - c0));
    }
  });
}

// One task's channels: kVecs vectors, the last ones partly or wholly past the end of the row when the
// channel count is not a multiple of the block (those lanes compute on zeros and are never stored).
template <typename scalar_t>
struct Lanes {
  using Vec = at::vec::Vectorized<scalar_t>;
  static constexpr int kVecs = 2;
  int64_t width;

  int64_t count(int j) const {
    return std::clamp<int64_t>(width - j * Vec::size(), 0, Vec::size());
  }
  Vec load(const scalar_t* row, int j) const {
    return Vec::loadu(row + j * Vec::size(), count(j));
  }
  void store(scalar_t* row, int j, const Vec& x) const {
    if (count(j) > 0) x.store(row + j * Vec::size(), count(j));
  }
};

// Entries per task of an element-wise op.
constexpr int64_t kGrain = 1 << 15;

// f(i, n) for each vector of entries [i, i + n) of [0, numel), in parallel.
template <typename scalar_t, typename F>
void for_each_vector(int64_t numel, const F& f) {
  constexpr int64_t size = at::vec::Vectorized<scalar_t>::size();
  at::parallel_for(0, numel, kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; i += size) f(i, std::min(size, end - i));
  });
}

// The checks of the ops' inputs (the Python wrappers pass them right; these name what is wrong otherwise).
void check_sequence(const char* op, const at::Tensor& x) {
  TORCH_CHECK(x.dim() == 3 && x.is_contiguous(), op,
              ": expected a contiguous (batch, tokens, channels) tensor, got ", x.sizes());
}

void check_shape(const char* op, const at::Tensor& t, at::IntArrayRef sizes, const at::Tensor& like) {
  TORCH_CHECK(t.sizes() == sizes && t.is_contiguous() && t.scalar_type() == like.scalar_type(), op,
              ": expected a contiguous ", like.scalar_type(), " tensor of sizes ", sizes, ", got ",
              t.scalar_type(), " ", t.sizes());
}

void check_like(const char* op, const at::Tensor& t, const at::Tensor& like) {
  check_shape(op, t, like.sizes(), like);
}

// ---- WKV ------------------------------------------------------------------------------------------------
//
// Per channel, with the sums over past tokens kept as s * exp(p) and d * exp(p) (s, d the scaled numerator
// and denominator, p the log-scale; the carried state is (s, d, p)):
//   y_t   = (o s + n v_t) / (o d + n),  o = exp(p - q), n = exp(u + k_t - q), q = max(p, u + k_t)
//   p'    = max(p + w, k_t),  s' = a s + b v_t,  d' = a d + b,  a = exp(p + w - p'), b = exp(k_t - p')
// which is wkv_recurrent in spikegpt.py op for op. One of each pair of exponentials is exp(0) = 1, so each
// pair costs one exp. The log-scales are reference points only (the outputs do not depend on them), so the
// backward pass holds them constant, as the parallel reference detaches its running maxima.

template <typename scalar_t>
struct WKVToken {
  using Vec = at::vec::Vectorized<scalar_t>;
  Vec o, n, z, y;     // the output's weights of the past and of the current token, its denominator, output
  Vec a, b, p_next;   // the decay of the past sums, the current token's weight in them, the new log-scale

  WKVToken(const Vec& p, const Vec& s, const Vec& d, const Vec& w, const Vec& u, const Vec& k, const Vec& v) {
    const Vec one(1), bonus = u + k;
    const Vec e1 = (p - bonus).abs().neg().exp();
    const Vec past_larger = p >= bonus;
    o = Vec::blendv(e1, one, past_larger);
    n = Vec::blendv(one, e1, past_larger);
    z = o * d + n;
    y = (o * s + n * v) / z;
    const Vec decayed = p + w;
    p_next = at::vec::maximum(decayed, k);
    const Vec e2 = (decayed - k).abs().neg().exp();
    const Vec decayed_larger = decayed >= k;
    a = Vec::blendv(e2, one, decayed_larger);
    b = Vec::blendv(one, e2, decayed_larger);
  }
};

// The sums carried past the tokens, for one vector of channels.
template <typename scalar_t>
struct WKVSums {
  using Vec = at::vec::Vectorized<scalar_t>;
  Vec p, s, d;

  void pass(const WKVToken<scalar_t>& tok, const Vec& v) {
    s = tok.a * s + tok.b * v;
    d = tok.a * d + tok.b;
    p = tok.p_next;
  }
};

// The ops' inputs: w, u (channels); k, v (batch, tokens, channels); the carried sums (batch, channels).
template <typename scalar_t>
struct WKVInputs {
  const scalar_t *w, *u, *k, *v, *num, *den, *log_scale;
  Dims dims;

  WKVInputs(const at::Tensor& w_, const at::Tensor& u_, const at::Tensor& k_, const at::Tensor& v_,
            const at::Tensor& num_, const at::Tensor& den_, const at::Tensor& log_scale_)
      : w(w_.const_data_ptr<scalar_t>()), u(u_.const_data_ptr<scalar_t>()), k(k_.const_data_ptr<scalar_t>()),
        v(v_.const_data_ptr<scalar_t>()), num(num_.const_data_ptr<scalar_t>()),
        den(den_.const_data_ptr<scalar_t>()), log_scale(log_scale_.const_data_ptr<scalar_t>()),
        dims{k_.size(0), k_.size(1), k_.size(2)} {}
};

// Walks vector j of a task's channels through its row's tokens from the carried sums, calling
// each(t, index of token t's entries, the sums before token t, token t's step); returns the final sums.
template <typename scalar_t, typename F>
WKVSums<scalar_t> wkv_walk(const WKVInputs<scalar_t>& in, const Lanes<scalar_t>& lanes, int j, int64_t row,
                           int64_t c0, const F& each) {
  const auto [batch, tokens, channels] = in.dims;
  const int64_t state_at = row * channels + c0;
  const auto w = lanes.load(in.w + c0, j), u = lanes.load(in.u + c0, j);
  WKVSums<scalar_t> sums{lanes.load(in.log_scale + state_at, j), lanes.load(in.num + state_at, j),
                         lanes.load(in.den + state_at, j)};
  for (int64_t t = 0; t < tokens; ++t) {
    const int64_t at = (row * tokens + t) * channels + c0;
    const auto v = lanes.load(in.v + at, j);
    const WKVToken<scalar_t> tok(sums.p, sums.s, sums.d, w, u, lanes.load(in.k + at, j), v);
    each(t, at, sums, tok);
    sums.pass(tok, v);
  }
  return sums;
}

void check_wkv(const char* op, const at::Tensor& w, const at::Tensor& u, const at::Tensor& k,
               const at::Tensor& v, const at::Tensor& num, const at::Tensor& den, const at::Tensor& log_scale) {
  check_sequence(op, k);
  check_like(op, v, k);
  for (const auto& t : {w, u}) check_shape(op, t, {k.size(2)}, k);
  for (const auto& t : {num, den, log_scale}) check_shape(op, t, {k.size(0), k.size(2)}, k);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> wkv_forward(
    const at::Tensor& w, const at::Tensor& u, const at::Tensor& k, const at::Tensor& v, const at::Tensor& num,
    const at::Tensor& den, const at::Tensor& log_scale) {
  check_wkv("wkv_forward", w, u, k, v, num, den, log_scale);
  auto out = at::empty_like(k);
  auto num_out = at::empty_like(num), den_out = at::empty_like(den), log_scale_out = at::empty_like(log_scale);
  AT_DISPATCH_FLOATING_TYPES(k.scalar_type(), "wkv_forward", [&] {
    const WKVInputs<scalar_t> in(w, u, k, v, num, den, log_scale);
    scalar_t *y = out.data_ptr<scalar_t>(), *s = num_out.data_ptr<scalar_t>();
    scalar_t *d = den_out.data_ptr<scalar_t>(), *p = log_scale_out.data_ptr<scalar_t>();
    const auto [batch, tokens, channels] = in.dims;
    for_each_block<scalar_t>(batch, tokens, channels, [&](int64_t row, int64_t c0, int64_t width) {
      const Lanes<scalar_t> lanes{width};
      for (int j = 0; j < lanes.kVecs; ++j) {
        const auto store_output = [&](int64_t, int64_t at, const auto&, const auto& tok) {
          lanes.store(y + at, j, tok.y);
        };
        const auto sums = wkv_walk(in, lanes, j, row, c0, store_output);
        const int64_t state_at = row * channels + c0;
        lanes.store(s + state_at, j, sums.s);
        lanes.store(d + state_at, j, sums.d);
        lanes.store(p + state_at, j, sums.p);
      }
    });
  });
  return {out, num_out, den_out, log_scale_out};
}

// The gradients coming in (of the output, and of the final sums or null for none) and going out (of k, v
// and the carried sums; of w and u as partial sums per row, (batch, channels)).
template <typename scalar_t>
struct WKVGrads {
  const scalar_t *out, *num, *den;
  scalar_t *k, *v, *num0, *den0, *w_rows, *u_rows;
};

// Recomputes a vector of channels' sums token by token into a buffer (tokens x one vector; the forward pass
// saves nothing but its inputs), then walks back: with alpha, beta the gradients of the scaled sums s, d
// after token t,
//   dL/dk_t = (alpha v_t + beta) b + g n (v_t - y_t),  dL/dv_t = alpha b + g n,  g = dL/dy_t / z
//   dL/du  += g n (v_t - y_t),  dL/dw += (alpha s + beta d) a   (s, d before token t)
//   alpha <- alpha a + g o,  beta <- beta a - g o y_t           (the gradients of the sums before token t)
template <typename scalar_t>
void wkv_backward_impl(const WKVInputs<scalar_t>& in, const WKVGrads<scalar_t>& g) {
  using Vec = at::vec::Vectorized<scalar_t>;
  const auto [batch, tokens, channels] = in.dims;
  constexpr int64_t vsize = Vec::size();
  for_each_block<scalar_t>(batch, tokens, channels, [&](int64_t row, int64_t c0, int64_t width) {
    const Lanes<scalar_t> lanes{width};
    const int64_t state_at = row * channels + c0;
    std::vector<scalar_t> trail(3 * tokens * vsize);  // p, s, d before each token
    scalar_t *ps = trail.data(), *ss = ps + tokens * vsize, *ds = ss + tokens * vsize;
    for (int j = 0; j < lanes.kVecs; ++j) {
      wkv_walk(in, lanes, j, row, c0, [&](int64_t t, int64_t, const WKVSums<scalar_t>& sums, const auto&) {
        sums.p.store(ps + t * vsize);
        sums.s.store(ss + t * vsize);
        sums.d.store(ds + t * vsize);
      });
      const Vec w = lanes.load(in.w + c0, j), u = lanes.load(in.u + c0, j);
      Vec alpha = g.num ? lanes.load(g.num + state_at, j) : Vec(0);
      Vec beta = g.den ? lanes.load(g.den + state_at, j) : Vec(0);
      Vec grad_w(0), grad_u(0);
      for (int64_t t = tokens - 1; t >= 0; --t) {
        const int64_t at = (row * tokens + t) * channels + c0;
        const Vec v = lanes.load(in.v + at, j);
        const Vec s = Vec::loadu(ss + t * vsize), d = Vec::loadu(ds + t * vsize);
        const WKVToken<scalar_t> tok(Vec::loadu(ps + t * vsize), s, d, w, u, lanes.load(in.k + at, j), v);
        const Vec gy = lanes.load(g.out + at, j) / tok.z;
        const Vec gn = gy * tok.n;
        const Vec gnk = gn * (v - tok.y);
        lanes.store(g.k + at, j, (alpha * v + beta) * tok.b + gnk);
        lanes.store(g.v + at, j, alpha * tok.b + gn);
        grad_u = grad_u + gnk;
        grad_w = grad_w + (alpha * s + beta * d) * tok.a;
        const Vec go = gy * tok.o;
        alpha = alpha * tok.a + go;
        beta = beta * tok.a - go * tok.y;
      }
      lanes.store(g.num0 + state_at, j, alpha);
      lanes.store(g.den0 + state_at, j, beta);
      lanes.store(g.w_rows + state_at, j, grad_w);
      lanes.store(g.u_rows + state_at, j, grad_u);
    }
  });
}

// Gradients of (w, u, k, v, num, den) given those of the output and of the final (num, den) (None: zero).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> wkv_backward(
    const at::Tensor& w, const at::Tensor& u, const at::Tensor& k, const at::Tensor& v, const at::Tensor& num,
    const at::Tensor& den, const at::Tensor& log_scale, const at::Tensor& grad_out,
    const std::optional<at::Tensor>& grad_num, const std::optional<at::Tensor>& grad_den) {
  check_wkv("wkv_backward", w, u, k, v, num, den, log_scale);
  check_like("wkv_backward", grad_out, k);
  for (const auto& t : {grad_num, grad_den}) {
    if (t) check_like("wkv_backward", *t, num);
  }
  auto grad_k = at::empty_like(k), grad_v = at::empty_like(v);
  auto grad_num0 = at::empty_like(num), grad_den0 = at::empty_like(den);
  auto w_rows = at::empty_like(num), u_rows = at::empty_like(num);
  AT_DISPATCH_FLOATING_TYPES(k.scalar_type(), "wkv_backward", [&] {
    const auto given = [](const std::optional<at::Tensor>& t) {
      return t ? t->const_data_ptr<scalar_t>() : nullptr;
    };
    wkv_backward_impl<scalar_t>(
        WKVInputs<scalar_t>(w, u, k, v, num, den, log_scale),
        WKVGrads<scalar_t>{grad_out.const_data_ptr<scalar_t>(), given(grad_num), given(grad_den),
                           grad_k.data_ptr<scalar_t>(), grad_v.data_ptr<scalar_t>(),
                           grad_num0.data_ptr<scalar_t>(), grad_den0.data_ptr<scalar_t>(),
                           w_rows.data_ptr<scalar_t>(), u_rows.data_ptr<scalar_t>()});
  });
  return {w_rows.sum(0), u_rows.sum(0), grad_k, grad_v, grad_num0, grad_den0};
}

// ---- LIF ------------------------------------------------------------------------------------------------
//
// spiking_neuron.py states the neuron: h_t = v_{t-1} (1 - 1/tau) + x_t / tau, spike s_t = [h_t >= threshold],
// v_t = h_t where h_t < threshold, else 0 (a NaN potential resets and does not fire, as in the reference).
// The backward pass needs only the pre-reset potentials h, which the forward pass writes when asked to.

struct LIFConstants {
  double tau, v_threshold, alpha;
  double decay() const { return 1.0 - 1.0 / tau; }
};

template <typename scalar_t>
void lif_forward_impl(const scalar_t* x, const scalar_t* v0, scalar_t* spikes, scalar_t* v_last,
                      scalar_t* potentials, Dims dims, LIFConstants c) {
  using Vec = at::vec::Vectorized<scalar_t>;
  const auto [batch, tokens, channels] = dims;
  const Vec tau(static_cast<scalar_t>(c.tau)), decay(static_cast<scalar_t>(c.decay()));
  const Vec threshold(static_cast<scalar_t>(c.v_threshold)), zero(0), one(1);
  for_each_block<scalar_t>(batch, tokens, channels, [&](int64_t row, int64_t c0, int64_t width) {
    const Lanes<scalar_t> lanes{width};
    const int64_t state_at = row * channels + c0;
    for (int j = 0; j < lanes.kVecs; ++j) {
      Vec v = lanes.load(v0 + state_at, j);
      for (int64_t t = 0; t < tokens; ++t) {
        const int64_t at = (row * tokens + t) * channels + c0;
        const Vec h = lanes.load(x + at, j) / tau + v * decay;
        lanes.store(spikes + at, j, Vec::blendv(zero, one, h >= threshold));
        v = Vec::blendv(zero, h, h < threshold);
        if (potentials) lanes.store(potentials + at, j, h);
      }
      lanes.store(v_last + state_at, j, v);
    }
  });
}

// Spikes, the membrane potential after the last token, and (with keep_potentials, for the backward pass)
// the pre-reset potentials; otherwise an empty tensor in their place.
std::tuple<at::Tensor, at::Tensor, at::Tensor> lif_forward(const at::Tensor& x, const at::Tensor& v0, double tau,
                                                           double v_threshold, bool keep_potentials) {
  check_sequence("lif_forward", x);
  check_shape("lif_forward", v0, {x.size(0), x.size(2)}, x);
  auto spikes = at::empty_like(x), v_last = at::empty_like(v0);
  auto potentials = keep_potentials ? at::empty_like(x) : at::empty({0}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "lif_forward", [&] {
    lif_forward_impl<scalar_t>(x.const_data_ptr<scalar_t>(), v0.const_data_ptr<scalar_t>(),
                               spikes.data_ptr<scalar_t>(), v_last.data_ptr<scalar_t>(),
                               keep_potentials ? potentials.data_ptr<scalar_t>() : nullptr,
                               Dims{x.size(0), x.size(1), x.size(2)}, LIFConstants{tau, v_threshold, 0.0});
  });
  return {spikes, v_last, potentials};
}

// Back through the tokens, with the arctan surrogate sg(h) = (alpha / 2) / (1 + (pi/2 alpha (h - thr))^2)
// for ds/dh and the reset not detached (dv_t/dh_t = [h_t < thr] - h_t sg(h_t)):
//   dL/dh_t = dL/ds_t sg(h_t) + dL/dh_{t+1} (1 - 1/tau) ([h_t < thr] - h_t sg(h_t)),  dL/dx_t = dL/dh_t / tau
template <typename scalar_t>
void lif_backward_impl(const scalar_t* grad_spikes, const scalar_t* potentials, scalar_t* grad_x,
                       scalar_t* grad_v0, Dims dims, LIFConstants c) {
  using Vec = at::vec::Vectorized<scalar_t>;
  const auto [batch, tokens, channels] = dims;
  const Vec tau(static_cast<scalar_t>(c.tau)), decay(static_cast<scalar_t>(c.decay()));
  const Vec threshold(static_cast<scalar_t>(c.v_threshold)), zero(0), one(1);
  const Vec slope(static_cast<scalar_t>(std::numbers::pi / 2 * c.alpha));
  const Vec half_alpha(static_cast<scalar_t>(c.alpha / 2));
  for_each_block<scalar_t>(batch, tokens, channels, [&](int64_t row, int64_t c0, int64_t width) {
    const Lanes<scalar_t> lanes{width};
    for (int j = 0; j < lanes.kVecs; ++j) {
      Vec grad_h(0);
      for (int64_t t = tokens - 1; t >= 0; --t) {
        const int64_t at = (row * tokens + t) * channels + c0;
        const Vec h = lanes.load(potentials + at, j);
        const Vec y = (h - threshold) * slope;
        const Vec surrogate = (one + y * y).reciprocal() * half_alpha;
        const Vec carry = (Vec::blendv(zero, one, h < threshold) - h * surrogate) * decay;
        grad_h = lanes.load(grad_spikes + at, j) * surrogate + grad_h * carry;
        lanes.store(grad_x + at, j, grad_h / tau);
      }
      lanes.store(grad_v0 + row * channels + c0, j, grad_h * decay);
    }
  });
}

std::tuple<at::Tensor, at::Tensor> lif_backward(const at::Tensor& grad_spikes, const at::Tensor& potentials,
                                                double tau, double v_threshold, double alpha) {
  check_sequence("lif_backward", potentials);
  check_like("lif_backward", grad_spikes, potentials);
  const int64_t batch = potentials.size(0), tokens = potentials.size(1), channels = potentials.size(2);
  auto grad_x = at::empty_like(potentials);
  auto grad_v0 = at::empty({batch, channels}, potentials.options());
  AT_DISPATCH_FLOATING_TYPES(potentials.scalar_type(), "lif_backward", [&] {
    lif_backward_impl<scalar_t>(grad_spikes.const_data_ptr<scalar_t>(), potentials.const_data_ptr<scalar_t>(),
                                grad_x.data_ptr<scalar_t>(), grad_v0.data_ptr<scalar_t>(),
                                Dims{batch, tokens, channels}, LIFConstants{tau, v_threshold, alpha});
  });
  return {grad_x, grad_v0};
}

// ---- Token shift and mix ------------------------------------------------------------------------------
//
// RWKV's inputs to its projections: mixed_i = lerp(xx, x, m_i) = xx + m_i (x - xx), xx being x shifted one
// token back (the carried previous token first), for the M mixing vectors m_i of one block (M <= 3). One
// read of x instead of a shifted copy and M lerps; one pass back instead of M lerp backwards, their sums
// and the shift's.

constexpr int64_t kMaxMix = 3;

template <typename scalar_t>
void shift_mix_forward_impl(const scalar_t* x, const scalar_t* previous,
                            const std::vector<const scalar_t*>& mixes, const std::vector<scalar_t*>& outs,
                            Dims dims) {
  using Vec = at::vec::Vectorized<scalar_t>;
  const auto [batch, tokens, channels] = dims;
  const int64_t count = static_cast<int64_t>(outs.size());
  for_each_block<scalar_t>(batch, tokens, channels, [&](int64_t row, int64_t c0, int64_t width) {
    const Lanes<scalar_t> lanes{width};
    for (int j = 0; j < lanes.kVecs; ++j) {
      Vec m[kMaxMix];
      for (int64_t i = 0; i < count; ++i) m[i] = lanes.load(mixes[i] + c0, j);
      Vec xx = lanes.load(previous + row * channels + c0, j);
      for (int64_t t = 0; t < tokens; ++t) {
        const int64_t at = (row * tokens + t) * channels + c0;
        const Vec xt = lanes.load(x + at, j), diff = xt - xx;
        for (int64_t i = 0; i < count; ++i) lanes.store(outs[i] + at, j, xx + m[i] * diff);
        xx = xt;
      }
    }
  });
}

void check_mixes(const char* op, at::TensorList mixes, const at::Tensor& x, const at::Tensor& previous) {
  check_sequence(op, x);
  check_shape(op, previous, {x.size(0), x.size(2)}, x);
  TORCH_CHECK(!mixes.empty() && static_cast<int64_t>(mixes.size()) <= kMaxMix, op, ": 1 to ", kMaxMix,
              " mixing vectors, got ", mixes.size());
  for (const auto& m : mixes) check_shape(op, m, {x.size(2)}, x);
}

template <typename scalar_t>
std::vector<const scalar_t*> pointers(at::TensorList tensors) {
  std::vector<const scalar_t*> ptrs;
  for (const auto& t : tensors) ptrs.push_back(t.const_data_ptr<scalar_t>());
  return ptrs;
}

std::vector<at::Tensor> shift_mix_forward(const at::Tensor& x, const at::Tensor& previous,
                                          at::TensorList mixes) {
  check_mixes("shift_mix_forward", mixes, x, previous);
  std::vector<at::Tensor> outs;
  for (size_t i = 0; i < mixes.size(); ++i) outs.push_back(at::empty_like(x));
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "shift_mix_forward", [&] {
    std::vector<scalar_t*> out_ptrs;
    for (auto& o : outs) out_ptrs.push_back(o.data_ptr<scalar_t>());
    shift_mix_forward_impl<scalar_t>(x.const_data_ptr<scalar_t>(), previous.const_data_ptr<scalar_t>(),
                                     pointers<scalar_t>(mixes), out_ptrs,
                                     Dims{x.size(0), x.size(1), x.size(2)});
  });
  return outs;
}

// With g_i the gradient of mixed_i: dL/dx_t = sum_i g_i,t m_i + g_i,t+1 (1 - m_i) (the next token's shifted
// input is x_t), dL/dprevious = sum_i g_i,0 (1 - m_i), and dL/dm_i = the sum over rows and tokens of
// g_i,t (x_t - xx_t).
template <typename scalar_t>
void shift_mix_backward_impl(const std::vector<const scalar_t*>& grads, const scalar_t* x,
                             const scalar_t* previous, const std::vector<const scalar_t*>& mixes,
                             scalar_t* grad_x, scalar_t* grad_previous, scalar_t* grad_mix_rows, Dims dims) {
  using Vec = at::vec::Vectorized<scalar_t>;
  const auto [batch, tokens, channels] = dims;
  const int64_t count = static_cast<int64_t>(grads.size());
  for_each_block<scalar_t>(batch, tokens, channels, [&](int64_t row, int64_t c0, int64_t width) {
    const Lanes<scalar_t> lanes{width};
    const Vec one(1);
    for (int j = 0; j < lanes.kVecs; ++j) {
      Vec m[kMaxMix], keep[kMaxMix], grad_m[kMaxMix];
      for (int64_t i = 0; i < count; ++i) {
        m[i] = lanes.load(mixes[i] + c0, j);
        keep[i] = one - m[i];
        grad_m[i] = Vec(0);
      }
      Vec xx = lanes.load(previous + row * channels + c0, j), pending(0);
      for (int64_t t = 0; t < tokens; ++t) {
        const int64_t at = (row * tokens + t) * channels + c0;
        const Vec xt = lanes.load(x + at, j), diff = xt - xx;
        Vec now(0), back(0);  // to x_t, and to its predecessor
        for (int64_t i = 0; i < count; ++i) {
          const Vec g = lanes.load(grads[i] + at, j);
          now = now + g * m[i];
          back = back + g * keep[i];
          grad_m[i] = grad_m[i] + g * diff;
        }
        if (t == 0) lanes.store(grad_previous + row * channels + c0, j, back);
        else lanes.store(grad_x + at - channels, j, pending + back);
        pending = now;
        xx = xt;
      }
      if (tokens > 0) lanes.store(grad_x + (row * tokens + tokens - 1) * channels + c0, j, pending);
      else lanes.store(grad_previous + row * channels + c0, j, pending);
      for (int64_t i = 0; i < count; ++i) {
        lanes.store(grad_mix_rows + (row * count + i) * channels + c0, j, grad_m[i]);
      }
    }
  });
}

// The gradients of x, previous and each mixing vector.
std::tuple<at::Tensor, at::Tensor, std::vector<at::Tensor>> shift_mix_backward(at::TensorList grads,
                                                                               const at::Tensor& x,
                                                                               const at::Tensor& previous,
                                                                               at::TensorList mixes) {
  check_mixes("shift_mix_backward", mixes, x, previous);
  TORCH_CHECK(grads.size() == mixes.size(), "shift_mix_backward: one gradient per mixing vector");
  for (const auto& g : grads) check_like("shift_mix_backward", g, x);
  const int64_t batch = x.size(0), tokens = x.size(1), channels = x.size(2);
  const int64_t count = static_cast<int64_t>(mixes.size());
  auto grad_x = at::empty_like(x), grad_previous = at::empty_like(previous);
  auto grad_mix_rows = at::empty({batch, count, channels}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "shift_mix_backward", [&] {
    shift_mix_backward_impl<scalar_t>(pointers<scalar_t>(grads), x.const_data_ptr<scalar_t>(),
                                      previous.const_data_ptr<scalar_t>(), pointers<scalar_t>(mixes),
                                      grad_x.data_ptr<scalar_t>(), grad_previous.data_ptr<scalar_t>(),
                                      grad_mix_rows.data_ptr<scalar_t>(), Dims{batch, tokens, channels});
  });
  return {grad_x, grad_previous, grad_mix_rows.sum(0).unbind(0)};
}

// ---- Element-wise: the receptance gate and the squared ReLU ---------------------------------------------
//
// sigmoid(r) * x (both mixes' outputs) and relu(k)^2 (the channel-mix's hidden layer), each one pass
// forward and one back, with nothing saved but their inputs.

// Applies f to each vector of entries of the inputs (contiguous, of one shape and dtype) and stores the
// vectors it returns (a std::array) into as many new tensors.
template <size_t kOut, size_t kIn, typename F>
std::array<at::Tensor, kOut> elementwise(const char* op, const std::array<at::Tensor, kIn>& inputs, const F& f) {
  for (const auto& t : inputs) check_like(op, t, inputs[0]);
  std::array<at::Tensor, kOut> outs;
  for (auto& out : outs) out = at::empty_like(inputs[0]);
  AT_DISPATCH_FLOATING_TYPES(inputs[0].scalar_type(), "spikegpt_elementwise", [&] {
    using Vec = at::vec::Vectorized<scalar_t>;
    std::array<const scalar_t*, kIn> in;
    std::array<scalar_t*, kOut> out;
    for (size_t j = 0; j < kIn; ++j) in[j] = inputs[j].template const_data_ptr<scalar_t>();
    for (size_t j = 0; j < kOut; ++j) out[j] = outs[j].template data_ptr<scalar_t>();
    for_each_vector<scalar_t>(inputs[0].numel(), [&](int64_t i, int64_t n) {
      std::array<Vec, kIn> x;
      for (size_t j = 0; j < kIn; ++j) x[j] = Vec::loadu(in[j] + i, n);
      const std::array<Vec, kOut> y = std::apply(f, x);
      for (size_t j = 0; j < kOut; ++j) y[j].store(out[j] + i, n);
    });
  });
  return outs;
}

template <typename Vec>
Vec sigmoid(const Vec& r) {
  return (Vec(1) + r.neg().exp()).reciprocal();
}

at::Tensor sigmoid_gate_forward(const at::Tensor& r, const at::Tensor& x) {
  return elementwise<1>("sigmoid_gate_forward", std::array{r, x},
                        [](auto r, auto x) { return std::array{sigmoid(r) * x}; })[0];
}

std::tuple<at::Tensor, at::Tensor> sigmoid_gate_backward(const at::Tensor& grad, const at::Tensor& r,
                                                         const at::Tensor& x) {
  const auto [grad_r, grad_x] = elementwise<2>("sigmoid_gate_backward", std::array{grad, r, x},
                                               [](auto g, auto r, auto x) {
                                                 const auto s = sigmoid(r);
                                                 return std::array{g * x * (decltype(s)(1) - s) * s, g * s};
                                               });
  return {grad_r, grad_x};
}

at::Tensor relu_square_forward(const at::Tensor& k) {
  return elementwise<1>("relu_square_forward", std::array{k}, [](auto k) {
    const auto relu = at::vec::clamp_min(k, decltype(k)(0));
    return std::array{relu * relu};
  })[0];
}

at::Tensor relu_square_backward(const at::Tensor& grad, const at::Tensor& k) {
  return elementwise<1>("relu_square_backward", std::array{grad, k}, [](auto g, auto k) {
    const auto relu = at::vec::clamp_min(k, decltype(k)(0));
    return std::array{g * (relu + relu)};
  })[0];
}

}  // namespace

TORCH_LIBRARY(spikegpt, m) {
  m.def("wkv_forward(Tensor w, Tensor u, Tensor k, Tensor v, Tensor num, Tensor den, Tensor log_scale) "
        "-> (Tensor, Tensor, Tensor, Tensor)");
  m.def("wkv_backward(Tensor w, Tensor u, Tensor k, Tensor v, Tensor num, Tensor den, Tensor log_scale, "
        "Tensor grad_out, Tensor? grad_num, Tensor? grad_den) "
        "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("lif_forward(Tensor x, Tensor v0, float tau, float v_threshold, bool keep_potentials) "
        "-> (Tensor, Tensor, Tensor)");
  m.def("lif_backward(Tensor grad_spikes, Tensor potentials, float tau, float v_threshold, float alpha) "
        "-> (Tensor, Tensor)");
  m.def("shift_mix_forward(Tensor x, Tensor previous, Tensor[] mixes) -> Tensor[]");
  m.def("shift_mix_backward(Tensor[] grads, Tensor x, Tensor previous, Tensor[] mixes) "
        "-> (Tensor, Tensor, Tensor[])");
  m.def("sigmoid_gate_forward(Tensor r, Tensor x) -> Tensor");
  m.def("sigmoid_gate_backward(Tensor grad, Tensor r, Tensor x) -> (Tensor, Tensor)");
  m.def("relu_square_forward(Tensor k) -> Tensor");
  m.def("relu_square_backward(Tensor grad, Tensor k) -> Tensor");
}

TORCH_LIBRARY_IMPL(spikegpt, CPU, m) {
  m.impl("wkv_forward", &wkv_forward);
  m.impl("wkv_backward", &wkv_backward);
  m.impl("lif_forward", &lif_forward);
  m.impl("lif_backward", &lif_backward);
  m.impl("shift_mix_forward", &shift_mix_forward);
  m.impl("shift_mix_backward", &shift_mix_backward);
  m.impl("sigmoid_gate_forward", &sigmoid_gate_forward);
  m.impl("sigmoid_gate_backward", &sigmoid_gate_backward);
  m.impl("relu_square_forward", &relu_square_forward);
  m.impl("relu_square_backward", &relu_square_backward);
}

"""SpikeGPT's C++ CPU kernels against independent references: the WKV against its float64 definition and
numerical derivatives, the element-wise kernels against the torch expressions they replace, the LIF
kernel against the pure-PyTorch neuron (snnTorch checks both in test_spiking_neuron.py), and the whole
model on the kernels against the model on its reference paths; and what happens when they cannot be built."""

from __future__ import annotations

import contextlib
import math
import types

import pytest
import torch
from reference_wkv import naive_wkv, wkv_inputs
from torch import nn

from trainers.models import spikegpt_kernels
from trainers.models.spikegpt import (
    SpikeGPTConfig,
    SpikeGPTForCausalLM,
    WKVState,
    wkv_parallel,
    wkv_recurrent,
)
from trainers.models.spikegpt_kernels import (
    backend,
    lif_kernel,
    path_for,
    relu_square_kernel,
    shift_mix_kernel,
    sigmoid_gate_kernel,
    wkv_kernel,
)
from trainers.models.spiking_neuron import MultiStepLIF


@pytest.fixture(autouse=True, scope="module")
def built():
    assert path_for(torch.zeros(1), "wkv") == "cpp", "SpikeGPT's C++ kernels did not build (see the warning)"


def on(path):
    """The context in which the model runs ``path``: "kernels" (the default on CPU) or "reference"."""
    return backend("reference") if path == "reference" else contextlib.nullcontext()


def random_state(batch, channels, dtype, seed=7):
    """A carried WKV state such as a previous call leaves: positive sums at some log-scale."""
    gen = torch.Generator().manual_seed(seed)
    num = torch.randn(batch, channels, generator=gen, dtype=torch.float64)
    den = torch.rand(batch, channels, generator=gen, dtype=torch.float64) + 0.5
    log_scale = torch.randn(batch, channels, generator=gen, dtype=torch.float64) * 3
    return WKVState(*(x.to(dtype) for x in (num, den, log_scale)))


# Channels 5 and 37 leave partial vectors in the last block of a row (blocks of 16 float32 / 8 float64).
# Keys near 200 overflow a naive float32 WKV, keys near 1000 a naive float64 one; in float32 such keys also
# cost the log-weights ~1e-5 of rounding per token, which the references' forms share (test_spikegpt.py).
@pytest.mark.parametrize("dtype, k_scale, k_offset, tol", [(torch.float32, 3.0, 0.0, 1e-5),
                                                          (torch.float32, 30.0, 200.0, 2e-4),
                                                          (torch.float64, 300.0, 1000.0, 1e-10)])
@pytest.mark.parametrize("channels", [5, 37])
def test_wkv_matches_float64_definition(dtype, k_scale, k_offset, tol, channels, torch_threads):
    w, u, k, v = wkv_inputs(0, batch=3, tokens=41, channels=channels, k_scale=k_scale, k_offset=k_offset,
                            dtype=dtype)
    expected = naive_wkv(w, u, k, v).to(dtype)
    empty = WKVState(*(x.to(dtype) for x in WKVState.empty(3, channels, k.device)))
    out, *sums = wkv_kernel(w, u, k, v, *empty)
    torch.testing.assert_close(out, expected, rtol=10 * tol, atol=tol)
    # Split anywhere, the carried state continues the sequence, with one token per call too.
    state, pieces = empty, []
    for start, stop in [(0, 17), (17, 18), (18, 19), (19, 41)]:
        piece, *state = wkv_kernel(w, u, k[:, start:stop], v[:, start:stop], *state)
        pieces.append(piece)
    torch.testing.assert_close(torch.cat(pieces, dim=1), expected, rtol=10 * tol, atol=tol)
    # The state is the recurrent reference's, operation for operation but for the exponential's last bit.
    _, ref_state = wkv_recurrent(w, u, k, v, empty)
    for ours, ref in zip(sums, ref_state):
        torch.testing.assert_close(ours, ref, rtol=1e-5 if dtype == torch.float32 else 1e-12, atol=0)


def test_wkv_gradients_match_float64_definition(torch_threads):
    inputs = wkv_inputs(1, batch=3, tokens=29, channels=19)
    ours = [x.clone().requires_grad_() for x in inputs]
    ref = [x.double().requires_grad_() for x in inputs]
    upstream = torch.randn(3, 29, 19, generator=torch.Generator().manual_seed(2))
    (wkv_kernel(*ours, *WKVState.empty(3, 19, ours[0].device))[0] * upstream).sum().backward()
    (naive_wkv(*ref) * upstream.double()).sum().backward()
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a.grad, b.grad.float(), rtol=1e-4, atol=1e-5)


def test_wkv_output_gradients_match_numerical_derivatives_from_a_carried_state():
    """gradcheck in float64 of the output in w, u, k, v and the carried sums (the log-scale is a reference
    point, not an input of the function: the output does not depend on it)."""
    w, u, k, v = wkv_inputs(3, batch=2, tokens=7, channels=3, dtype=torch.float64)
    num, den, log_scale = random_state(2, 3, torch.float64)
    leaves = [x.clone().requires_grad_() for x in (w, u, k, v, num, den)]
    assert torch.autograd.gradcheck(lambda *xs: wkv_kernel(*xs, log_scale)[0], leaves)


def test_wkv_state_gradients_match_the_parallel_reference():
    """Gradients that flow into the carried sums and out of the new ones, as training through a carried
    state would use them: the parallel reference's, whose log-scales are detached too."""
    w, u, k, v = wkv_inputs(4, batch=2, tokens=23, channels=11, dtype=torch.float64)
    state = random_state(2, 11, torch.float64)
    gen = torch.Generator().manual_seed(5)
    weights = [torch.randn(2, 23, 11, generator=gen, dtype=torch.float64)] + \
        [torch.randn(2, 11, generator=gen, dtype=torch.float64) for _ in range(2)]

    def kernel(w, u, k, v, num, den):
        out, num, den, _ = wkv_kernel(w, u, k, v, num, den, state.log_scale)
        return out, num, den

    def reference(w, u, k, v, num, den):
        out, new = wkv_parallel(w, u, k, v, WKVState(num, den, state.log_scale))
        return out, new.num, new.den

    grads = []
    for path in (kernel, reference):
        leaves = [x.clone().requires_grad_() for x in (w, u, k, v, state.num, state.den)]
        sum((o * g).sum() for o, g in zip(path(*leaves), weights)).backward()
        grads.append([x.grad for x in leaves])
    for ours, ref in zip(*grads):
        torch.testing.assert_close(ours, ref, rtol=1e-9, atol=1e-12)


def test_shift_mix_matches_shift_and_lerp(torch_threads):
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(3, 40, 37, generator=gen, dtype=torch.float64, requires_grad=True)
    previous = torch.randn(3, 37, generator=gen, dtype=torch.float64, requires_grad=True)
    mixes = [torch.rand(37, generator=gen, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    leaves = [x, previous, *mixes]
    xx = torch.cat([previous[:, None], x[:, :-1]], dim=1)
    expected = [xx + m * (x - xx) for m in mixes]
    ours = shift_mix_kernel(x, previous, mixes)
    upstream = [torch.randn(3, 40, 37, generator=gen, dtype=torch.float64) for _ in mixes]
    for o, e in zip(ours, expected):
        torch.testing.assert_close(o, e, rtol=1e-14, atol=1e-14)
    grads = [torch.autograd.grad(sum((o * g).sum() for o, g in zip(outs, upstream)), leaves)
             for outs in (ours, expected)]
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    small = [x[:, :4, :5], previous[:, :5], *(m[:5] for m in mixes)]
    assert torch.autograd.gradcheck(lambda x, previous, *mixes: shift_mix_kernel(x, previous, list(mixes)),
                                    [t.detach().requires_grad_() for t in small])


@pytest.mark.parametrize("name", ["sigmoid_gate", "relu_square"])
def test_elementwise_kernels_match_torch(name, torch_threads):
    gen = torch.Generator().manual_seed(7)
    shape = (3, 50, 101)  # 15150 entries: several tasks, and a partial vector at the end
    r, x = (torch.randn(shape, generator=gen, dtype=torch.float64, requires_grad=True) for _ in range(2))
    kernel, expression, leaves = {
        "sigmoid_gate": (sigmoid_gate_kernel, lambda r, x: torch.sigmoid(r) * x, [r, x]),
        "relu_square": (relu_square_kernel, lambda r: torch.square(torch.relu(r)), [r]),
    }[name]
    upstream = torch.randn(shape, generator=gen, dtype=torch.float64)
    ours, expected = kernel(*leaves), expression(*leaves)
    torch.testing.assert_close(ours, expected, rtol=1e-14, atol=1e-14)
    for a, b in zip(torch.autograd.grad((ours * upstream).sum(), leaves),
                    torch.autograd.grad((expected * upstream).sum(), leaves)):
        torch.testing.assert_close(a, b, rtol=1e-14, atol=1e-14)
    # float32 as the model runs it: within float32 rounding of the float64 values.
    torch.testing.assert_close(kernel(*(t.detach().float() for t in leaves)), expected.detach().float())


@pytest.mark.parametrize("shape", [(4, 64, 37), (2, 9, 3, 5)])  # 3 x 5 neurons per step, flattened
def test_lif_kernel_spikes_exactly_as_the_reference(shape, torch_threads):
    gen = torch.Generator().manual_seed(8)
    x = (torch.randn(shape, generator=gen) * 1.5 + 0.8).requires_grad_()
    v0 = (torch.rand(shape[:1] + shape[2:], generator=gen) * 0.9).requires_grad_()
    upstream = torch.randn(shape, generator=gen)
    lif = MultiStepLIF(tau=2.0, v_threshold=1.0, alpha=2.0)
    results = []
    for path in ("kernels", "reference"):
        with on(path):
            spikes, v = lif(x, v0)
        grads = torch.autograd.grad((spikes * upstream).sum(), (x, v0))
        results.append((spikes, v, *grads))
    (spikes, v, gx, gv), (ref_spikes, ref_v, ref_gx, ref_gv) = results
    assert spikes.dtype == x.dtype and set(spikes.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(spikes, ref_spikes)
    torch.testing.assert_close(v, ref_v, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(gx, ref_gx, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gv, ref_gv, rtol=1e-5, atol=1e-6)


def spiking_model(seed=0, **overrides) -> SpikeGPTForCausalLM:
    """A small SpikeGPT whose neurons fire (RWKV's zero-initialised projections keep them silent at first)."""
    torch.manual_seed(seed)
    sizes = dict(vocab_size=29, n_embd=40, n_layer=2, ctx_len=64, dropout=0.0)  # 40: a partial vector
    model = SpikeGPTForCausalLM(SpikeGPTConfig(**{**sizes, **overrides}))
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear):
                module.weight.normal_(0, 2.0 / math.sqrt(module.in_features))
    return model


def train_step_on(model, ids, context):
    """One forward and backward pass of ``model`` within ``context``: the output, gradients and metrics."""
    with context:
        out = model(input_ids=ids, labels=ids, use_cache=True)
        out.loss.backward()
    grads = {name: p.grad for name, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    return out, grads, model.spike_metrics()


def assert_same_training_step(run, ref_run):
    """Two ``train_step_on`` results: the same spikes, so bit-identical logits and spike metrics; gradients
    and the carried state within float32 rounding."""
    (out, grads, metrics), (ref_out, ref_grads, ref_metrics) = run, ref_run
    # The stream is a sum of 0/1 spikes: the same spikes give bit-identical logits.
    assert torch.equal(out.logits, ref_out.logits)
    assert metrics.keys() == ref_metrics.keys()
    assert all(torch.equal(metrics[name], ref_metrics[name]) for name in metrics)
    assert 0.05 < metrics["firing_rate/blocks.1.att"] < 0.95
    for name, grad in grads.items():
        scale = ref_grads[name].abs().max()
        torch.testing.assert_close(grad, ref_grads[name], rtol=0, atol=1e-5 * scale, msg=name)
    # The state generation carries. The parallel reference's closed-form log-scales (sums of t * w over the
    # tokens) carry absolute errors of ~1e-5 here, and the scaled sums the same relative error.
    leaves = torch.utils._pytree.tree_leaves
    for ours, ref in zip(leaves(out.state), leaves(ref_out.state)):
        torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)


def test_model_on_kernels_matches_model_on_reference_paths(torch_threads):
    model = spiking_model()
    ids = torch.randint(0, 29, (3, 33), generator=torch.Generator().manual_seed(9))
    assert_same_training_step(*(train_step_on(model, ids, on(path)) for path in ("kernels", "reference")))


def test_bfloat16_runs_the_reference_paths():
    model = spiking_model(seed=1).eval()
    ids = torch.randint(0, 29, (2, 9), generator=torch.Generator().manual_seed(10))
    assert path_for(torch.zeros(1, dtype=torch.bfloat16), "lif") == "reference"
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(input_ids=ids).logits
    assert torch.isfinite(logits).all()


def test_a_kernel_that_cannot_be_built_warns_once_and_the_reference_paths_run(monkeypatch):
    monkeypatch.setattr(spikegpt_kernels, "library_unavailable_reason", lambda source: "no C++ compiler here")
    spikegpt_kernels._unavailable_reason.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match=r"SpikeGPT runs its pure-PyTorch paths .*no C\+\+ compiler"):
            assert path_for(torch.zeros(1), "wkv") == "reference"
        model = spiking_model(seed=2).eval()
        with torch.no_grad():
            logits = model(input_ids=torch.zeros(1, 4, dtype=torch.long)).logits
        assert logits.shape == (1, 4, 29)
        with pytest.raises(RuntimeError, match=r"SpikeGPT's C\+\+ kernels cannot run: no C\+\+ compiler"):
            relu_square_kernel(torch.zeros(3))
    finally:
        spikegpt_kernels._unavailable_reason.cache_clear()


def test_a_gpu_too_old_for_triton_runs_the_reference_paths_and_says_why(monkeypatch):
    """On an NVIDIA GPU older than Triton compiles for (compute capability 6.0 here), CUDA tensors take the
    reference paths with a warning that names the GPU's capability; ``backend("triton")`` refuses."""
    pytest.importorskip("fla")
    on_gpu = types.SimpleNamespace(is_cpu=False, is_cuda=True, dtype=torch.float32,
                                   device=torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (6, 0))
    monkeypatch.setattr(torch.version, "hip", None)
    spikegpt_kernels._gpu_too_old.cache_clear()
    try:
        too_old = r"pure-PyTorch paths on cuda .*compute capability 7\.0 and newer; this one is 6\.0"
        with pytest.warns(RuntimeWarning, match=too_old):
            assert path_for(on_gpu, "wkv") == "reference"
        with backend("triton"), pytest.raises(RuntimeError, match=r"backend\('triton'\) cannot run on cuda"):
            path_for(on_gpu, "lif")
    finally:
        spikegpt_kernels._gpu_too_old.cache_clear()


def test_lif_kernel_bad_state_is_named():
    message = r"lif_forward: expected a contiguous Float tensor of sizes \[2, 3\]"
    with pytest.raises(RuntimeError, match=message):
        lif_kernel(torch.zeros(2, 4, 3), torch.zeros(2, 4), 2.0, 1.0, 2.0)


def test_torch_compile_traces_the_reference_paths():
    """Under torch.compile the model's blocks take the pure-PyTorch paths: the kernels' ops have no fake
    implementations, so tracing them would fail a full-graph compile."""
    from trainers.models.spikegpt import relu_square, shift_mix, sigmoid_gate

    def block(x, previous, m):
        mixed_k, mixed_r = shift_mix(x, previous, [m, 1 - m])
        return sigmoid_gate(mixed_r, relu_square(mixed_k))

    gen = torch.Generator().manual_seed(11)
    args = [torch.randn(2, 5, 8, generator=gen), torch.randn(2, 8, generator=gen),
            torch.rand(8, generator=gen)]
    compiled = torch.compile(block, backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(*args), block(*args))

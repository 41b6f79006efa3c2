"""SpikeGPT's Triton kernels against independent references: the WKV (fla-core's kernel behind our state
mapping) and our LIF kernel against float64 definitions, forward and gradients, with carried states; the
whole model on the Triton path against its reference paths, in training and in generate(); the launches a
forward and backward pass makes; and how ``spikegpt_kernels`` picks a path.

Without a GPU the kernels run on CPU tensors in Triton's interpreter (conftest.py sets TRITON_INTERPRET
before triton is imported); with one they run on it. Shapes stay small: the interpreter is slow."""

from __future__ import annotations

import math
import types
from pathlib import Path

import benchmark_scripts
import pytest
import torch
from reference_wkv import naive_wkv, wkv_inputs
from test_spikegpt_kernels import assert_same_training_step, random_state, spiking_model, train_step_on

from trainers.models import build_model, spikegpt_kernels
from trainers.models.spikegpt import WKVState, wkv_parallel, wkv_recurrent
from trainers.models.spikegpt_kernels import backend, path_for, triton_kernels
from trainers.models.spiking_neuron import MultiStepLIF

pytestmark = [pytest.mark.triton, pytest.mark.usefixtures("one_torch_thread")]
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(scope="module")
def kernels():
    module = triton_kernels()
    assert DEVICE == "cuda" or module.interpreting(), \
        "TRITON_INTERPRET=1 must be set before triton is imported (tests/conftest.py does)"
    return module


def on_device(*tensors):
    return [t.to(DEVICE) for t in tensors]


def empty_state(batch, channels):
    return WKVState(*on_device(*WKVState.empty(batch, channels, torch.device("cpu"))))


# Keys near 200 overflow a naive float32 WKV; the running maximum keeps them finite (and costs the
# log-weights ~1e-5 of rounding per token, as in the C++ kernel's test). 37 channels: a partial block.
@pytest.mark.parametrize("k_scale, k_offset, tol", [(3.0, 0.0, 1e-5), (30.0, 200.0, 2e-4)])
def test_wkv_matches_float64_definition_with_carried_state(kernels, k_scale, k_offset, tol):
    inputs = wkv_inputs(0, batch=3, tokens=41, channels=37, k_scale=k_scale, k_offset=k_offset)
    w, u, k, v = on_device(*inputs)
    expected = naive_wkv(*(x.cpu() for x in (w, u, k, v)))
    out, *sums = kernels.wkv_triton(w, u, k, v, *empty_state(3, 37))
    torch.testing.assert_close(out.cpu().double(), expected, rtol=10 * tol, atol=tol)
    state, pieces = empty_state(3, 37), []
    for start, stop in [(0, 17), (17, 18), (18, 41)]:  # one token per call, as generation feeds them
        piece, *state = kernels.wkv_triton(w, u, k[:, start:stop], v[:, start:stop], *state)
        pieces.append(piece)
    torch.testing.assert_close(torch.cat(pieces, dim=1).cpu().double(), expected, rtol=10 * tol, atol=tol)
    # The new state is the recurrent reference's: the same sums at the same log-scale.
    _, ref_state = wkv_recurrent(w, u, k, v, empty_state(3, 37))
    for ours, ref in zip(sums, ref_state):
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=0)


def test_wkv_gradients_match_float64_definition(kernels):
    inputs = wkv_inputs(1, batch=3, tokens=29, channels=19)
    ours = [x.clone().to(DEVICE).requires_grad_() for x in inputs]
    ref = [x.double().requires_grad_() for x in inputs]
    upstream = torch.randn(3, 29, 19, generator=torch.Generator().manual_seed(2))
    (kernels.wkv_triton(*ours, *empty_state(3, 19))[0] * upstream.to(DEVICE)).sum().backward()
    (naive_wkv(*ref) * upstream.double()).sum().backward()
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a.grad.cpu(), b.grad.float(), rtol=1e-4, atol=1e-5)


def test_wkv_state_gradients_match_the_parallel_reference(kernels):
    """Gradients into the carried sums and out of the new ones, the log-scales held constant as the
    reference holds them: fla's kernel differentiates its log-scale, and gets the same gradients only with
    the log-scale gradient ``_WKV.backward`` passes it (without it w's and k's would differ here)."""
    w, u, k, v = wkv_inputs(4, batch=2, tokens=23, channels=11, dtype=torch.float64)
    state = random_state(2, 11, torch.float64)
    gen = torch.Generator().manual_seed(5)
    weights = [torch.randn(2, 23, 11, generator=gen, dtype=torch.float64)] + \
        [torch.randn(2, 11, generator=gen, dtype=torch.float64) for _ in range(2)]

    def run(path, dtype, device):
        leaves = [x.to(device, dtype).requires_grad_() for x in (w, u, k, v, state.num, state.den)]
        log_scale = state.log_scale.to(device, dtype)
        if path == "triton":
            out, num, den, _ = kernels.wkv_triton(*leaves, log_scale)
        else:
            out, (num, den, _) = wkv_parallel(*leaves[:4], WKVState(*leaves[4:], log_scale))
        sum((o * g.to(device, dtype)).sum() for o, g in zip((out, num, den), weights)).backward()
        return [o.detach().cpu().double() for o in (out, num, den)], [x.grad.cpu().double() for x in leaves]

    outs, grads = run("triton", torch.float32, DEVICE)
    ref_outs, ref_grads = run("reference", torch.float64, "cpu")
    for ours, ref in zip(outs + grads, ref_outs + ref_grads):
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())


def reference_lif(x, v0, tau, v_threshold, alpha):
    """The LIF neuron by its definition (spiking_neuron.py's docstring), a float64 loop: spikes, last v."""
    v, spikes = v0, []
    for t in range(x.shape[1]):
        h = v + (x[:, t] - v) / tau
        # The step forward, the derivative of atan(pi/2 alpha y) / pi (the arctan surrogate) backward.
        smooth = torch.atan(math.pi / 2 * alpha * (h - v_threshold)) / math.pi
        spike = (h >= v_threshold).to(x.dtype) + (smooth - smooth.detach())
        spikes.append(spike)
        v = h * (1 - spike)  # the reset carries the surrogate's gradient too: not detached
    return torch.stack(spikes, dim=1), v


@pytest.mark.parametrize("tau, v_threshold, alpha, channels", [(2.0, 1.0, 2.0, 200), (3.0, 0.5, 0.7, 7)])
def test_lif_matches_float64_definition(kernels, tau, v_threshold, alpha, channels):
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(3, 40, channels, generator=gen, dtype=torch.float64) * 1.5 + 0.8 * v_threshold
    v0 = torch.rand(3, channels, generator=gen, dtype=torch.float64) * 0.9 * v_threshold
    x, v0 = x.float().double(), v0.float().double()  # float32 values, compared in float64
    upstream = torch.randn(3, 40, channels, generator=gen, dtype=torch.float64)
    ours = [t.float().to(DEVICE).requires_grad_() for t in (x, v0)]
    ref = [t.clone().requires_grad_() for t in (x, v0)]
    spikes, v = kernels.lif_triton(*ours, tau, v_threshold, alpha)
    ref_spikes, ref_v = reference_lif(*ref, tau, v_threshold, alpha)
    assert 0.1 < spikes.mean().item() < 0.9
    assert torch.equal(spikes.cpu().double(), ref_spikes.detach())
    torch.testing.assert_close(v.cpu().double(), ref_v.detach(), rtol=1e-6, atol=1e-6)
    grads = torch.autograd.grad((spikes * upstream.float().to(DEVICE)).sum(), ours)
    ref_grads = torch.autograd.grad((ref_spikes * upstream).sum(), ref)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a.cpu().double(), b, rtol=1e-5, atol=1e-6)
    # Split anywhere, the carried potentials continue the sequence.
    first, v_mid = kernels.lif_triton(ours[0][:, :13].detach(), ours[1].detach(), tau, v_threshold, alpha)
    rest, v_end = kernels.lif_triton(ours[0][:, 13:].detach(), v_mid, tau, v_threshold, alpha)
    assert torch.equal(torch.cat([first, rest], dim=1), spikes.detach())
    assert torch.equal(v_end, v)


def test_lif_from_bfloat16_computes_in_float32(kernels):
    """Under bf16 autocast the neuron's input is bfloat16: its spikes and membrane come back in bfloat16,
    the membrane carried between steps in float32 (the reference path rounds it to bfloat16 each step)."""
    gen = torch.Generator().manual_seed(9)
    x = (torch.randn(2, 24, 20, generator=gen) * 1.5 + 0.8).bfloat16()
    spikes, v = kernels.lif_triton(x.to(DEVICE), torch.zeros(2, 20, dtype=torch.bfloat16, device=DEVICE),
                                   2.0, 1.0, 2.0)
    ref_spikes, ref_v = reference_lif(x.double(), torch.zeros(2, 20, dtype=torch.float64), 2.0, 1.0, 2.0)
    assert spikes.dtype == v.dtype == torch.bfloat16
    assert torch.equal(spikes.cpu().double(), ref_spikes)
    # Within one bfloat16 step of the float64 value: Triton's interpreter truncates to bfloat16 where a GPU
    # rounds to nearest.
    torch.testing.assert_close(v.cpu().double(), ref_v, rtol=2**-7, atol=0)


def test_model_on_triton_matches_model_on_reference_paths(kernels):
    model = spiking_model().to(DEVICE)
    ids = torch.randint(0, 29, (3, 33), generator=torch.Generator().manual_seed(9)).to(DEVICE)
    before = sum(kernels.launches.values())
    run = train_step_on(model, ids, backend("triton"))
    # Per layer: the WKV and two neurons forward, and the same backward.
    assert sum(kernels.launches.values()) - before == 6 * 2
    ref_run = train_step_on(model, ids, backend("reference"))
    assert sum(kernels.launches.values()) - before == 6 * 2  # none on the reference paths
    assert_same_training_step(run, ref_run)


def test_generate_on_triton_carries_the_state_as_the_reference(kernels):
    model = spiking_model(seed=3).eval().to(DEVICE)
    prompt = torch.randint(0, 29, (2, 9), generator=torch.Generator().manual_seed(3)).to(DEVICE)
    with torch.no_grad():
        results = {}
        for path in ("triton", "reference"):
            with backend(path):
                results[path] = model.generate(prompt, max_new_tokens=10, do_sample=False,
                                               output_logits=True, return_dict_in_generate=True)
        with backend("triton"):  # the whole sequence at once, no carried state
            full = model(input_ids=results["triton"].sequences).logits
    ours, ref = results["triton"], results["reference"]
    assert torch.equal(ours.sequences, ref.sequences)
    for a, b in zip(ours.logits, ref.logits):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    stepped = torch.stack(ours.logits, dim=1)
    torch.testing.assert_close(stepped, full[:, 8:-1], rtol=1e-5, atol=1e-5)


def test_launches_do_not_grow_with_the_sequence_and_stay_within_twice_llamas(kernels):
    """The count benchmarks/spikegpt_launches.py reports, on a small pair: the Triton path's launches per
    forward and backward pass are the same at 8 and 24 tokens, and under LIMIT times LLaMA's; the reference
    path's grow with the tokens."""
    bench = benchmark_scripts.load("spikegpt_launches")
    counts = {}
    for tokens in (8, 24):
        ids = torch.randint(0, 50, (2, tokens), generator=torch.Generator().manual_seed(0)).to(DEVICE)
        torch.manual_seed(0)
        spikegpt = build_model("spikegpt-tiny", 50, tokens).to(DEVICE)
        for path in ("triton", "reference"):
            counts[path, tokens] = bench.count(spikegpt, ids, path)["launches"]
        llama = build_model("llama-tiny", 50, tokens).to(DEVICE)  # the same depth: counts go by layers
        counts["llama", tokens] = bench.count(llama, ids, None)["launches"]
    assert counts["triton", 8] == counts["triton", 24] <= bench.LIMIT * counts["llama", 24]
    assert counts["reference", 24] > counts["reference", 8]


# --- how spikegpt_kernels picks a path --------------------------------------------------------------------

def fake_tensor(device, dtype=torch.float32):
    """What path_for reads of a tensor, for devices this machine may not have."""
    return types.SimpleNamespace(is_cpu=device == "cpu", is_cuda=device == "cuda", dtype=dtype,
                                 device=torch.device(device))


def test_default_paths_by_device_and_dtype(kernels):
    assert path_for(torch.zeros(1), "wkv") == "cpp"
    assert path_for(torch.zeros(1, dtype=torch.bfloat16), "lif") == "reference"
    assert path_for(fake_tensor("cuda"), "wkv") == "triton"
    assert path_for(fake_tensor("cuda", torch.bfloat16), "lif") == "triton"
    assert path_for(fake_tensor("cuda", torch.float64), "wkv") == "reference"
    assert path_for(fake_tensor("cuda"), "elementwise") == "reference"  # no Triton kernel: PyTorch's ops
    assert path_for(fake_tensor("meta"), "wkv") == "reference"
    with backend("triton"):
        assert path_for(torch.zeros(1, device=DEVICE), "lif") == "triton"
        assert path_for(torch.zeros(1, device=DEVICE, dtype=torch.float64), "wkv") == "reference"
    with backend("reference"):
        assert path_for(fake_tensor("cuda"), "wkv") == "reference"


def test_without_triton_cuda_warns_once_and_runs_the_reference(monkeypatch):
    monkeypatch.setattr(spikegpt_kernels, "_triton_import_error", lambda: "No module named 'fla' (pip ...)")
    spikegpt_kernels._warn_once.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match=r"PyTorch paths on cuda .*No module named 'fla'") as seen:
            assert path_for(fake_tensor("cuda"), "wkv") == "reference"
            assert path_for(fake_tensor("cuda"), "lif") == "reference"
        assert len(seen) == 1
    finally:
        spikegpt_kernels._warn_once.cache_clear()


def test_a_forced_path_that_cannot_run_says_why(kernels, monkeypatch):
    with pytest.raises(ValueError, match="unknown SpikeGPT backend 'cuda': choose one of reference, cpp"), \
            backend("cuda"):
        pass
    with backend("cpp"), pytest.raises(ValueError, match="C\\+\\+ kernels run CPU tensors; this one is on "
                                                         "cuda"):
        path_for(fake_tensor("cuda"), "wkv")
    monkeypatch.setattr(kernels, "interpreting", lambda: False)
    with backend("triton"), pytest.raises(RuntimeError, match="needs Triton's interpreter: set "
                                                              "TRITON_INTERPRET=1"):
        MultiStepLIF()(torch.zeros(1, 2, 3))
    with pytest.raises(TypeError, match="the Triton WKV computes in float32, got torch.float64"):
        kernels.wkv_triton(*wkv_inputs(0, dtype=torch.float64), *WKVState.empty(2, 5, torch.device("cpu")))


def test_docs_give_the_committed_launch_counts():
    """docs/training.md's launch counts are benchmarks/results/spikegpt_launches.md's, and that table holds
    the claims: the Triton path's count is the same at both lengths and within LIMIT of LLaMA's."""
    root = Path(__file__).resolve().parents[1]
    counts = {}
    for line in (root / "benchmarks/results/spikegpt_launches.md").read_text().splitlines():
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if line.startswith(("| spikegpt-small", "| llama-20m")):
            counts[cells[0], int(cells[1])] = int(cells[5])
    triton, llama = counts["spikegpt-small (triton)", 64], counts["llama-20m", 256]
    limit = benchmark_scripts.load("spikegpt_launches").LIMIT
    assert triton == counts["spikegpt-small (triton)", 256] <= limit * llama
    docs = " ".join((root / "docs/training.md").read_text().split())
    reference = [counts["spikegpt-small (reference)", n] for n in (64, 256)]
    assert (f"makes {reference[0]} launches (non-view aten ops plus Triton launches) at 64 tokens and "
            f"{reference[1]} at 256 on the reference path, {counts['spikegpt-small (cpp)', 256]} on the C++ "
            f"kernels, and {triton} on the Triton path at "
            f"both lengths, against {llama} for `llama-20m` ({triton / llama:.2f}x LLaMA's") in docs

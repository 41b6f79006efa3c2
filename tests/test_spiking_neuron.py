"""The multi-step LIF neuron against snnTorch's (its C++ kernel and its pure-PyTorch reference path), and its
arctan surrogate against a numerical derivative."""

import math

import pytest
import torch

from trainers.models.spiking_neuron import MultiStepLIF, atan_spike


def snntorch_lif(x, v0, tau, v_threshold, alpha):
    """snnTorch's Leaky neuron, reset to zero, with SpikeGPT's input decay (x / tau): spikes and last v."""
    import snntorch
    from snntorch import surrogate

    lif = snntorch.Leaky(beta=1 - 1 / tau, threshold=v_threshold, spike_grad=surrogate.atan(alpha=alpha),
                         reset_mechanism="zero", reset_delay=False)
    mem, spikes = v0, []
    for t in range(x.shape[1]):
        spk, mem = lif(x[:, t] / tau, mem)
        spikes.append(spk)
    return torch.stack(spikes, dim=1), mem


@pytest.mark.parametrize("tau, v_threshold, alpha", [(2.0, 1.0, 2.0), (3.0, 0.5, 0.7)])
def test_matches_snntorch_forward_and_gradients(tau, v_threshold, alpha, spikegpt_path):
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(3, 40, 6, generator=gen, dtype=torch.float64) * 1.5 + 0.8).requires_grad_()
    v0 = (torch.rand(3, 6, generator=gen, dtype=torch.float64) * 0.9 * v_threshold).requires_grad_()
    x_ref, v0_ref = x.detach().clone().requires_grad_(), v0.detach().clone().requires_grad_()
    upstream = torch.randn(3, 40, 6, generator=gen, dtype=torch.float64)

    spikes, v = MultiStepLIF(tau, v_threshold, alpha)(x, v0)
    spikes_ref, v_ref = snntorch_lif(x_ref, v0_ref, tau, v_threshold, alpha)

    assert set(spikes.unique().tolist()) == {0.0, 1.0}  # exactly binary, and it does fire
    assert 0.1 < spikes.mean().item() < 0.9
    assert torch.equal(spikes, spikes_ref.to(spikes.dtype))
    torch.testing.assert_close(v, v_ref.to(v.dtype))
    (spikes * upstream).sum().backward()
    (spikes_ref * upstream).sum().backward()
    # snnTorch's surrogate computes in float32 (its spikes are float32), hence the tolerance.
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(v0.grad, v0_ref.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("alpha", [2.0, 0.7])
def test_surrogate_gradient_is_the_arctan_derivative(alpha):
    """The backward pass is exactly d/dx [atan(pi/2 alpha x) / pi + 1/2]: ``gradcheck`` on a function whose
    value is that arctan primitive and whose only differentiable path is the spike's surrogate."""

    def primitive(x):
        return torch.atan(math.pi / 2 * alpha * x) / math.pi + 0.5

    def spike_valued_as_primitive(x):
        return atan_spike(x, alpha) + (primitive(x) - (x >= 0).to(x.dtype)).detach()

    x = torch.linspace(-3, 3, 41, dtype=torch.float64).add(0.013).requires_grad_()
    assert torch.autograd.gradcheck(spike_valued_as_primitive, (x,))
    assert torch.equal(atan_spike(x, alpha), (x >= 0).to(x.dtype))


def test_carried_membrane_continues_the_sequence(spikegpt_path):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 30, 5, generator=gen) + 0.7
    lif = MultiStepLIF()
    spikes, v = lif(x)
    first, v_mid = lif(x[:, :17])
    rest, v_end = lif(x[:, 17:], v_mid)
    assert spikes.any()
    assert torch.equal(torch.cat([first, rest], dim=1), spikes)
    assert torch.equal(v_end, v)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="tau"):
        MultiStepLIF(tau=0.5)
    with pytest.raises(ValueError, match="alpha"):
        MultiStepLIF(alpha=0.0)
    with pytest.raises(ValueError, match="membrane state"):
        MultiStepLIF()(torch.zeros(2, 4, 3), torch.zeros(2, 4))

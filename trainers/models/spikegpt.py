"""SpikeGPT (Zhu et al., 2023): an RWKV-4 language model whose blocks emit spikes, in PyTorch.

Token embeddings are binarised to spikes; each block adds to the residual stream the spikes of a leaky
integrate-and-fire (LIF) neuron fed by RWKV's time-mix (the WKV recurrence, SpikeGPT's "spiking RWKV")
and another fed by the channel-mix ("spiking receptance feed-forward"). The neurons run along the token
axis, so the whole model is a recurrent network: training processes a sequence at once (the WKV in a
parallel form), generation feeds one token at a time with a carried state, O(1) per token.

    from trainers.models.spikegpt import SpikeGPTConfig, SpikeGPTForCausalLM
    model = SpikeGPTForCausalLM(SpikeGPTConfig(vocab_size=257, n_embd=64, n_layer=2))
    out = model(input_ids=ids, labels=ids)          # out.loss, out.logits
    model.generate(ids, max_new_tokens=20)          # recurrent decoding
    model.spike_metrics()                            # firing rates, synaptic ops vs dense MACs

Importing this module registers ``model_type="spikegpt"`` with ``AutoConfig`` and ``AutoModelForCausalLM``.
On CPU the sequential parts (the WKV, the neurons) and the element-wise work around them run in C++ kernels,
on CUDA the sequential parts run in Triton kernels (``spikegpt_kernels.py`` picks the path, and
``spikegpt_kernels.backend`` forces one); the pure-PyTorch code here is their reference. Deliberate
differences from the authors' code: the WKV computes in float32 under autocast too (fla-core's Triton kernel
on CUDA rather than the authors' CUDA kernel), and no L2Wrap logit regulariser (the loss is plain
cross-entropy).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    GenerationMixin,
    PretrainedConfig,
    PreTrainedModel,
)
from transformers import initialization as init
from transformers.utils import ModelOutput

from trainers.models.spikegpt_kernels import (
    path_for,
    relu_square_kernel,
    shift_mix_kernel,
    sigmoid_gate_kernel,
    triton_kernels,
    wkv_kernel,
)
from trainers.models.spiking_neuron import MultiStepLIF, atan_spike


class SpikeGPTConfig(PretrainedConfig):
    """SpikeGPT's sizes (the authors' names) and its neurons' constants.

    ``ctx_len`` is the training context; the recurrent model itself has no length limit.

    Example::

        config = SpikeGPTConfig(vocab_size=257, n_embd=128, n_layer=4, ctx_len=256)
    """

    model_type = "spikegpt"

    def __init__(self, vocab_size: int = 50277, n_embd: int = 512, n_layer: int = 12, ctx_len: int = 1024,
                 tau: float = 2.0, v_threshold: float = 1.0, surrogate_alpha: float = 2.0,
                 dropout: float = 0.03, layer_norm_eps: float = 1e-5,
                 tie_word_embeddings: bool = False, **kwargs: Any) -> None:
        sizes = dict(vocab_size=(vocab_size, 1), n_embd=(n_embd, 2), n_layer=(n_layer, 1),
                     ctx_len=(ctx_len, 1))
        for name, (value, low) in sizes.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"SpikeGPTConfig.{name} must be an integer >= {low}, got {value!r}")
        if not tau >= 1.0:
            raise ValueError(f"SpikeGPTConfig.tau must be >= 1 (the membrane time constant), got {tau!r}")
        if not surrogate_alpha > 0:
            raise ValueError(f"SpikeGPTConfig.surrogate_alpha must be > 0, got {surrogate_alpha!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"SpikeGPTConfig.dropout must be in [0, 1), got {dropout!r}")
        self.vocab_size, self.n_embd, self.n_layer, self.ctx_len = vocab_size, n_embd, n_layer, ctx_len
        self.tau, self.v_threshold = float(tau), float(v_threshold)
        self.surrogate_alpha = float(surrogate_alpha)
        self.dropout, self.layer_norm_eps = float(dropout), layer_norm_eps
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)


# Preset name -> SpikeGPTConfig kwargs (the vocabulary comes from the tokenizer). The paper's 45M model is
# 12 x 512 with a byte-level vocabulary (enwik8); its 216M one is 18 x 768 with the 50k GPT-NeoX vocabulary.
SPIKEGPT_PRESETS: dict[str, dict[str, Any]] = {
    "spikegpt-tiny": dict(n_embd=64, n_layer=2, ctx_len=256),  # tests: about 0.13M parameters with bytes
    "spikegpt-1m": dict(n_embd=128, n_layer=4, ctx_len=256),  # the stability grid: llama-9m's size, 0.9M
    "spikegpt-small": dict(n_embd=256, n_layer=4, ctx_len=256),  # 3.5M with bytes, the size of llama-20m
    "spikegpt-60m": dict(n_embd=512, n_layer=8, ctx_len=1024),  # llama-60m's size: 27M with bytes
    "spikegpt-45m": dict(n_embd=512, n_layer=12, ctx_len=1024),
    "spikegpt-216m": dict(n_embd=768, n_layer=18, ctx_len=1024),
}


class WKVState(NamedTuple):
    """The WKV sums over past tokens, kept as ``num * exp(log_scale)`` and ``den * exp(log_scale)``."""

    num: Tensor  # (batch, channels), float32
    den: Tensor
    log_scale: Tensor

    @classmethod
    def empty(cls, batch: int, channels: int, device: torch.device) -> WKVState:
        zeros = torch.zeros(batch, channels, device=device)
        return cls(zeros, zeros, torch.full_like(zeros, -math.inf))


class LayerState(NamedTuple):
    """What one block carries from one token to the next."""

    att_shift: Tensor  # the time-mix input of the previous token
    wkv: WKVState
    ffn_shift: Tensor  # the channel-mix input of the previous token
    att_membrane: Tensor  # the two LIF neurons' membrane potentials
    ffn_membrane: Tensor


def wkv_recurrent(w: Tensor, u: Tensor, k: Tensor, v: Tensor, state: WKVState) -> tuple[Tensor, WKVState]:
    """RWKV-4's WKV one token at a time (generation where the CPU kernel does not run): O(1) per token.

    ``w`` (negative: the per-channel log-decay) and ``u`` (the bonus of the current token) are ``(C,)``;
    ``k`` and ``v`` are ``(B, T, C)``. Output token t is the average of the values ``v_i``, ``i <= t``, with
    weights ``exp((t - 1 - i) w + k_i)`` for ``i < t`` and ``exp(u + k_t)`` for ``i = t``; every exponential
    is taken relative to a running maximum so that nothing overflows.
    """
    num, den, log_scale = state
    out = []
    for t in range(k.shape[1]):
        kt, vt = k[:, t], v[:, t]
        bonus = u + kt
        top = torch.maximum(log_scale, bonus)
        old, new = torch.exp(log_scale - top), torch.exp(bonus - top)
        out.append((old * num + new * vt) / (old * den + new))
        decayed = log_scale + w
        top = torch.maximum(decayed, kt)
        old, new = torch.exp(decayed - top), torch.exp(kt - top)
        num, den, log_scale = old * num + new * vt, old * den + new, top
    return torch.stack(out, dim=1), WKVState(num, den, log_scale)


class _LinearScan(torch.autograd.Function):
    """``h[t] = c[t] * h[t-1] + x[t]`` along dim 0 (``h[-1] = h0``; ``c`` may broadcast against ``x``).

    The one sequential part of the parallel WKV: one fused multiply-add per token, each way.
    """

    @staticmethod
    def forward(ctx, c: Tensor, x: Tensor, h0: Tensor) -> Tensor:
        h = torch.empty_like(x)
        previous = h0
        for c_t, x_t, h_t in zip(c.unbind(0), x.unbind(0), h.unbind(0)):
            previous = torch.addcmul(x_t, c_t, previous, out=h_t)
        ctx.save_for_backward(c, h, h0)
        return h

    @staticmethod
    def backward(ctx, grad_h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        c, h, h0 = ctx.saved_tensors
        grad_x = grad_h.clone(memory_format=torch.contiguous_format)  # dL/dh[t], all paths included
        rows, factors = grad_x.unbind(0), c.unbind(0)
        for t in range(len(rows) - 2, -1, -1):
            rows[t].addcmul_(factors[t + 1], rows[t + 1])
        previous = torch.cat([h0[None], h[:-1]])
        return (grad_x * previous).sum_to_size(c.shape), grad_x, (c[0] * grad_x[0]).sum_to_size(h0.shape)


def wkv_parallel(w: Tensor, u: Tensor, k: Tensor, v: Tensor, state: WKVState) -> tuple[Tensor, WKVState]:
    """The same WKV as :func:`wkv_recurrent` for all tokens at once (training where the kernel does not run).

    The running maxima that keep the exponentials finite are the closed form
    ``p[t+1] = max(p[0] + (t+1) w, max_{i<=t} k[i] + (t-i) w) = t w + cummax_{i<=t}(k[i] - i w)`` (with the
    carried state's term first), so every exponential is computed in one pass over the sequence; what stays
    sequential is the scaled sums' first-order linear recurrence (:class:`_LinearScan`). The maxima are
    detached: any reference point gives the same result, they only keep the numbers in range.
    """
    k, v = k.transpose(0, 1), v.transpose(0, 1)  # (T, B, C): each token a contiguous slice
    num, den, log_scale = state
    with torch.no_grad():
        steps = torch.arange(k.shape[0], device=k.device, dtype=k.dtype)[:, None, None]
        candidates = torch.cat([(log_scale + w)[None], k - steps * w])
        tops = steps * w + torch.cummax(candidates, dim=0).values[1:]  # p[1..T]
        tops = torch.cat([log_scale[None], tops])  # p[0..T]
    decay = torch.exp(tops[:-1] + w - tops[1:])  # how much of the sums before token t survives it
    gain = torch.exp(k - tops[1:])  # token t's own weight in the sums after it
    sums = _LinearScan.apply(decay[:, None], torch.stack([gain * v, gain], dim=1), torch.stack([num, den]))
    before = torch.cat([torch.stack([num, den])[None], sums[:-1]])  # the sums each token sees
    bonus = u + k
    top = torch.maximum(tops[:-1], bonus).detach()
    old, new = torch.exp(tops[:-1] - top), torch.exp(bonus - top)
    out = (old * before[:, 0] + new * v) / (old * before[:, 1] + new)
    return out.transpose(0, 1), WKVState(sums[-1, 0], sums[-1, 1], tops[-1])


def _autocast_off(device_type: str) -> contextlib.AbstractContextManager:
    """A region without autocast; entered only when autocast is on (generation pays per token and layer)."""
    if torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


# What the blocks run (``spikegpt_kernels.path_for`` decides): the C++ kernels on CPU, the Triton kernels for
# the WKV on CUDA, else the pure-PyTorch code in each function: the reference the tests compare with.

def wkv(w: Tensor, u: Tensor, k: Tensor, v: Tensor, state: WKVState) -> tuple[Tensor, WKVState]:
    """The WKV: :func:`wkv_recurrent` for one token, :func:`wkv_parallel` for more, or a kernel."""
    path = path_for(k, "wkv")
    if path != "reference":
        out, *sums = (wkv_kernel if path == "cpp" else triton_kernels().wkv_triton)(w, u, k, v, *state)
        return out, WKVState(*sums)
    return (wkv_recurrent if k.shape[1] == 1 else wkv_parallel)(w, u, k, v, state)


def shift_mix(x: Tensor, previous: Tensor, mixes: list[Tensor]) -> list[Tensor]:
    """``lerp(xx, x, m)`` for each ``m`` of ``mixes``, ``xx`` being each token's predecessor along dim 1
    (the first one's is ``previous``, the carried token): the inputs of a block's projections."""
    if path_for(x, "elementwise") == "cpp":
        return shift_mix_kernel(x, previous, mixes)
    xx = torch.cat([previous[:, None], x[:, :-1]], dim=1)
    return [torch.lerp(xx, x, m) for m in mixes]


def sigmoid_gate(r: Tensor, x: Tensor) -> Tensor:
    """``sigmoid(r) * x``: the receptance gate of both mixes."""
    if path_for(r, "elementwise") == "cpp" and x.dtype == r.dtype:
        return sigmoid_gate_kernel(r, x)
    return torch.sigmoid(r) * x


def relu_square(k: Tensor) -> Tensor:
    """``relu(k) ** 2``: the channel-mix's hidden activation."""
    return relu_square_kernel(k) if path_for(k, "elementwise") == "cpp" else torch.square(torch.relu(k))


class TimeMix(nn.Module):
    """RWKV-4 token mixing: receptance-gated WKV attention over the past tokens."""

    def __init__(self, config: SpikeGPTConfig, layer_id: int) -> None:
        super().__init__()
        self.layer_id = layer_id  # the initialisation depends on depth
        c = config.n_embd
        self.time_decay = nn.Parameter(torch.empty(c))  # w = -exp(time_decay)
        self.time_first = nn.Parameter(torch.empty(c))  # u, the current token's bonus
        self.time_mix_k, self.time_mix_v, self.time_mix_r = (nn.Parameter(torch.empty(c)) for _ in range(3))
        self.key, self.value, self.receptance, self.output = (nn.Linear(c, c, bias=False) for _ in range(4))
        for layer in (self.key, self.receptance, self.output):
            layer.zero_init = True  # as RWKV-4 starts them

    def forward(self, x: Tensor, state: LayerState) -> tuple[Tensor, Tensor, WKVState]:
        mixed = shift_mix(x, state.att_shift, [self.time_mix_k, self.time_mix_v, self.time_mix_r])
        k, v, r = self.key(mixed[0]), self.value(mixed[1]), self.receptance(mixed[2])
        with _autocast_off(x.device.type):  # exponentials of sums: float32 only
            w, u, k, v = -torch.exp(self.time_decay.float()), self.time_first.float(), k.float(), v.float()
            out, wkv_state = wkv(w, u, k, v, state.wkv)
        return self.output(sigmoid_gate(r, out.to(r.dtype))), x[:, -1], wkv_state


class ChannelMix(nn.Module):
    """RWKV-4 channel mixing: a receptance-gated squared-ReLU feed-forward with a token shift."""

    def __init__(self, config: SpikeGPTConfig, layer_id: int) -> None:
        super().__init__()
        self.layer_id = layer_id  # the initialisation depends on depth
        c = config.n_embd
        self.time_mix_k, self.time_mix_r = nn.Parameter(torch.empty(c)), nn.Parameter(torch.empty(c))
        self.key = nn.Linear(c, 4 * c, bias=False)
        self.receptance = nn.Linear(c, c, bias=False)
        self.value = nn.Linear(4 * c, c, bias=False)
        for layer in (self.receptance, self.value):
            layer.zero_init = True

    def forward(self, x: Tensor, state: LayerState) -> tuple[Tensor, Tensor]:
        mixed_k, mixed_r = shift_mix(x, state.ffn_shift, [self.time_mix_k, self.time_mix_r])
        k = relu_square(self.key(mixed_k))
        return sigmoid_gate(self.receptance(mixed_r), self.value(k)), x[:, -1]


class Block(nn.Module):
    """x += spikes(time_mix(ln1(x))); x += spikes(channel_mix(ln2(x))); the first block also has ln0."""

    def __init__(self, config: SpikeGPTConfig, layer_id: int) -> None:
        super().__init__()
        c, eps = config.n_embd, config.layer_norm_eps
        self.ln0 = nn.LayerNorm(c, eps=eps) if layer_id == 0 else None
        self.ln1, self.ln2 = nn.LayerNorm(c, eps=eps), nn.LayerNorm(c, eps=eps)
        self.att, self.ffn = TimeMix(config, layer_id), ChannelMix(config, layer_id)
        self.lif1, self.lif2 = (MultiStepLIF(config.tau, config.v_threshold, config.surrogate_alpha)
                                for _ in range(2))
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor, state: LayerState) -> tuple[Tensor, LayerState, Tensor, Tensor]:
        """Returns the new stream, the new state and the two neurons' spike counts."""
        if self.ln0 is not None:
            x = self.ln0(x)
        att, att_shift, wkv = self.att(self.ln1(x), state)
        att_spikes, att_membrane = self.lif1(att, state.att_membrane)
        x = x + att_spikes
        ffn, ffn_shift = self.ffn(self.ln2(x), state)
        ffn_spikes, ffn_membrane = self.lif2(ffn, state.ffn_membrane)
        x = self.dropout(x + ffn_spikes)
        new_state = LayerState(att_shift, wkv, ffn_shift, att_membrane, ffn_membrane)
        return x, new_state, att_spikes.detach().sum(), ffn_spikes.detach().sum()


@dataclass
class SpikeGPTCausalLMOutput(ModelOutput):
    """``loss`` (with ``labels``), ``logits``, and with ``use_cache`` the ``state`` to continue from."""

    loss: Tensor | None = None
    logits: Tensor | None = None
    state: list[LayerState] | None = None


class SpikeGPTForCausalLM(PreTrainedModel, GenerationMixin):
    """SpikeGPT with its language-model head, a Hugging Face causal LM.

    ``forward(input_ids, labels=None, state=None, use_cache=None)``: with ``state`` (the ``state`` of an
    earlier output), ``input_ids`` continue that sequence. ``generate()`` carries the state itself.

    Example::

        model = SpikeGPTForCausalLM(SpikeGPTConfig(vocab_size=257, n_embd=64, n_layer=2))
        loss = model(input_ids=ids, labels=ids).loss
        rates = model.spike_metrics()["firing_rate/blocks.0.att"]
    """

    config_class = SpikeGPTConfig
    base_model_prefix = "spikegpt"
    _no_split_modules = ["Block"]
    _is_stateful = True  # no assisted generation: a state cannot be rewound

    def __init__(self, config: SpikeGPTConfig) -> None:
        super().__init__(config)
        self.emb = nn.Embedding(config.vocab_size, config.n_embd)
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        self.ln_out = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps)
        self.head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self._metrics: dict[str, Tensor] = {}
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.emb

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.emb = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.head = value

    def empty_state(self, batch_size: int) -> list[LayerState]:
        """The state before the first token: zero shifts and potentials, empty WKV sums."""
        c, device = self.config.n_embd, self.emb.weight.device
        zeros = torch.zeros(batch_size, c, device=device, dtype=self.emb.weight.dtype)
        return [LayerState(zeros, WKVState.empty(batch_size, c, device), zeros, zeros, zeros)
                for _ in self.blocks]

    def forward(self, input_ids: Tensor | None = None, labels: Tensor | None = None,
                state: list[LayerState] | None = None, use_cache: bool | None = None,
                attention_mask: Tensor | None = None, logits_to_keep: int = 0,
                **kwargs: Any) -> SpikeGPTCausalLMOutput:
        if input_ids is None or input_ids.dim() != 2:
            raise ValueError("SpikeGPT needs input_ids of shape (batch, tokens); it takes no inputs_embeds")
        if attention_mask is not None and not bool(attention_mask.all()):
            raise ValueError("SpikeGPT is recurrent and cannot skip padding: pass unpadded sequences "
                             "(generate prompts of different lengths one by one)")
        if state is None:
            state = self.empty_state(input_ids.shape[0])
        elif len(state) != len(self.blocks):
            raise ValueError(f"state has {len(state)} layers but the model has {len(self.blocks)}: pass the "
                             "state of an earlier output of this model")

        x = atan_spike(self.emb(input_ids), self.config.surrogate_alpha)  # binary embedding
        counts, new_state = {"embedding": x.detach().sum()}, []
        for i, (block, layer_state) in enumerate(zip(self.blocks, state)):
            x, layer_state, counts[f"blocks.{i}.att"], counts[f"blocks.{i}.ffn"] = block(x, layer_state)
            new_state.append(layer_state)
        self._record_metrics(counts, input_ids.numel())

        hidden = self.ln_out(x)
        logits = self.head(hidden[:, -logits_to_keep:] if logits_to_keep else hidden)
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=logits.shape[-1], **kwargs)
        return SpikeGPTCausalLMOutput(loss=loss, logits=logits, state=new_state if use_cache else None)

    def _record_metrics(self, counts: dict[str, Tensor], tokens: int) -> None:
        """Firing rates, and synaptic operations against the dense network's multiply-accumulates.

        A spike added to the residual stream reaches the linear layers that read the stream next, so its
        fan-out is their total output width (the SNN literature's "spikes x fan-out"): the next time-mix
        (key, value, receptance: 3C), the channel-mix (key, receptance: 5C), or the head (vocab) after the
        last block. Dense MACs are those of all the linear layers, over the same tokens.
        """
        c, vocab, n = self.config.n_embd, self.config.vocab_size, len(self.blocks)
        # Embedding, then att and ffn of each block; one op for all layers (generation calls this per token).
        fan_outs = [5 * c if name.endswith(".att") else (vocab if i == 2 * n else 3 * c)
                    for i, name in enumerate(counts)]
        values = torch.stack([count.float() for count in counts.values()])
        rates = (values / (tokens * c)).unbind()
        metrics = {f"firing_rate/{name}": rate for name, rate in zip(counts, rates)}
        metrics["synops"] = values @ values.new_tensor(fan_outs)
        dense = tokens * (n * 13 * c * c + c * vocab)  # per token and block: time-mix 4C^2, channel-mix 9C^2
        metrics["dense_macs"] = values.new_tensor(float(dense))
        self._metrics = metrics

    def spike_metrics(self) -> dict[str, Tensor]:
        """Metrics of the last forward pass, as 0-dim device tensors (no host sync).

        ``firing_rate/embedding`` and ``firing_rate/blocks.<i>.att|ffn``: fraction of neurons firing per
        token; ``synops``: spikes x fan-out; ``dense_macs``: multiply-accumulates of the same network run
        densely (a non-spiking RWKV). Empty before the first forward.
        """
        return dict(self._metrics)

    # --- generation: the recurrent state rides in model_kwargs["state"], the name RWKV uses -------------

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # our state is not a key/value cache

    def _update_model_kwargs_for_generation(self, outputs: ModelOutput, model_kwargs: dict[str, Any],
                                            is_encoder_decoder: bool = False,
                                            num_new_tokens: int = 1) -> dict[str, Any]:
        model_kwargs["state"] = outputs.state
        return super()._update_model_kwargs_for_generation(outputs, model_kwargs, is_encoder_decoder,
                                                           num_new_tokens)

    def _reorder_cache(self, state: list[LayerState], beam_idx: Tensor) -> list[LayerState]:
        """Beam search: keep the states of the surviving beams."""
        def pick(x: Any) -> Any:
            return type(x)(*map(pick, x)) if isinstance(x, tuple) else x.index_select(0, beam_idx)

        return [pick(layer) for layer in state]

    # --- initialisation: RWKV-4's ---------------------------------------------------------------------

    def _init_weights(self, module: nn.Module) -> None:
        config = self.config
        if isinstance(module, TimeMix | ChannelMix):
            c = config.n_embd
            depth = module.layer_id / max(config.n_layer - 1, 1)  # 0 at the bottom, 1 at the top
            keep = 1.0 - module.layer_id / config.n_layer  # 1 at the bottom, 1/n_layer at the top
            ramp = torch.arange(c, dtype=torch.float32) / c
            init.copy_(module.time_mix_k, ramp ** keep)
            init.copy_(module.time_mix_r, ramp ** (0.5 * keep if isinstance(module, TimeMix) else keep))
            if isinstance(module, TimeMix):
                init.copy_(module.time_mix_v, ramp ** keep + 0.3 * depth)
                speed = torch.arange(c, dtype=torch.float32) / (c - 1)
                init.copy_(module.time_decay, -5 + 8 * speed ** (0.7 + 1.3 * depth))
                zigzag = 0.5 * (((torch.arange(c) + 1) % 3) - 1).float()
                init.copy_(module.time_first, math.log(0.3) + zigzag)
        elif isinstance(module, nn.Linear):
            if getattr(module, "zero_init", False):
                init.zeros_(module.weight)
            else:
                out_features, in_features = module.weight.shape
                gain = math.sqrt(out_features / in_features) if out_features > in_features else 1.0
                init.orthogonal_(module.weight, gain=gain * (0.5 if module is self.head else 1.0))
        elif isinstance(module, nn.Embedding):
            init.orthogonal_(module.weight, gain=1e-4 * math.sqrt(max(module.weight.shape)))
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)


AutoConfig.register(SpikeGPTConfig.model_type, SpikeGPTConfig, exist_ok=True)
AutoModelForCausalLM.register(SpikeGPTConfig, SpikeGPTForCausalLM, exist_ok=True)

"""Fake quantization: the quantizers against hand-computed values and a float64 definition, the
straight-through gradient, which layers are replaced, bad settings, and quantized training runs (exact
resume, save and reload, composition with the other options, SpikeGPT generation)."""

import json
import math

import pytest
import test_trainer_run as trainer_run
import torch
from test_trainer_ddp import train_on_two_cpu_processes
from test_trainer_run import interrupt_at_step, losses, resumed_from
from torch import nn

from trainers.checkpointing import checkpoints
from trainers.config import load_config
from trainers.models import build_model
from trainers.pretrain import main
from trainers.quant import FORMATS, QuantConfig, QuantLinear, quantizable_layers, quantize_model
from trainers.quant.fake_quant import absmax_int, minmax_int, mx_fp4, straight_through

# The trainer tests' fixtures: a small JSONL corpus, its datasets cache, and run(name, *flags).
corpus, cache_dir, run = trainer_run.corpus, trainer_run.cache_dir, trainer_run.run

E2M1_GRID = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]  # index parity = mantissa bit: ties go to even


# --- the definitions, one group at a time in Python floats (float64) ---------------------------------

def ref_minmax(values: list[float], bits: int) -> list[float]:
    lo, hi, levels = min(min(values), 0.0), max(max(values), 0.0), 2**bits - 1
    if hi == lo:
        return [0.0] * len(values)
    scale = (hi - lo) / levels
    zero = round(-lo / scale)  # Python rounds half to even, as torch.round does
    return [(min(max(round(v / scale) + zero, 0), levels) - zero) * scale for v in values]


def ref_absmax(values: list[float], bits: int, keep: int) -> list[float]:
    kept = set(sorted(range(len(values)), key=lambda i: -abs(values[i]))[:keep])
    rest = max(abs(v) for i, v in enumerate(values) if i not in kept)
    scale = rest / (2 ** (bits - 1) - 1)
    return [v if i in kept else (round(v / scale) * scale if scale else 0.0) for i, v in enumerate(values)]


def ref_e2m1(values: list[float]) -> list[float]:
    absmax = max(abs(v) for v in values)
    if absmax == 0:
        return [0.0] * len(values)
    scale = 2.0 ** (math.frexp(absmax)[1] - 1 - 2)  # 2**(floor(log2 absmax) - emax of E2M1)
    out = []
    for v in values:
        y = min(abs(v) / scale, 6.0)
        best = min(range(len(E2M1_GRID)), key=lambda i: (abs(E2M1_GRID[i] - y), i % 2))
        out.append(math.copysign(E2M1_GRID[best] * scale, v))
    return out


def by_groups(reference, x: torch.Tensor, group: int, **kwargs) -> torch.Tensor:
    rows = x.double().reshape(-1, group).tolist()
    return torch.tensor([reference(row, **kwargs) for row in rows], dtype=torch.float64).reshape(x.shape)


# --- quantizers ------------------------------------------------------------------------------------

def test_int4_weights_by_hand():
    w = torch.tensor([[-1.5, -0.25, 0.5, 6.0, 0.5, 1.0, 2.0, 3.75]])
    # Group 1: range 7.5 in 15 steps of 0.5, zero point 3; -0.25 is a tie and rounds to the even code 0.
    # Group 2 is all positive: its range is widened to [0, 3.75], steps of 0.25, and nothing is clipped
    # (the paper's code would map 3.75 to 3.25: its zero point clamps to 0 at a range that excludes 0).
    assert minmax_int(w, 4, 4).tolist() == [[-1.5, 0.0, 0.5, 6.0, 0.5, 1.0, 2.0, 3.75]]
    got = minmax_int(torch.tensor([[0.1, -0.7, 0.3, 1.2]]), 4, 4)  # steps of 1.9 / 15, zero point 6
    step = 1.9 / 15
    expected = [[step, -6 * step, 2 * step, 9 * step]]
    torch.testing.assert_close(got, torch.tensor(expected), rtol=1e-6, atol=0)


def test_int4_activations_keep_the_two_largest_exact():
    x = torch.tensor([0.1, -8.0, 0.7, 3.0, -0.35, 0.0, 5.0, 0.2, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    got = absmax_int(x, 4, 8, keep=2)
    # -8 and 5 stay; the third largest, 3, sets the scale 3/7 for the rest of the group.
    s = 3.0 / 7
    expected = [0.0, -8.0, 2 * s, 3.0, -s, 0.0, 5.0, 0.0] + [1.0] * 8
    torch.testing.assert_close(got, torch.tensor(expected), rtol=1e-6, atol=0)
    assert got[1].item() == -8.0 and got[6].item() == 5.0  # bit for bit


def test_mx_fp4_rounds_to_nearest_even_and_saturates():
    y = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 7.0])  # absmax 7: scale 2**(2 - 2) = 1
    expected = [0.0, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0, 6.0]  # ties to the even mantissa; 7 saturates to 6
    assert mx_fp4(y, 8).tolist() == expected
    assert mx_fp4(y / 8, 8).tolist() == [v / 8 for v in expected]  # the scale is a power of two
    assert mx_fp4(-y, 8).tolist() == [-v for v in expected]


@pytest.mark.parametrize("quantizer, reference, kwargs", [
    (minmax_int, ref_minmax, dict(bits=4)),
    (minmax_int, ref_minmax, dict(bits=8)),
    (absmax_int, ref_absmax, dict(bits=4, keep=2)),
    (absmax_int, ref_absmax, dict(bits=8, keep=0)),
    (mx_fp4, ref_e2m1, {}),
])
def test_quantizers_match_their_float64_definition_group_by_group(quantizer, reference, kwargs):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(6, 24, generator=gen) * torch.logspace(-3, 3, 6)[:, None]  # groups of very unequal sizes
    x[2, 8:16] += 5.0  # a group of one sign
    for group in (8, None):  # 3 groups per row, or the whole row (per channel / per token)
        expected = by_groups(reference, x, group or x.shape[-1], **kwargs)
        got = quantizer(x, group_size=group, **kwargs)
        assert got.dtype == x.dtype
        torch.testing.assert_close(got.double(), expected, rtol=2e-6, atol=0)


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_zero_constant_and_tiny_groups_give_no_nan(fmt):
    quant = QuantConfig(format=fmt, group_size=8)
    groups = torch.tensor([[0.0] * 8, [2.5] * 8, [-2.5] * 8, [1e-40] * 8, [0.0] * 7 + [3.0]])
    for quantizer in (quant.weight_quantizer(), quant.activation_quantizer()):
        out = quantizer(groups)
        assert torch.isfinite(out).all()
        assert out[0].eq(0).all() and out[3].abs().le(1e-38).all()
        if fmt != "fp4":  # FP4 has no 2.5 (it rounds to 2); the integer grids hold a constant group
            torch.testing.assert_close(out[1:3], groups[1:3], rtol=1e-6, atol=0)
        out16 = quantizer(groups.bfloat16())  # computed in float32, returned in the input's dtype
        assert out16.dtype == torch.bfloat16 and torch.equal(out16, out.bfloat16())


def test_straight_through_gradients():
    quant = QuantConfig(format="int4", group_size=8)
    layer = QuantLinear.wrap(nn.Linear(16, 4), quant)
    x = torch.randn(3, 5, 16, requires_grad=True)
    upstream = torch.randn(3, 5, 4)
    (layer(x) * upstream).sum().backward()
    qx, qw = quant.activation_quantizer()(x.detach()), quant.weight_quantizer()(layer.weight.detach())
    assert not torch.equal(qx, x) and not torch.equal(qw, layer.weight)
    # The rounding is skipped by the backward pass: the gradients are those of F.linear(qx, qw).
    torch.testing.assert_close(layer.weight.grad, upstream.reshape(-1, 4).T @ qx.reshape(-1, 16))
    torch.testing.assert_close(x.grad, upstream @ qw)
    torch.testing.assert_close(layer.bias.grad, upstream.sum((0, 1)))
    v = torch.randn(10, requires_grad=True)
    straight_through(lambda t: torch.zeros_like(t), v).mul(torch.arange(10.0)).sum().backward()
    assert torch.equal(v.grad, torch.arange(10.0))


def trained_looking(preset: str, vocab_size: int) -> nn.Module:
    """A preset whose linears all have random weights (SpikeGPT starts some at zero: its blocks add 0)."""
    torch.manual_seed(0)
    model = build_model(preset, vocab_size=vocab_size, seq_len=32)
    with torch.no_grad():
        for layer in model.modules():
            if isinstance(layer, nn.Linear):
                layer.weight.normal_(0, 2.0 / math.sqrt(layer.in_features))
    return model


# --- which layers ----------------------------------------------------------------------------------

LLAMA_LINEARS = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                 "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
SPIKEGPT_LINEARS = ["att.key", "att.value", "att.receptance", "att.output", "ffn.key", "ffn.receptance",
                    "ffn.value"]


@pytest.mark.parametrize("preset, blocks, linears", [
    ("llama-tiny", "model.layers", LLAMA_LINEARS),
    ("spikegpt-tiny", "blocks", SPIKEGPT_LINEARS),
])
def test_the_block_linears_are_replaced_and_nothing_else(preset, blocks, linears):
    model = trained_looking(preset, vocab_size=50)
    params = dict(model.named_parameters())
    ids = torch.randint(0, 50, (2, 16))
    with torch.no_grad():
        before = model(input_ids=ids).logits
    replaced = quantize_model(model, QuantConfig(format="int4", group_size=32))
    assert replaced == [f"{blocks}.{i}.{name}" for i in range(2) for name in linears]
    quantized = {name for name, m in model.named_modules() if isinstance(m, QuantLinear)}
    assert quantized == set(replaced)
    # The head stays a plain linear; embeddings and norms are untouched.
    assert type(model.get_output_embeddings()) is nn.Linear
    assert type(model.get_input_embeddings()) is nn.Embedding
    # The same parameters under the same names: optimizer, checkpoints and monitor see no difference.
    after_params = dict(model.named_parameters())
    assert after_params.keys() == params.keys() and all(after_params[n] is p for n, p in params.items())
    with torch.no_grad():
        after = model(input_ids=ids).logits
    assert not torch.equal(after, before) and torch.isfinite(after).all()
    assert model.config.fake_quantization == {"format": "int4", "group_size": 32, "activations": True}


def test_layers_reading_one_tensor_quantize_it_once(monkeypatch):
    import trainers.quant.linear as linear_module

    model = trained_looking("llama-tiny", vocab_size=50)
    separate = trained_looking("llama-tiny", vocab_size=50)
    quantize_model(model, QuantConfig(format="int4", group_size=32))
    quant = QuantConfig(format="int4", group_size=32)
    for name, layer in quantizable_layers(separate):  # one SharedInputs per layer: nothing is shared
        parent, _, child = name.rpartition(".")
        setattr(separate.get_submodule(parent), child, QuantLinear.wrap(layer, quant))
    calls = []
    counted = lambda quantizer, x: (calls.append(x), straight_through(quantizer, x))[1]  # noqa: E731
    monkeypatch.setattr(linear_module, "straight_through", counted)
    ids = torch.randint(0, 50, (2, 16), generator=torch.Generator().manual_seed(0))
    loss = model(input_ids=ids, labels=ids).loss
    # Per block: q/k/v share one input, o has its own, gate/up share one, down has its own; 14 weights.
    assert len([x for x in calls if x.dim() == 3]) == 2 * 4 and len(calls) == 2 * 4 + 14
    loss.backward()
    reference = separate(input_ids=ids, labels=ids).loss
    reference.backward()
    assert loss.item() == reference.item()
    for (name, p), q in zip(model.named_parameters(), separate.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-7, msg=name)


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="unknown quantization format 'int3'"):
        QuantConfig(format="int3")
    with pytest.raises(ValueError, match="group_size=2"):
        QuantConfig(format="int4", group_size=2)
    model = build_model("llama-9m", vocab_size=50, seq_len=16)  # input widths 128 and 352
    message = (r"group size 64 does not divide the input width of layer 'model.layers.0.mlp.down_proj' "
               r"\(352\) \(and 3 more layers\): pass --quant-group-size 32")
    with pytest.raises(ValueError, match=message):
        quantize_model(model, QuantConfig(format="int4", group_size=64))
    with pytest.raises(ValueError, match="'model.layers.0.self_attn.q_proj' .*pass --quant-group-size 32"):
        quantize_model(model, QuantConfig(format="fp4", group_size=256))
    assert not hasattr(model.config, "fake_quantization")  # a refused setting changes nothing
    assert quantize_model(model, QuantConfig(format="int8"))
    assert model.config.fake_quantization["format"] == "int8"
    with pytest.raises(ValueError, match="already quantized"):
        quantize_model(model, QuantConfig(format="int4", group_size=32))
    with pytest.raises(ValueError, match="no linear layer to quantize"):
        quantize_model(nn.Sequential(nn.Embedding(10, 4), nn.LayerNorm(4)), QuantConfig(format="int4"))
    with pytest.raises(ValueError, match="invalid quant='int3': accepted values are none, int8, int4"):
        load_config(["--quant", "int3"])
    with pytest.raises(ValueError, match="invalid quant_group_size=1"):
        load_config(["--quant", "int4", "--quant-group-size", "1"])


# --- training runs ---------------------------------------------------------------------------------

QUANT = ["--quant", "int4", "--quant-group-size", "16"]  # llama-tiny's widths are 32 and 64


def test_a_quantized_spam_run_resumes_bit_for_bit(run, tmp_path, monkeypatch):
    flags = [*QUANT, "--optimizer", "spam", "--optimizer-kwargs",
             '{"reset_interval": 4, "warmup_steps": 2, "clip_delay": 1, "threshold": 2.0}',
             "--spike-guard", "--guard-min-history", "2"]
    reference = losses(run("whole", *flags))
    with monkeypatch.context() as patch:
        interrupt_at_step(patch, 6)
        with pytest.raises(KeyboardInterrupt):
            run("broken", *flags)
    assert checkpoints(tmp_path / "broken")[0].name == "step_3"
    resumed = run("broken", *flags, "--resume", "auto")
    assert resumed_from(resumed).endswith("step_3")
    assert losses(resumed) == reference  # exact float equality, every step
    unquantized = losses(run("plain", *flags[4:], "--max-steps", "1"))
    assert unquantized[1] != reference[1]  # the quantized run computed something else from step 1


def test_a_quantized_run_records_its_setting_and_reloads_with_it(run, corpus, cache_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from spam_opt.dashboard import render_dashboard
    from trainers.data import build_splits, load_documents, make_batches

    run_dir = run("saved", *QUANT, "--eval-every", "8")
    assert "quant: int4" in (run_dir / "config.yaml").read_text()
    header = render_dashboard(run_dir).read_text().split("<p>")[1].split("</p>")[0]
    assert header.endswith("; low-bit training: int4 g16, activations")
    logged = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    eval_loss = next(r["eval_loss"] for r in logged if r.get("step") == 8 and "eval_loss" in r)

    model = AutoModelForCausalLM.from_pretrained(str(run_dir / "final")).eval()
    setting = QuantConfig.from_model_config(model.config)
    assert setting == QuantConfig(format="int4", group_size=16, activations=True)
    weight = model.model.layers[0].mlp.down_proj.weight
    assert not torch.equal(weight, setting.weight_quantizer()(weight))  # full precision, not rounded
    # The run's evaluation batches, through the reloaded model quantized as it was trained.
    tokenizer = AutoTokenizer.from_pretrained(str(run_dir / "final"))
    splits = build_splits(load_documents(str(corpus), cache_dir=cache_dir), tokenizer, 32, 0.05)
    batches = make_batches(splits.val, 4, 0, shuffle=False, name="validation")

    def mean_loss() -> float:
        with torch.no_grad():
            return sum(model(input_ids=batches[i], labels=batches[i]).loss.item() for i in range(2)) / 2

    plain = mean_loss()
    quantize_model(model, setting)
    assert mean_loss() == pytest.approx(eval_loss, rel=1e-7, abs=0)
    assert abs(plain - eval_loss) > 1e-5  # unquantized, the same weights give another loss


@pytest.mark.parametrize("flags", [
    ["--quant", "fp4", "--quant-group-size", "32", "--optimizer", "stable-spam",
     "--mixed-precision", "bf16"],
    ["--model", "spikegpt-tiny", "--quant", "int4", "--quant-group-size", "32", "--optimizer", "adamw",
     "--max-grad-norm", "1.0"],
    ["--quant", "int8", "--no-quant-activations", "--optimizer", "adamw"],
], ids=["fp4-stable-spam-bf16", "spikegpt-int4-adamw-clip", "int8-weights-only"])
def test_quantized_runs_compose_with_the_other_options(run, flags):
    run_dir = run("composed", *flags, "--max-steps", "6", "--save-every", "0", "--eval-every", "6")
    train = losses(run_dir)
    assert len(train) == 6 and all(math.isfinite(v) for v in train.values())
    assert train[6] < train[1]


def test_quantized_spikegpt_generation_matches_a_full_reforward():
    model = trained_looking("spikegpt-tiny", vocab_size=23)
    quantize_model(model, QuantConfig(format="int4", group_size=32))
    model.eval()
    prompt = torch.randint(0, 23, (2, 7), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        generated = model.generate(prompt, max_new_tokens=8, do_sample=False)
        seq = prompt
        for _ in range(8):  # greedy decoding by re-running the whole sequence every time
            seq = torch.cat([seq, model(input_ids=seq).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(generated, seq)


@pytest.mark.slow
@pytest.mark.distributed
def test_two_quantized_processes_match_one_with_the_same_global_batch(tmp_path, corpus, cache_dir):
    common = ["--model", "llama-tiny", "--dataset", str(corpus), "--cache-dir", cache_dir, "--seq-len", "32",
              "--max-steps", "4", "--lr-warmup-steps", "2", "--log-every", "1", "--eval-every", "0",
              "--save-every", "0", "--output-dir", str(tmp_path), "--no-progress-bar", "--no-dashboard",
              "--trackers", "", "--optimizer", "spam", *QUANT]
    train_on_two_cpu_processes([*common, "--batch-size", "2", "--run-name", "ddp"])
    single = losses(main([*common, "--batch-size", "4", "--run-name", "one"]))
    ddp = losses(tmp_path / "ddp")
    assert ddp.keys() == single.keys() == set(range(1, 5))
    for step in single:  # each rank quantizes its own tokens as the single process does
        assert ddp[step] == pytest.approx(single[step], rel=1e-5, abs=1e-6)

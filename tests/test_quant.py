"""The weight-only int8 query path: CPU-feature decisions (injected flags), the selection
rule, and agreement with the exact float32 recipe on the tiny model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from indexer.model import QUERY_INSTRUCTION
from indexer.model.gme import query_weights
from indexer.model.runtime import cpu_features, lowp

AVX2_ONLY = frozenset({"fpu", "sse4_2", "avx", "avx2", "fma"})
AVX512_BF16 = AVX2_ONLY | {"avx512f", "avx512_vnni", "avx512_bf16"}
AMX = AVX2_ONLY | {"avx512f", "amx_tile", "amx_bf16", "amx_int8"}
QUERIES = ["what is camlidl", "x", "a much longer query about interface definitions " * 3]


def plan(**kw):
    args = {"dtype": "float32", "hidden": 1536, "flags": AVX2_ONLY, "machine": "x86_64"}
    return query_weights.plan_query_weights(kw.pop("setting", "auto"), **{**args, **kw})


def test_auto_plan_follows_cpu_features():
    # AVX2 without native bf16: the candidates, fastest there first (fp16 needs fbgemm)
    assert plan().candidates == query_weights.AUTO_ORDER
    assert query_weights.AUTO_ORDER[0] == "fp16" and "int8-bf16" not in query_weights.AUTO_ORDER
    assert plan(flags=AVX512_BF16).candidates == ()  # native bf16: the model runs bf16
    assert plan(flags=AMX).candidates == ()
    assert "native bf16" in plan(flags=AMX).reason
    assert plan(flags=frozenset({"sse4_2"})).candidates == ()  # kernel not vectorised
    assert plan(machine="aarch64", flags=frozenset({"asimd"})).candidates == ()
    assert plan(dtype="bfloat16").candidates == ()
    assert plan(hidden=64).candidates == ()  # too small to be bandwidth-bound
    assert plan(device="cuda").candidates == ()
    assert plan(setting="exact").candidates == ()
    # asking for a candidate overrides the feature rule (but not the device)
    assert plan(setting="int8", flags=AMX).candidates == ("int8-bf16",)
    assert plan(setting="int8-fp32", hidden=64).candidates == ("int8-fp32",)
    with pytest.raises(ValueError, match="CPU"):
        plan(setting="int8", device="cuda")
    with pytest.raises(ValueError, match="query_weights"):
        plan(setting="int4")


def test_native_bf16_reads_flags():
    assert cpu_features.has_native_bf16(AMX) and cpu_features.has_native_bf16(AVX512_BF16)
    assert not cpu_features.has_native_bf16(AVX2_ONLY)
    assert isinstance(cpu_features.cpu_flags(), frozenset)


class _FakeWeights:
    removed = 0

    def __init__(self, name):
        self.name = name

    def remove(self):
        _FakeWeights.removed += 1


@pytest.mark.parametrize(
    ("cos", "secs", "forced", "mode"),
    [
        (0.9995, 0.1, False, "int8-bf16"),  # agrees and faster: used
        (0.9995, 2.0, False, "exact"),  # agrees but slower: not worth it
        (0.9995, 2.0, True, "int8-bf16"),  # asked for: used although slower
        (0.99, 0.1, False, "exact"),  # faster but drifts: never
        (0.99, 0.1, True, "exact"),  # not even when asked for
    ],
)
def test_choose_keeps_only_a_candidate_that_holds(monkeypatch, cos, secs, forced, mode):
    gen = torch.Generator().manual_seed(0)
    exact = torch.nn.functional.normalize(torch.randn(4, 8, generator=gen), dim=-1)
    other = exact.clone()
    # the first row at the given cosine to the exact one, the others equal
    r = torch.randn(8, generator=gen)
    ortho = torch.nn.functional.normalize(r - (r @ exact[0]) * exact[0], dim=0)
    other[0] = cos * exact[0] + (1 - cos**2) ** 0.5 * ortho
    times = {"exact": 1.0, "cand": secs}
    now = [0.0]

    def fake_perf_counter():
        return now[0]

    def run_exact():
        now[0] += times["exact"]
        return exact

    def run_with(_w):
        now[0] += times["cand"]
        return other

    monkeypatch.setattr(query_weights.time, "perf_counter", fake_perf_counter)
    choice, weights = query_weights.choose(
        query_weights.QueryPlan(("int8-bf16",), "test"),
        run_exact=run_exact,
        make=_FakeWeights,
        run_with=run_with,
        forced=forced,
    )
    assert choice.mode == mode
    assert (weights is not None) == (mode != "exact")
    assert choice.candidates["int8-bf16"]["holds"] == (cos >= lowp.MIN_QUERY_COSINE)


def test_choose_takes_the_first_candidate_that_holds_and_is_faster(monkeypatch):
    exact = torch.eye(3)
    drift = torch.nn.functional.normalize(torch.eye(3) + 0.2, dim=-1)  # cosine ~0.98
    order = ("int8-bf16", "int8x2-bf16", "bf16")
    results = {"int8-bf16": (drift, 0.2), "int8x2-bf16": (exact, 0.5), "bf16": (exact, 0.1)}
    now = [0.0]
    monkeypatch.setattr(query_weights.time, "perf_counter", lambda: now[0])
    made = []

    def run_exact():
        now[0] += 1.0
        return exact

    def run_with(w):
        vecs, secs = results[w.name]
        now[0] += secs
        return vecs

    def make(name):
        made.append(name)
        return _FakeWeights(name)

    choice, weights = query_weights.choose(
        query_weights.QueryPlan(order, "t"), run_exact=run_exact, make=make, run_with=run_with
    )
    assert choice.mode == "int8x2-bf16" and weights.name == "int8x2-bf16"
    assert made == ["int8-bf16", "int8x2-bf16"]  # bf16 never built: one extra copy at most
    assert choice.candidates["int8-bf16"]["holds"] is False


def _dequantised_copy(tiny_model_dir):
    """The tiny model in float32 with every decoder linear weight replaced by q * scale."""
    from indexer import load_embedder

    emb = load_embedder(tiny_model_dir, device="cpu", dtype="float32", query_weights="exact")
    with torch.no_grad():
        for mod in emb._text_model.modules():
            if isinstance(mod, torch.nn.Linear):
                q, scale = lowp.quantize_weight(mod.weight)
                mod.weight.copy_(q.float() * scale[:, None])
    return emb


def test_int8_weights_compute_the_dequantised_model(tiny_model_dir):
    """The kernel path equals float32 math on the dequantised weights (fp32 activations
    exactly, bf16 activations up to their rounding), and stays close to the exact recipe."""
    from indexer import load_embedder

    exact = load_embedder(tiny_model_dir, device="cpu", dtype="float32", query_weights="exact")
    ref_exact = exact.embed_texts(QUERIES, instruction=QUERY_INSTRUCTION)
    deq_model = _dequantised_copy(tiny_model_dir)
    deq_model.prefix_cache = False  # the whole prompt through the (dequantised) weights
    deq = deq_model.embed_texts(QUERIES, instruction=QUERY_INSTRUCTION)
    got, whole = {}, {}
    for mode in lowp.CANDIDATES:
        emb = load_embedder(tiny_model_dir, device="cpu", dtype="float32", query_weights="exact")
        emb.embed_texts(["warm"], instruction=QUERY_INSTRUCTION)  # exact prompt-prefix cache
        weights = lowp.QueryWeights(emb._text_model, mode)
        assert weights.bytes > 0 and len(weights.linears) == 2 * 7  # 2 layers x q,k,v,o,3 mlp
        fp32_bytes = sum(m.weight.numel() * 4 for m in weights.linears)
        assert weights.bytes < fp32_bytes / (3 if mode.startswith("int8-") else 1.9)
        with weights.active():
            got[mode] = emb.embed_texts(QUERIES, instruction=QUERY_INSTRUCTION)
            emb.prefix_cache = False
            whole[mode] = emb.embed_texts(QUERIES, instruction=QUERY_INSTRUCTION)
            emb.prefix_cache = True
        # outside the context the same module computes the exact vectors again
        again = emb.embed_texts(QUERIES, instruction=QUERY_INSTRUCTION)
        assert np.sum(again * ref_exact, axis=1).min() > 0.99999
        weights.remove()
        assert "forward" not in emb._text_model.layers[0].mlp.up_proj.__dict__
    assert np.sum(whole["int8-fp32"] * deq, axis=1).min() > 0.99999
    assert np.sum(whole["int8-bf16"] * deq, axis=1).min() > 0.99
    # two int8 levels and bf16 weights are far closer to the exact weights than one level
    err = {m: 1 - np.sum(got[m] * ref_exact, axis=1).min() for m in got}
    assert err["int8x2-bf16"] < err["int8-bf16"] and err["bf16"] < err["int8-bf16"]
    # the int4 level takes out most of the int8 rounding (1.5 bytes per weight)
    assert err["int8+int4-bf16"] < err["int8-bf16"]
    # fp16 weights with float32 activations: float32 math on the fp16-rounded weights
    fp16_model = load_embedder(tiny_model_dir, device="cpu", dtype="float32", query_weights="exact")
    with torch.no_grad():
        for mod in fp16_model._text_model.modules():
            if isinstance(mod, torch.nn.Linear):
                mod.weight.copy_(mod.weight.half().float())
    fp16_model.prefix_cache = False
    rounded = fp16_model.embed_texts(QUERIES, instruction=QUERY_INSTRUCTION)
    assert np.sum(whole["fp16"] * rounded, axis=1).min() > 0.99999
    assert err["fp16"] < min(err[m] for m in got if m not in ("fp16", "int8-fp32"))
    # the tiny model's weights (std 0.5) are far rougher than GME's; the full-size figure
    # (cosine >= 0.999) is measured by `pagelens bench`
    for vecs in got.values():
        assert np.sum(vecs * ref_exact, axis=1).min() > 0.98
        assert np.allclose(np.linalg.norm(vecs, axis=1), 1, atol=1e-4)


def test_no_native_bf16_cpu_takes_the_int8_path(tiny_model_dir, monkeypatch):
    """An AVX2-only CPU (flags injected) with a GME-sized model (size gate lowered) measures
    the candidates against the exact path; pages never use it."""
    from indexer import load_embedder
    from indexer.model.runtime import device as runtime_device

    monkeypatch.setattr(runtime_device, "CPU_BF16_MIN_HIDDEN", 0)
    monkeypatch.setattr(cpu_features.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(lowp, "MIN_QUERY_COSINE", 0.98)  # tiny model: see above
    emb = load_embedder(tiny_model_dir, device="cpu", dtype="float32")
    emb.cpu_flags = AVX2_ONLY
    exact_pages = None
    choice = emb.prepare_queries()
    assert query_weights.AUTO_ORDER[0] in choice.candidates and choice.exact_s is not None
    tried = list(choice.candidates)
    assert tried == list(query_weights.AUTO_ORDER[: len(tried)])  # in order, stopping at a winner
    ok = [n for n in tried if choice.candidates[n]["holds"] and choice.candidates[n]["faster"]]
    assert choice.mode == (ok[0] if ok else "exact")
    assert ok == [] or ok[0] == tried[-1]
    # force it on, then check queries and pages
    assert emb.set_query_weights("int8").mode == "int8-bf16"
    vecs = emb.embed_texts(QUERIES, instruction=QUERY_INSTRUCTION)
    ref = load_embedder(tiny_model_dir, device="cpu", dtype="float32", query_weights="exact")
    assert np.sum(vecs * ref.embed_texts(QUERIES, instruction=QUERY_INSTRUCTION), 1).min() > 0.98
    from PIL import Image

    page = Image.new("RGB", (224, 280), "white")
    exact_pages = ref.embed_images([page])
    assert np.sum(emb.embed_images([page]) * exact_pages, axis=1).min() > 0.99999

    # the same machine with native bf16 does not even try
    emb2 = load_embedder(tiny_model_dir, device="cpu", dtype="float32")
    emb2.cpu_flags = AVX512_BF16
    assert emb2.prepare_queries().candidates == {}
    assert emb2.prepare_queries().mode == "exact"


def test_query_weights_option_is_checked(tiny_model_dir):
    from indexer import load_embedder

    with pytest.raises(ValueError, match="query_weights"):
        load_embedder(tiny_model_dir, device="cpu", query_weights="int4")


def test_help_prints_the_int8_agreement_beside_the_option():
    """Dynamic int8 stays opt-in (its top-10 overlap is below 0.95 on the AVX2 machine):
    --help says so with the measured figures."""
    from typer.testing import CliRunner

    from app.cli import cli

    result = CliRunner().invoke(cli, ["--help"], env={"COLUMNS": "200", "TERM": "dumb"})
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    at = text.index("--quantize")
    assert "top-10 overlap" in text[at : at + 600] and "0.875-0.962" in text[at : at + 600]


def test_isa_caps_in_the_environment_remove_the_instructions_they_forbid():
    """ATEN_CPU_CAPABILITY=avx2 (and oneDNN's, MKL's, fbgemm's caps) make this CPU plan like
    an AVX2-only one: no native bf16, the int8 query path is tried."""
    zen4 = AVX512_BF16 | {"avx512bw", "avx512_fp16", "avx_vnni"}
    assert cpu_features.isa_cap({}) == (None, {})
    assert cpu_features.cap_flags(zen4, None) == zen4
    for var, value in [
        ("ATEN_CPU_CAPABILITY", "avx2"),
        ("ONEDNN_MAX_CPU_ISA", "AVX2"),
        ("DNNL_MAX_CPU_ISA", "avx2"),
        ("MKL_ENABLE_INSTRUCTIONS", "AVX2"),
        ("FBGEMM_ENABLE_INSTRUCTIONS", "AVX2"),
    ]:
        level, found = cpu_features.isa_cap({var: value})
        assert level == "avx2" and found == {var: value}
        capped = cpu_features.cap_flags(zen4, level)
        assert {"avx2", "fma"} <= capped and not any(f.startswith("avx512") for f in capped)
        assert not cpu_features.has_native_bf16(capped)
        assert plan(flags=capped).candidates == query_weights.AUTO_ORDER
    # the lowest cap wins; oneDNN's bf16 level keeps bf16 but drops AMX
    both = {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16", "MKL_ENABLE_INSTRUCTIONS": "AVX512"}
    assert cpu_features.isa_cap(both)[0] == "avx512"
    level = cpu_features.isa_cap({"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"})[0]
    bf16_only = cpu_features.cap_flags(AMX | {"avx512_bf16"}, level)
    assert "avx512_bf16" in bf16_only and not bf16_only & {"amx_tile", "amx_bf16"}
    assert cpu_features.cap_flags(
        AVX2_ONLY, cpu_features.isa_cap({"ATEN_CPU_CAPABILITY": "default"})[0]
    ) == {
        "fpu",
        "sse4_2",
    }
    # values that cap nothing are ignored (and not reported as a cap)
    assert cpu_features.isa_cap(
        {"ATEN_CPU_CAPABILITY": "avx512", "MKL_ENABLE_INSTRUCTIONS": ""}
    ) == (
        None,
        {},
    )


def test_cpu_flags_and_the_model_dtype_follow_the_cap(monkeypatch):
    from indexer.model.runtime import device as runtime_device

    monkeypatch.setattr(cpu_features, "_read_cpu_flags", lambda: AVX512_BF16)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("MKL_ENABLE_INSTRUCTIONS", raising=False)
    monkeypatch.delenv("FBGEMM_ENABLE_INSTRUCTIONS", raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)
    assert (
        runtime_device.cpu_has_native_bf16()
        and runtime_device.resolve_dtype(None, "cpu") == torch.bfloat16
    )
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    assert cpu_features.cpu_flags() == cpu_features.cap_flags(AVX512_BF16, "avx2")
    assert (
        not runtime_device.cpu_has_native_bf16()
        and runtime_device.resolve_dtype(None, "cpu") == torch.float32
    )


def test_int8_int4_levels_reconstruct_the_weight():
    """The int4 level (groups along K, asymmetric) cuts the int8 rounding error ~15x, and the
    two kernels compute the dequantised weight's product (bf16 activations)."""
    gen = torch.Generator().manual_seed(0)
    lin = torch.nn.Linear(256, 96)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(96, 256, generator=gen) * 0.02)
    w = lin.weight.detach()
    q8, s8, packed, sz, group = lowp.quantize_int8_int4(w)
    assert group == 128 and lowp.int4_group(96) == 32
    with pytest.raises(ValueError, match="multiple of 32"):
        lowp.int4_group(80)
    int8_only = q8.float() * s8.float()[:, None]
    # rebuild the int4 level from its scales and zeros: w ~= (q - 8) * scale + zero
    q4, sz2 = lowp.quantize_int4(w - int8_only, group)
    assert torch.equal(sz, sz2) and int(q4.min()) >= 0 and int(q4.max()) <= 15
    scale = sz[..., 0].float().t().repeat_interleave(group, dim=1)
    zero = sz[..., 1].float().t().repeat_interleave(group, dim=1)
    both = int8_only + (q4.float() - 8) * scale + zero
    e8 = (w - int8_only).pow(2).mean().sqrt()
    e84 = (w - both).pow(2).mean().sqrt()
    assert e84 < e8 / 8
    x = torch.randn(5, 256, generator=gen)
    weights = lowp.QueryWeights(lin, "int8+int4-bf16")
    assert 1.5 * w.numel() < weights.bytes < 1.6 * w.numel() + 2 * 96
    with weights.active():
        got = lin(x)
    want = torch.nn.functional.linear(x.bfloat16().float(), both, lin.bias)
    assert ((got - want).norm() / want.norm()) < 5e-3  # bf16 activations and outputs
    weights.remove()


def test_int8mix_keeps_two_levels_in_the_first_layers(tiny_model_dir, monkeypatch):
    """int8mix-bf16: the first MIX_PRECISE_LAYERS decoder layers (the most sensitive) get two
    int8 levels, the others one; ~1 byte per weight for a 28-layer model."""
    from indexer import load_embedder

    monkeypatch.setattr(lowp, "MIX_PRECISE_LAYERS", 1)
    emb = load_embedder(tiny_model_dir, device="cpu", dtype="float32", query_weights="exact")
    text = emb._text_model
    x = torch.randn(3, text.config.hidden_size)
    exact = {name: text.layers[i].self_attn.o_proj(x) for i, name in enumerate(("l0", "l1"))}
    sizes = {}
    for mode in ("int8-bf16", "int8x2-bf16", "int8mix-bf16"):
        weights = lowp.QueryWeights(text, mode)
        sizes[mode] = weights.bytes
        with weights.active():
            got = {name: text.layers[i].self_attn.o_proj(x) for i, name in enumerate(("l0", "l1"))}
        weights.remove()
        if mode == "int8x2-bf16":
            two = got
        elif mode == "int8-bf16":
            one = got
        else:
            mix = got
    # layer 0 computes like two levels, layer 1 like one
    assert torch.equal(mix["l0"], two["l0"]) and torch.equal(mix["l1"], one["l1"])
    assert not torch.equal(two["l1"], one["l1"])
    assert (two["l0"] - exact["l0"]).norm() < (one["l0"] - exact["l0"]).norm()
    assert sizes["int8-bf16"] < sizes["int8mix-bf16"] < sizes["int8x2-bf16"]


def test_a_candidate_without_its_kernel_is_refused(monkeypatch):
    """A torch build without fbgemm: the fp16 candidate is neither planned nor made."""
    monkeypatch.setattr(lowp, "kernel_available", lambda mode: mode != "fp16")
    assert "fp16" not in plan().candidates
    with pytest.raises(RuntimeError, match="kernel"):
        lowp.QueryWeights(torch.nn.Linear(4, 4), "fp16")
    # asked for by name: a clear error, not a crash later
    with pytest.raises(ValueError, match="fbgemm"):
        plan(setting="fp16")
    assert plan(setting="int8").candidates == ("int8-bf16",)


@pytest.mark.skipif(not lowp.kernel_available("fp16"), reason="no fbgemm in this torch build")
def test_fp16_packing_in_a_pool_is_the_same_packing(monkeypatch):
    """The fp16 copy is packed on torch's threads (the copy took 12-19 s on one thread for
    GME-2B); each linear gets its own packing, the same as packed one at a time."""
    torch.manual_seed(0)
    linears = [torch.nn.Linear(64, 48), torch.nn.Linear(48, 64, bias=False)]
    x = torch.randn(5, 64)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    one = lowp._prepack_fp16(linears)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    pool = lowp._prepack_fp16(linears)
    assert set(one) == set(pool) == {id(m) for m in linears}
    for m, inp in ((linears[0], x), (linears[1], torch.randn(5, 48))):
        a = torch.ops.quantized.linear_dynamic_fp16(inp, one[id(m)])
        b = torch.ops.quantized.linear_dynamic_fp16(inp, pool[id(m)])
        assert torch.equal(a, b)
        ref = torch.nn.functional.linear(inp, m.weight.half().float(), m.bias)
        assert torch.allclose(a, ref, atol=1e-4)

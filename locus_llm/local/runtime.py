"""Generation with onnxruntime: a decoder-only ONNX model with a KV cache, behind `ChatModel`.

One `OnnxChatModel` per model folder holds the `InferenceSession` (thread-safe, shared) and the
tokenizer; every `stream_chat` call keeps its own cache, sampler and detokeniser, so concurrent
requests do not interfere. Inputs are found by name, so folders produced by other exporters in the
common layout (`input_ids`, `attention_mask`, `position_ids`, `past_key_values.N.key/value` →
`logits`, `present.N.key/value`, plus `tokenizer.json`) run as well as ours.
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from locus_llm.errors import ConfigError, LocusError
from locus_llm.local.base import ContextWindowExceeded, Delta

_PAST = re.compile(r"^past_key_values\.(\d+)\.(key|value)$")
_PRESENT = re.compile(r"^present\.(\d+)\.(key|value)$")
_ORT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}
# Prompt tokens per forward pass during prefill.
PREFILL_CHUNK = 256
# How long (µs) an idle onnxruntime worker thread keeps spinning for the next operator before it
# sleeps. A decode step is ~150 short parallel operators, and waking a sleeping thread for each
# costs more than the work on a VM's 2 cores: SmolLM2 int4, 2 threads, on an idle machine
# (emulated by real-time priority): 11.9 -> 7.8 ms a token. On a busy machine the spinning thread
# takes a core from the others instead (+9 % to +50 % a token at load 4x the cores), so by default
# threads spin only while the machine has an idle core (see `spin_microseconds`); without one,
# a session gets a single thread unless told otherwise.
SPIN_MICROSECONDS = 50
# Beyond this many candidates, nucleus sampling sorts the whole vocabulary (rarely needed).
_NUCLEUS_CANDIDATES = 256
# Used when a model folder carries no chat template: plain role-tagged turns.
_FALLBACK_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)


class ModelFolderError(LocusError, ValueError):
    """A model folder is missing a file or its graph does not have the expected inputs/outputs."""


def render_chat(
    template: str | None,
    messages: list[dict[str, Any]],
    *,
    bos_token: str | None = None,
    eos_token: str | None = None,
) -> str:
    """Render a Hugging Face-style (jinja2) chat template, the way transformers does."""
    return _compiled_template(template or _FALLBACK_TEMPLATE).render(
        messages=[_plain_message(m) for m in messages],
        add_generation_prompt=True,
        bos_token=bos_token or "",
        eos_token=eos_token or "",
        tools=None,
    )


def sample_token(
    logits: np.ndarray, temperature: float, top_p: float, rng: np.random.Generator
) -> int:
    """Greedy at temperature 0; otherwise temperature scaling and nucleus (top-p) sampling."""
    if temperature <= 0.0:
        return int(np.argmax(logits))
    scaled = logits.astype(np.float64) / temperature
    probs = np.exp(scaled - scaled.max())
    probs /= probs.sum()
    if top_p < 1.0:
        k = min(_NUCLEUS_CANDIDATES, probs.size)
        candidates = np.argpartition(probs, -k)[-k:]
        if probs[candidates].sum() < top_p:
            candidates = np.arange(probs.size)
        order = candidates[np.argsort(-probs[candidates], kind="stable")]
        cumulative = np.cumsum(probs[order])
        keep = int(np.searchsorted(cumulative, top_p)) + 1
        order = order[:keep]
        chosen = probs[order] / probs[order].sum()
        return int(order[int(np.searchsorted(np.cumsum(chosen), rng.random(), side="right"))])
    cumulative = np.cumsum(probs)
    index = int(np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right"))
    return min(index, probs.size - 1)


def _plain_message(message: dict[str, Any]) -> dict[str, Any]:
    """OpenAI content parts flattened to text: templates of small models expect a string."""
    content = message.get("content")
    if isinstance(content, list):
        content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return {**message, "content": content if content is not None else ""}


_TEMPLATES: dict[str, Any] = {}
_TEMPLATES_LOCK = threading.Lock()


def _compiled_template(source: str) -> Any:
    with _TEMPLATES_LOCK:
        if source not in _TEMPLATES:
            from jinja2.sandbox import ImmutableSandboxedEnvironment

            env = ImmutableSandboxedEnvironment(
                trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
            )

            def raise_exception(message: str) -> None:
                raise ValueError(f"chat template: {message}")

            env.globals["raise_exception"] = raise_exception
            env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
            env.filters["tojson"] = lambda value, indent=None: json.dumps(
                value, indent=indent, ensure_ascii=False
            )
            _TEMPLATES[source] = env.from_string(source)
        return _TEMPLATES[source]


def _stop_holdback(text: str, stops: list[str]) -> int:
    """How many trailing characters could be the start of a stop sequence (kept back)."""
    longest = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:size]):
                longest = size
                break
    return longest


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def _session_options(threads: int | None) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    threads = threads or int(os.environ.get("LOCUS_ONNX_THREADS", "0") or 0)
    if threads <= 0 and not _has_idle_core():
        # No core to spare: a second thread mostly waits for one (1 thread measured 14-19 %
        # faster a token, 6 % faster prefill, at load 3-5x the cores).
        threads = 1
    if threads > 0:
        options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    spin_us = spin_microseconds()
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin_us else "0")
    if spin_us:
        options.add_session_config_entry("session.intra_op.spin_duration_us", str(spin_us))
    options.log_severity_level = 3
    return options


def spin_microseconds() -> int:
    """The worker threads' spin time for a new session. LOCUS_ONNX_SPIN_US=N: N µs (0: never
    spin); LOCUS_ONNX_SPIN=0/1: never/always SPIN_MICROSECONDS; neither set: SPIN_MICROSECONDS
    if the last minute's load average leaves a core idle, else 0 (decided once per session)."""
    raw = os.environ.get("LOCUS_ONNX_SPIN_US", "").strip()
    switch = os.environ.get("LOCUS_ONNX_SPIN", "").strip()
    if switch == "0":
        return 0
    if raw:
        try:
            value = int(raw)
        except ValueError:
            value = -1
        if value < 0:
            raise ConfigError(
                "LOCUS_ONNX_SPIN_US must be a whole number of microseconds (0: no spinning), "
                f"got {raw!r}"
            )
        return value
    if switch == "1":
        return SPIN_MICROSECONDS
    return SPIN_MICROSECONDS if _has_idle_core() else 0


def _has_idle_core() -> bool:
    """Whether the last minute's load average leaves at least one of our cores idle."""
    try:
        load = os.getloadavg()[0]
    except OSError:  # not available on this platform: assume a busy machine, the safe side
        return False
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return load < (cores or 1) - 0.5


class OnnxChatModel:
    """A chat model folder on onnxruntime (see the module docstring for the layout)."""

    def __init__(
        self, folder: str | os.PathLike[str], *, name: str | None = None, threads: int | None = None
    ) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.folder = Path(folder)
        manifest = _read_json(self.folder / "locus.json")
        genai_config = _read_json(self.folder / "genai_config.json")
        genai = {**genai_config.get("model", {}), "search": genai_config.get("search", {})}
        hf_config = _read_json(self.folder / "config.json")
        tok_config = _read_json(self.folder / "tokenizer_config.json")
        model_file = self.folder / (genai.get("decoder", {}).get("filename") or "model.onnx")
        for required in (model_file, self.folder / "tokenizer.json"):
            if not required.is_file():
                raise ModelFolderError(f"{self.folder} has no {required.name}")

        self.name = name or manifest.get("name") or self.folder.name
        self.tokenizer = Tokenizer.from_file(str(self.folder / "tokenizer.json"))
        self.session = ort.InferenceSession(
            str(model_file), _session_options(threads), providers=["CPUExecutionProvider"]
        )
        self.context_window = int(
            manifest.get("context_window")
            or genai.get("context_length")
            or hf_config.get("max_position_embeddings")
            or tok_config.get("model_max_length")
            or 2048
        )
        self.chat_template = tok_config.get("chat_template") or _read_template(self.folder)
        self.bos_token = _token_text(tok_config.get("bos_token"))
        self.eos_token = _token_text(tok_config.get("eos_token"))
        self.add_bos = bool(manifest.get("add_bos_token", tok_config.get("add_bos_token", False)))
        self.bos_token_id = self.tokenizer.token_to_id(self.bos_token) if self.bos_token else None
        self.eos_token_ids = self._eos_ids(manifest, genai, hf_config)
        self._describe_graph(manifest, genai, hf_config)

    # -- public -------------------------------------------------------------------------------

    def encode_chat(self, messages: list[dict[str, Any]]) -> list[int]:
        """Token ids of the rendered chat prompt, ready for generation."""
        text = render_chat(
            self.chat_template, messages, bos_token=self.bos_token, eos_token=self.eos_token
        )
        ids = self.tokenizer.encode(text, add_special_tokens=False).ids
        if self.add_bos and self.bos_token_id is not None and ids[:1] != [self.bos_token_id]:
            ids.insert(0, self.bos_token_id)
        return ids

    def stream_chat(
        self,
        messages: list[dict[str, Any]],
        *,
        max_tokens: int = 256,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
        stop: list[str] | None = None,
        cancel: threading.Event | None = None,
    ) -> Iterator[Delta]:
        """Yield deltas token by token; the last one has finish_reason and usage set."""
        return self.stream_tokens(
            self.encode_chat(messages),
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            seed=seed,
            stop=stop,
            cancel=cancel,
        )

    def stream_tokens(
        self,
        prompt_ids: list[int],
        *,
        max_tokens: int = 256,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
        stop: list[str] | None = None,
        cancel: threading.Event | None = None,
    ) -> Iterator[Delta]:
        """Generation from token ids (no chat template); checks arguments before the first yield."""
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {max_tokens}")
        if not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        if temperature < 0.0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if not prompt_ids:
            raise ValueError("the prompt is empty")
        if len(prompt_ids) >= self.context_window:
            raise ContextWindowExceeded(
                f"the prompt is {len(prompt_ids)} tokens but model {self.name!r} has a context "
                f"window of {self.context_window} tokens (room is needed for at least one new token)"
            )
        budget = min(max_tokens, self.context_window - len(prompt_ids))
        stops = [s for s in (stop or []) if s]
        # Reaching the context window ends with "length", as OpenAI does.
        return self._generate(prompt_ids, budget, temperature, top_p, seed, stops, cancel)

    def next_token_logits(self, token_ids: list[int]) -> Iterator[np.ndarray]:
        """Logits after each token of `token_ids`, fed one at a time through the cache (for checks)."""
        cache = self.new_cache(len(token_ids))
        for token in token_ids:
            yield cache.step([token])

    # -- internals ----------------------------------------------------------------------------

    def _generate(
        self,
        prompt_ids: list[int],
        budget: int,
        temperature: float,
        top_p: float,
        seed: int | None,
        stops: list[str],
        cancel: threading.Event | None,
    ) -> Iterator[Delta]:
        from tokenizers.decoders import DecodeStream

        rng = np.random.default_rng(seed)
        detokenizer = DecodeStream(skip_special_tokens=True)
        pending = ""  # decoded text not yet emitted (it may be the start of a stop sequence)
        generated = 0
        finish = "length"
        cache = self.new_cache(len(prompt_ids) + budget)
        # The prompt goes in by chunks: a cancel is seen between them, and the attention
        # scores of one chunk (chunk × context) stay small even for a full context window.
        logits: np.ndarray | None = None
        for start in range(0, len(prompt_ids), PREFILL_CHUNK):
            if cancel is not None and cancel.is_set():
                break
            logits = cache.step(prompt_ids[start : start + PREFILL_CHUNK])
        while True:
            if logits is None or (cancel is not None and cancel.is_set()):
                finish = "cancelled"
                break
            token = sample_token(logits, temperature, top_p, rng)
            if token in self.eos_token_ids:
                finish = "stop"
                break
            generated += 1
            pending += detokenizer.step(self.tokenizer, token) or ""
            cut = min((i for i in (pending.find(s) for s in stops) if i >= 0), default=-1)
            if cut >= 0:
                pending = pending[:cut]
                finish = "stop"
                break
            hold = _stop_holdback(pending, stops) if stops else 0
            if len(pending) > hold:
                yield Delta(pending[: len(pending) - hold])
                pending = pending[len(pending) - hold :]
            if generated >= budget:
                finish = "length"
                break
            logits = cache.step([token])
        usage = {
            "prompt_tokens": len(prompt_ids),
            "completion_tokens": generated,
            "total_tokens": len(prompt_ids) + generated,
        }
        yield Delta(pending, finish_reason=finish, usage=usage)

    def new_cache(self, capacity: int) -> KVCache:
        """The state of one generation of at most `capacity` tokens (prompt included)."""
        if self._shared_kv:
            return SharedKVCache(self, min(capacity, self.context_window))
        return ConcatKVCache(self)

    def _describe_graph(
        self, manifest: dict[str, Any], genai: dict[str, Any], hf_config: dict[str, Any]
    ) -> None:
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = {o.name for o in self.session.get_outputs()}
        if "input_ids" not in inputs or "logits" not in outputs:
            raise ModelFolderError(
                f"{self.folder}: the graph needs an `input_ids` input and a `logits` output"
            )
        past = sorted(
            (int(m.group(1)), m.group(2), name) for name in inputs if (m := _PAST.match(name))
        )
        present_by_key = {
            (int(m.group(1)), m.group(2)): name for name in outputs if (m := _PRESENT.match(name))
        }
        missing = [f"present.{i}.{kind}" for i, kind, _ in past if (i, kind) not in present_by_key]
        if not past or missing:
            raise ModelFolderError(
                f"{self.folder}: expected past_key_values.N.key/value inputs with matching "
                f"present.N.key/value outputs (missing: {', '.join(missing) or 'all'})"
            )
        # Some exporters use int32 for ids and masks.
        self._index_dtypes = {
            name: np.int32 if inputs[name].type == "tensor(int32)" else np.int64
            for name in ("input_ids", "attention_mask", "position_ids")
            if name in inputs
        }
        self._past_names = [name for _, _, name in past]
        self._output_names = ["logits"] + [present_by_key[(i, kind)] for i, kind, _ in past]
        first = inputs[self._past_names[0]]
        self._kv_dtype = _ORT_DTYPES.get(first.type, np.float32)
        shape = first.shape
        decoder = genai.get("decoder", {})
        heads = (
            shape[1]
            if isinstance(shape[1], int)
            else (
                decoder.get("num_key_value_heads")
                or hf_config.get("num_key_value_heads")
                or hf_config.get("num_attention_heads")
            )
        )
        head_dim = (
            shape[3]
            if isinstance(shape[3], int)
            else (
                decoder.get("head_size")
                or hf_config.get("head_dim")
                or hf_config.get("hidden_size", 0)
                // max(hf_config.get("num_attention_heads", 1), 1)
            )
        )
        if not heads or not head_dim:
            raise ModelFolderError(f"{self.folder}: cannot tell the KV cache shape from the graph")
        self._kv_heads, self._head_dim = int(heads), int(head_dim)
        logits_shape = next(o.shape for o in self.session.get_outputs() if o.name == "logits")
        # Graphs giving the last position's logits only have an output buffer reused every step.
        last_only = logits_shape[1] == 1 and isinstance(logits_shape[2], int)
        self._logits_size = int(logits_shape[2]) if last_only else None
        # A shared buffer needs a graph that writes each step's keys and values in place, at the
        # position the mask gives (GroupQueryAttention): the folder says so.
        self._shared_kv = bool(
            manifest.get("kv_cache") == "shared"
            or genai.get("search", {}).get("past_present_share_buffer", False)
        )

    def _eos_ids(
        self, manifest: dict[str, Any], genai: dict[str, Any], hf_config: dict[str, Any]
    ) -> frozenset[int]:
        ids: set[int] = set()
        for source in (
            manifest.get("eos_token_ids"),
            genai.get("eos_token_id"),
            hf_config.get("eos_token_id"),
        ):
            if isinstance(source, int):
                ids.add(source)
            elif isinstance(source, list):
                ids.update(int(i) for i in source)
        if (
            not ids
            and self.eos_token
            and (eos := self.tokenizer.token_to_id(self.eos_token)) is not None
        ):
            ids.add(eos)
        return frozenset(ids)


def _token_text(token: Any) -> str | None:
    """tokenizer_config.json spells special tokens as strings or as AddedToken dicts."""
    if isinstance(token, dict):
        return token.get("content")
    return token if isinstance(token, str) else None


def _read_template(folder: Path) -> str | None:
    path = folder / "chat_template.jinja"
    return path.read_text() if path.is_file() else None


class KVCache:
    """The key/value cache of one generation, and the forward pass that extends it."""

    def __init__(self, model: OnnxChatModel) -> None:
        self.model = model
        self.length = 0  # tokens seen so far

    def step(self, tokens: list[int]) -> np.ndarray:
        """Run `tokens` (the next ones) through the model; the logits after the last of them."""
        raise NotImplementedError

    def _bind_inputs(self, binding: Any, tokens: list[int]) -> list[np.ndarray]:
        """Bind this step's ids, mask and positions. onnxruntime reads the arrays' memory in
        place without holding a reference: the caller keeps the returned list until the run."""
        kinds = self.model._index_dtypes
        total = self.length + len(tokens)
        arrays = {"input_ids": np.array([tokens], dtype=kinds["input_ids"])}
        if "attention_mask" in kinds:
            arrays["attention_mask"] = np.ones((1, total), dtype=kinds["attention_mask"])
        if "position_ids" in kinds:
            positions = np.arange(self.length, total, dtype=kinds["position_ids"])
            arrays["position_ids"] = positions[None]
        for name, array in arrays.items():
            binding.bind_cpu_input(name, array)
        return list(arrays.values())


class SharedKVCache(KVCache):
    """One buffer per layer and kind, allocated once for the whole generation and bound as both
    past and present: the graph writes each step's keys and values in place (onnxruntime-genai's
    `past_present_share_buffer`). Nothing is copied between steps, and memory stays at the size
    of the cache itself, even for a long prompt."""

    def __init__(self, model: OnnxChatModel, capacity: int) -> None:
        import onnxruntime as ort

        super().__init__(model)
        self.capacity = capacity
        self.binding = model.session.io_binding()
        # Logits first: get_outputs() lists outputs in the order they were bound.
        self.logits: Any = None
        if model._logits_size:
            self.logits = ort.OrtValue.ortvalue_from_shape_and_type(
                [1, 1, model._logits_size], np.float32
            )
            self.binding.bind_ortvalue_output("logits", self.logits)
        else:
            self.binding.bind_output("logits", "cpu")
        shape = [1, model._kv_heads, capacity, model._head_dim]
        self.buffers = []
        for past, present in zip(model._past_names, model._output_names[1:], strict=True):
            buffer = ort.OrtValue.ortvalue_from_shape_and_type(shape, model._kv_dtype)
            self.binding.bind_ortvalue_input(past, buffer)
            self.binding.bind_ortvalue_output(present, buffer)
            self.buffers.append(buffer)

    def step(self, tokens: list[int]) -> np.ndarray:
        if self.length + len(tokens) > self.capacity:
            raise ContextWindowExceeded(
                f"the cache holds {self.capacity} tokens; {self.length + len(tokens)} requested"
            )
        inputs = self._bind_inputs(self.binding, tokens)
        if self.logits is None:  # logits of every position: a new output each step
            self.binding.bind_output("logits", "cpu")
        self.model.session.run_with_iobinding(self.binding)
        del inputs  # read by the run
        self.length += len(tokens)
        logits = self.logits if self.logits is not None else self.binding.get_outputs()[0]
        # numpy() is a view of onnxruntime's buffer, which the next step overwrites.
        return logits.numpy()[0, -1].astype(np.float32)


class ConcatKVCache(KVCache):
    """The common layout: the graph returns past + new as `present`, which becomes the next
    step's past. The cache stays in onnxruntime's own buffers (OrtValue) between steps: handing
    it back and forth as numpy would copy every layer's keys and values once more."""

    def __init__(self, model: OnnxChatModel) -> None:
        import onnxruntime as ort

        super().__init__(model)
        empty = np.zeros((1, model._kv_heads, 0, model._head_dim), dtype=model._kv_dtype)
        self.values = {
            name: ort.OrtValue.ortvalue_from_numpy(empty.copy()) for name in model._past_names
        }

    def step(self, tokens: list[int]) -> np.ndarray:
        model = self.model
        binding = model.session.io_binding()
        inputs = self._bind_inputs(binding, tokens)
        for name, value in self.values.items():
            binding.bind_ortvalue_input(name, value)
        for name in model._output_names:
            binding.bind_output(name, "cpu")
        model.session.run_with_iobinding(binding)
        del inputs  # read by the run
        outputs = binding.get_outputs()
        self.values = dict(zip(model._past_names, outputs[1:], strict=True))
        self.length += len(tokens)
        return outputs[0].numpy()[0, -1].astype(np.float32, copy=False)

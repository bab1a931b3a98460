"""The ONNX chat runtime, the model cache and `locus models`, on the tiny Llama built in the test."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from locus_llm.errors import ConfigError, ModelNotFound
from locus_llm.local import models
from locus_llm.local.base import ContextWindowExceeded, Delta
from locus_llm.local.runtime import OnnxChatModel, sample_token
from tests.conftest_local import CONTEXT_LENGTH, TinyLlama

pytest_plugins = ["tests.conftest_local"]  # the tiny-model and cache fixtures

MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]


def run(model: OnnxChatModel, **kwargs: object) -> tuple[str, Delta]:
    deltas = list(model.stream_chat(MESSAGES, **kwargs))  # type: ignore[arg-type]
    assert all(d.finish_reason is None for d in deltas[:-1])
    return "".join(d.text for d in deltas), deltas[-1]


def test_streams_token_by_token_with_usage(tiny_model: OnnxChatModel) -> None:
    deltas = list(tiny_model.stream_chat(MESSAGES, max_tokens=12))
    last = deltas[-1]
    assert last.finish_reason in ("length", "stop")
    prompt_tokens = len(tiny_model.encode_chat(MESSAGES))
    generated = last.usage["completion_tokens"]  # type: ignore[index]
    assert last.usage == {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": generated,
        "total_tokens": prompt_tokens + generated,
    }
    assert 1 <= generated <= 12
    assert len([d for d in deltas if d.text]) > 1  # streamed, not one block at the end


def test_max_tokens_ends_with_length(tiny_model: OnnxChatModel) -> None:
    eos = set(tiny_model.eos_token_ids)
    tiny_model.eos_token_ids = frozenset()  # this random model may pick its end token early
    try:
        _, last = run(tiny_model, max_tokens=5)
    finally:
        tiny_model.eos_token_ids = frozenset(eos)
    assert last.finish_reason == "length"
    assert last.usage["completion_tokens"] == 5  # type: ignore[index]


def test_stop_sequence_truncates_the_text(tiny_model: OnnxChatModel) -> None:
    full, _ = run(tiny_model, max_tokens=24)
    stop = full.strip()[6:9]
    assert len(stop) == 3, full
    text, last = run(tiny_model, max_tokens=24, stop=[stop, "never-appears"])
    assert text == full[: full.index(stop)]
    assert last.finish_reason == "stop"


def test_greedy_is_deterministic_and_sampling_follows_the_seed(tiny_model: OnnxChatModel) -> None:
    assert run(tiny_model, max_tokens=16)[0] == run(tiny_model, max_tokens=16)[0]
    first = run(tiny_model, max_tokens=16, temperature=1.5, seed=7)[0]
    assert first == run(tiny_model, max_tokens=16, temperature=1.5, seed=7)[0]
    others = {run(tiny_model, max_tokens=16, temperature=1.5, seed=s)[0] for s in range(5)}
    assert len(others) > 1


def test_top_p_keeps_only_the_nucleus() -> None:
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05]))
    rng = np.random.default_rng(0)
    picks = {sample_token(logits, 1.0, 0.7, rng) for _ in range(300)}
    assert picks == {0, 1}
    picks = {sample_token(logits, 1.0, 1.0, rng) for _ in range(2000)}
    assert picks == {0, 1, 2, 3}
    assert sample_token(logits, 0.0, 1.0, rng) == 0


def test_cancellation_stops_generation(tiny_model: OnnxChatModel) -> None:
    cancel = threading.Event()
    seen = []
    for delta in tiny_model.stream_chat(MESSAGES, max_tokens=50, cancel=cancel):
        seen.append(delta)
        cancel.set()
    assert seen[-1].finish_reason == "cancelled"
    assert seen[-1].usage["completion_tokens"] < 5  # type: ignore[index]


def test_prefill_in_chunks_gives_the_same_answer(
    tiny_model: OnnxChatModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    from locus_llm.local import runtime

    whole = run(tiny_model, max_tokens=16)
    monkeypatch.setattr(runtime, "PREFILL_CHUNK", 5)
    assert len(tiny_model.encode_chat(MESSAGES)) > 3 * 5
    assert run(tiny_model, max_tokens=16) == whole


def test_worker_threads_spin_briefly_unless_told_not_to(
    tiny_model: OnnxChatModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    from locus_llm.local import runtime

    def spin_entries() -> tuple[str, str]:
        options = runtime._session_options(2)
        return (
            options.get_session_config_entry("session.intra_op.allow_spinning"),
            options.get_session_config_entry("session.intra_op.spin_duration_us")
            if options.get_session_config_entry("session.intra_op.allow_spinning") == "1"
            else "",
        )

    monkeypatch.delenv("LOCUS_ONNX_SPIN", raising=False)
    monkeypatch.delenv("LOCUS_ONNX_SPIN_US", raising=False)
    cores = len(os.sched_getaffinity(0))
    monkeypatch.setattr(os, "getloadavg", lambda: (cores - 1.0, 0.0, 0.0))  # a core idle
    assert spin_entries() == ("1", str(runtime.SPIN_MICROSECONDS))
    monkeypatch.setattr(os, "getloadavg", lambda: (cores + 1.0, 0.0, 0.0))  # all busy
    assert spin_entries() == ("0", "")
    monkeypatch.delenv("LOCUS_ONNX_THREADS", raising=False)
    assert runtime._session_options(None).intra_op_num_threads == 1
    assert runtime._session_options(2).intra_op_num_threads == 2  # asked for: kept
    monkeypatch.setenv("LOCUS_ONNX_SPIN", "1")
    assert spin_entries() == ("1", str(runtime.SPIN_MICROSECONDS))
    monkeypatch.setenv("LOCUS_ONNX_SPIN_US", "200")
    assert spin_entries() == ("1", "200")
    monkeypatch.setenv("LOCUS_ONNX_SPIN_US", "0")
    assert spin_entries() == ("0", "")
    monkeypatch.setenv("LOCUS_ONNX_SPIN_US", "200")
    monkeypatch.setenv("LOCUS_ONNX_SPIN", "0")  # the older switch still turns it off
    assert spin_entries() == ("0", "")
    # Either setting gives the same tokens: spinning only changes how threads wait.
    whole = run(tiny_model, max_tokens=8)
    assert run(OnnxChatModel(tiny_model.folder), max_tokens=8) == whole
    monkeypatch.setenv("LOCUS_ONNX_SPIN", "1")
    monkeypatch.setenv("LOCUS_ONNX_SPIN_US", "soon")
    with pytest.raises(ConfigError, match="LOCUS_ONNX_SPIN_US"):
        OnnxChatModel(tiny_model.folder)


def test_cancelled_before_the_first_token(tiny_model: OnnxChatModel) -> None:
    cancel = threading.Event()
    cancel.set()
    deltas = list(tiny_model.stream_chat(MESSAGES, max_tokens=10, cancel=cancel))
    assert [(d.text, d.finish_reason) for d in deltas] == [("", "cancelled")]
    assert deltas[0].usage["completion_tokens"] == 0  # type: ignore[index]


def test_prompt_beyond_the_context_window_is_a_clear_error(tiny_model: OnnxChatModel) -> None:
    long = [{"role": "user", "content": "Paris is the capital. " * 40}]
    with pytest.raises(ContextWindowExceeded, match=f"context window of {CONTEXT_LENGTH} tokens"):
        tiny_model.stream_chat(long)


def test_generation_stops_at_the_context_window(tiny_model: OnnxChatModel) -> None:
    ids = tiny_model.encode_chat(MESSAGES)
    room = CONTEXT_LENGTH - len(ids)
    eos = set(tiny_model.eos_token_ids)
    tiny_model.eos_token_ids = frozenset()
    try:
        last = list(tiny_model.stream_tokens(ids, max_tokens=500))[-1]
    finally:
        tiny_model.eos_token_ids = frozenset(eos)
    assert last.finish_reason == "length"
    assert last.usage["completion_tokens"] == room  # type: ignore[index]


def test_invalid_arguments_are_rejected_before_generating(tiny_model: OnnxChatModel) -> None:
    for kwargs in ({"max_tokens": 0}, {"top_p": 0.0}, {"temperature": -1.0}):
        with pytest.raises(ValueError):
            tiny_model.stream_chat(MESSAGES, **kwargs)  # type: ignore[arg-type]


def test_concurrent_requests_do_not_interfere(tiny_model: OnnxChatModel) -> None:
    prompts = [[{"role": "user", "content": f"Question number {i}?"}] for i in range(4)]
    expected = ["".join(d.text for d in tiny_model.stream_chat(p, max_tokens=16)) for p in prompts]

    def answer(i: int) -> str:
        return "".join(d.text for d in tiny_model.stream_chat(prompts[i % 4], max_tokens=16))

    with ThreadPoolExecutor(max_workers=8) as pool:
        got = list(pool.map(answer, range(16)))
    assert got == [expected[i % 4] for i in range(16)]


def test_multibyte_characters_stream_as_whole_characters(
    tiny_model: OnnxChatModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Byte-level tokens split "東京 🙂" mid-character; no delta may carry half a character.

    The sampler is replaced by a script of token ids (a random model will not pick them): the
    model, the cache and the detokeniser all run for real.
    """
    from locus_llm.local import runtime

    text = "Très bien, 東京 🙂 déjà vu"
    script = iter(tiny_model.tokenizer.encode(text, add_special_tokens=False).ids)
    assert len(tiny_model.tokenizer.encode("🙂", add_special_tokens=False).ids) > 1
    monkeypatch.setattr(runtime, "sample_token", lambda *args: next(script))
    n = len(tiny_model.tokenizer.encode(text, add_special_tokens=False).ids)
    deltas = list(tiny_model.stream_chat(MESSAGES, max_tokens=n))
    assert "".join(d.text for d in deltas) == text
    assert all("\ufffd" not in d.text for d in deltas)
    assert deltas[-1].usage["completion_tokens"] == n  # type: ignore[index]


def genai_folder(source: Path, folder: Path, search: dict[str, object]) -> Path:
    """A copy of a converted model described by onnxruntime-genai's genai_config.json instead
    of our locus.json (the layout Phi-3/Phi-4-mini are published in)."""
    folder.mkdir()
    shutil.copy(source / "model.onnx", folder / "decoder.onnx")
    shutil.copy(source / "model.onnx.data", folder / "model.onnx.data")
    shutil.copy(source / "tokenizer.json", folder / "tokenizer.json")
    ours = json.loads((source / "locus.json").read_text())
    template = json.loads((source / "tokenizer_config.json").read_text())["chat_template"]
    (folder / "chat_template.jinja").write_text(template)
    model = {
        "context_length": CONTEXT_LENGTH,
        "eos_token_id": ours["eos_token_ids"],
        "decoder": {"filename": "decoder.onnx", "head_size": 16, "num_key_value_heads": 2},
    }
    (folder / "genai_config.json").write_text(json.dumps({"model": model, "search": search}))
    return folder


def test_foreign_folder_in_the_common_layout(
    tiny_llama: TinyLlama, tiny_model: OnnxChatModel, tmp_path: Path
) -> None:
    """Plain past_key_values inputs and present outputs, positions given, logits at every
    position (the usual export): the cache grows by concatenation."""
    from locus_llm.local.converter import convert_gguf

    convert_gguf(tiny_llama.gguf_path, tmp_path / "standard", quant="fp32", attention="standard")
    folder = genai_folder(tmp_path / "standard", tmp_path / "genai-model", {})
    foreign = OnnxChatModel(folder, threads=1)
    assert foreign.context_window == CONTEXT_LENGTH
    assert type(foreign.new_cache(8)).__name__ == "ConcatKVCache"
    assert run(foreign, max_tokens=16)[0] == run(tiny_model, max_tokens=16)[0]


def test_genai_folder_with_a_shared_kv_buffer(
    tiny_onnx_dir: Path, tiny_model: OnnxChatModel, tmp_path: Path
) -> None:
    """onnxruntime-genai's `past_present_share_buffer` on a GroupQueryAttention graph: one
    buffer per layer for the whole generation, written in place."""
    search = {"past_present_share_buffer": True}
    folder = genai_folder(tiny_onnx_dir, tmp_path / "genai-shared", search)
    foreign = OnnxChatModel(folder, threads=1)
    cache = foreign.new_cache(20)
    assert type(cache).__name__ == "SharedKVCache"
    assert cache.buffers[0].shape() == [1, 2, 20, 16]
    expected = run(tiny_model, max_tokens=16)[0]
    assert run(foreign, max_tokens=16)[0] == expected
    foreign._logits_size = None  # as for graphs giving logits at every position: a new output
    assert run(foreign, max_tokens=16)[0] == expected


def test_folder_without_a_graph_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="has no model.onnx"):
        OnnxChatModel(tmp_path)


def test_cache_add_list_load_and_idempotent_prepare(
    locus_home: Path, tiny_llama: TinyLlama
) -> None:
    assert models.cache_dir() == locus_home / "models"
    assert models.list_models() == []
    folder = models.add_gguf(tiny_llama.gguf_path, name="tiny", quant="int8")
    assert folder == locus_home / "models" / "tiny"
    stamp = (folder / "model.onnx").stat().st_mtime_ns
    assert models.add_gguf(tiny_llama.gguf_path, name="tiny", quant="int8") == folder
    assert (folder / "model.onnx").stat().st_mtime_ns == stamp  # up to date: not converted again
    listed = models.list_models()
    assert [(m["name"], m["quant"], m["architecture"]) for m in listed] == [
        ("tiny", "int8", "llama")
    ]
    first = models.load("tiny")
    assert models.load("tiny") is first
    assert first.name == "tiny" and first.context_window == CONTEXT_LENGTH
    models.add_gguf(tiny_llama.gguf_path, name="tiny", quant="fp32")  # a new quant: converted
    assert (folder / "model.onnx").stat().st_mtime_ns != stamp
    assert models.load("tiny") is not first


def test_missing_models_name_the_command_that_prepares_them(locus_home: Path) -> None:
    with pytest.raises(LookupError, match="locus models prepare smollm2"):
        models.load("smollm2")
    with pytest.raises(ModelNotFound, match="locus models add FILE.gguf --name other"):
        models.load("other")


def test_cache_location_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("LOCUS_HOME", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert models.cache_dir() == tmp_path / "locus" / "models"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert models.cache_dir() == Path.home() / ".cache" / "locus" / "models"


def test_cli_models_add_and_list(
    locus_home: Path, tiny_llama: TinyLlama, capsys: pytest.CaptureFixture[str]
) -> None:
    from locus_llm.local import cli, converter
    from locus_llm.local.cli import add_commands

    assert cli.QUANTS == converter.QUANTS

    parser = argparse.ArgumentParser(prog="locus")
    add_commands(parser.add_subparsers())
    args = parser.parse_args(
        ["models", "add", str(tiny_llama.gguf_path), "--name", "cli-tiny", "--quant", "int4"]
    )
    assert args.handler(args) == 0
    args = parser.parse_args(["models", "list"])
    assert args.handler(args) == 0
    out = capsys.readouterr().out
    assert "cli-tiny" in out and "int4" in out
    with pytest.raises(SystemExit):
        parser.parse_args(["models", "add", "x.gguf", "--quant", "int3"])

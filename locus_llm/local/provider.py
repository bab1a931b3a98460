"""The LiteLLM custom provider `locus-onnx`: `litellm.completion(model="locus-onnx/smollm2", ...)`.

LiteLLM is imported only here, and only when `register()` runs: importing it takes seconds.
Models are loaded through `models.load`, so every caller in the process shares one runtime.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

from locus_llm.local.base import ContextWindowExceeded, Delta

PROVIDER = "locus-onnx"
# OpenAI's finish reasons: a cancelled local generation reads as a stop to LiteLLM callers.
_FINISH = {"stop": "stop", "length": "length", "cancelled": "stop"}

_REGISTER_LOCK = threading.Lock()
_registered = False
_costs: dict[str, tuple[float, float]] = {}


def register(costs: dict[str, tuple[float, float]] | None = None) -> None:
    """Register the provider with LiteLLM (idempotent).

    `costs` maps a model name to (USD per input token, USD per output token); every other local
    model costs zero, which LiteLLM's cost calculator then reports.
    """
    global _registered
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    with _REGISTER_LOCK:
        _costs.update(costs or {})
        if not _registered:
            handler = _make_handler(litellm)
            litellm.custom_provider_map = [
                entry for entry in litellm.custom_provider_map if entry.get("provider") != PROVIDER
            ] + [{"provider": PROVIDER, "custom_handler": handler}]
            # LiteLLM only picks the map up when it (re)builds its provider list.
            from litellm.utils import custom_llm_setup

            custom_llm_setup()
            _registered = True
        for name, (per_in, per_out) in _costs.items():
            _register_cost(litellm, name, per_in, per_out)
    try:
        from locus_llm.local.models import list_models

        for model in list_models():
            _register_cost(litellm, model["name"], *_costs.get(model["name"], (0.0, 0.0)))
    except OSError:  # an unreadable cache is reported when a model is actually used
        pass


def register_price(model: str, usd_per_mtok_in: float, usd_per_mtok_out: float) -> bool:
    """Tell LiteLLM the price of a served model it does not know, e.g. `hosted_vllm/smollm2`.

    LiteLLM prices every response. For a `provider/model` missing from its cost map it first
    searches name variants and capability generalizations (about 1,400 Python calls, ~1 ms of
    CPU per call; benchmarks/bench_serve.py), then reports no cost: `response_cost` is None and
    `litellm.completion_cost` raises. Registered, the lookup is direct and LiteLLM's cost agrees
    with the caller's price. A model LiteLLM already prices keeps LiteLLM's price. Returns
    whether the price was registered.
    """
    provider, _, name = model.partition("/")
    if not name:  # no provider prefix: LiteLLM keys such models by their bare name
        return False
    import litellm
    from litellm.exceptions import ModelNotMappedError

    with _REGISTER_LOCK:
        try:
            litellm.get_model_info(model)
            return False
        except ModelNotMappedError:
            pass
        price = _price_entry(provider, usd_per_mtok_in / 1e6, usd_per_mtok_out / 1e6)
        litellm.register_model({model: price})
    return True


def generation_options(optional_params: dict[str, Any]) -> dict[str, Any]:
    """LiteLLM's OpenAI-style parameters → `ChatModel.stream_chat` keyword arguments."""
    options: dict[str, Any] = {}
    max_tokens = optional_params.get("max_tokens") or optional_params.get("max_completion_tokens")
    if max_tokens is not None:
        options["max_tokens"] = int(max_tokens)
    for key in ("temperature", "top_p"):
        if optional_params.get(key) is not None:
            options[key] = float(optional_params[key])
    if optional_params.get("seed") is not None:
        options["seed"] = int(optional_params["seed"])
    stop = optional_params.get("stop")
    if stop:
        options["stop"] = [stop] if isinstance(stop, str) else list(stop)
    return options


def _register_cost(litellm: Any, name: str, per_in: float, per_out: float) -> None:
    key = f"{PROVIDER}/{name}"
    entry = litellm.model_cost.get(key, {})
    if (
        entry.get("input_cost_per_token") == per_in
        and entry.get("output_cost_per_token") == per_out
    ):
        return
    litellm.register_model({key: _price_entry(PROVIDER, per_in, per_out)})


def _price_entry(provider: str, per_in: float, per_out: float) -> dict[str, Any]:
    """A LiteLLM cost-map entry. Cached prompt tokens cost what other prompt tokens cost, as in
    the router's accounting (and LiteLLM warns about every entry that leaves them out)."""
    return {
        "input_cost_per_token": per_in,
        "output_cost_per_token": per_out,
        "cache_creation_input_token_cost": per_in,
        "cache_read_input_token_cost": per_in,
        "litellm_provider": provider,
        "mode": "chat",
    }


def _stream(
    model: str,
    messages: list[dict[str, Any]],
    optional_params: dict[str, Any],
    cancel: threading.Event,
) -> Iterator[Delta]:
    import litellm

    from locus_llm.local.models import load

    chat_model = load(model)
    # A model added after register() still gets its (zero or configured) price.
    if f"{PROVIDER}/{model}" not in litellm.model_cost:
        with _REGISTER_LOCK:
            _register_cost(litellm, model, *_costs.get(model, (0.0, 0.0)))
    return chat_model.stream_chat(messages, cancel=cancel, **generation_options(optional_params))


def _make_handler(litellm: Any) -> Any:
    """Build the CustomLLM subclass here: its base class comes from LiteLLM."""
    from litellm.llms.custom_llm import CustomLLM, CustomLLMError
    from litellm.types.utils import Usage

    def provider_error(exc: Exception, model: str) -> Exception:
        from locus_llm.errors import ModelNotFound

        if isinstance(exc, ContextWindowExceeded):
            return litellm.ContextWindowExceededError(
                message=str(exc), model=model, llm_provider=PROVIDER
            )
        if isinstance(exc, ModelNotFound):
            return CustomLLMError(status_code=404, message=str(exc))
        if isinstance(exc, ValueError):
            return CustomLLMError(status_code=400, message=str(exc))
        return exc

    def chunk(delta: Delta) -> dict[str, Any]:
        usage = delta.usage
        return {
            "text": delta.text,
            "tool_use": None,
            "is_finished": delta.finish_reason is not None,
            "finish_reason": _FINISH.get(delta.finish_reason or "", "")
            if delta.finish_reason
            else "",
            "usage": dict(usage) if usage else None,
            "index": 0,
        }

    class LocusOnnxLLM(CustomLLM):
        """Runs `locus-onnx/<model>` on the in-process ONNX runtime."""

        def completion(
            self,
            model: str,
            messages: list,
            api_base: str,
            custom_prompt_dict: dict,
            model_response: Any,
            print_verbose: Any,
            encoding: Any,
            api_key: Any,
            logging_obj: Any,
            optional_params: dict,
            *args: Any,
            **kwargs: Any,
        ) -> Any:
            cancel = threading.Event()
            parts: list[str] = []
            last = Delta("")
            try:
                for delta in _stream(model, messages, optional_params, cancel):
                    parts.append(delta.text)
                    last = delta
            except Exception as exc:
                raise provider_error(exc, model) from exc
            usage = last.usage or {}
            model_response.choices[0].message.content = "".join(parts)
            model_response.choices[0].finish_reason = _FINISH.get(last.finish_reason or "", "stop")
            model_response.model = f"{PROVIDER}/{model}"
            model_response.created = int(time.time())
            model_response.usage = Usage(
                prompt_tokens=usage.get("prompt_tokens", 0),
                completion_tokens=usage.get("completion_tokens", 0),
                total_tokens=usage.get("total_tokens", 0),
            )
            return model_response

        def streaming(
            self,
            model: str,
            messages: list,
            api_base: str,
            custom_prompt_dict: dict,
            model_response: Any,
            print_verbose: Any,
            encoding: Any,
            api_key: Any,
            logging_obj: Any,
            optional_params: dict,
            *args: Any,
            **kwargs: Any,
        ) -> Iterator[Any]:
            cancel = threading.Event()
            try:
                deltas = _stream(model, messages, optional_params, cancel)
            except Exception as exc:
                raise provider_error(exc, model) from exc

            def chunks() -> Iterator[Any]:
                try:
                    for delta in deltas:
                        yield chunk(delta)
                finally:  # the caller stopped reading: stop generating
                    cancel.set()

            return chunks()

        async def acompletion(
            self,
            model: str,
            messages: list,
            api_base: str,
            custom_prompt_dict: dict,
            model_response: Any,
            print_verbose: Any,
            encoding: Any,
            api_key: Any,
            logging_obj: Any,
            optional_params: dict,
            *args: Any,
            **kwargs: Any,
        ) -> Any:
            return await asyncio.to_thread(
                self.completion,
                model,
                messages,
                api_base,
                custom_prompt_dict,
                model_response,
                print_verbose,
                encoding,
                api_key,
                logging_obj,
                optional_params,
            )

        async def astreaming(
            self,
            model: str,
            messages: list,
            api_base: str,
            custom_prompt_dict: dict,
            model_response: Any,
            print_verbose: Any,
            encoding: Any,
            api_key: Any,
            logging_obj: Any,
            optional_params: dict,
            *args: Any,
            **kwargs: Any,
        ) -> AsyncIterator[Any]:
            # An async generator itself: LiteLLM iterates what this call returns, without awaiting.
            cancel = threading.Event()
            try:
                deltas = await asyncio.to_thread(_stream, model, messages, optional_params, cancel)
            except Exception as exc:
                raise provider_error(exc, model) from exc
            async for item in _async_chunks(deltas, cancel, chunk):
                yield item

    return LocusOnnxLLM()


async def _async_chunks(
    deltas: Iterator[Delta], cancel: threading.Event, chunk: Any
) -> AsyncIterator[Any]:
    """Generate in a worker thread, hand deltas to the event loop as they come."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

    def produce() -> None:
        try:
            for delta in deltas:
                loop.call_soon_threadsafe(queue.put_nowait, ("delta", delta))
                if cancel.is_set():
                    break
        except BaseException as exc:  # handed to the consumer, which re-raises it
            loop.call_soon_threadsafe(queue.put_nowait, ("error", exc))
        finally:
            loop.call_soon_threadsafe(queue.put_nowait, ("end", None))

    worker = threading.Thread(target=produce, name="locus-onnx-stream", daemon=True)
    worker.start()
    try:
        while True:
            kind, item = await queue.get()
            if kind == "end":
                break
            if kind == "error":
                raise item
            yield chunk(item)
    finally:
        cancel.set()

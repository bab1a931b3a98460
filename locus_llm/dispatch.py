"""Dispatch through LiteLLM: the plan's loci in order, retries with backoff, failover, redaction.

The plan comes from selection and holds only loci the policy allowed, so nothing here can move a
request to a denied locus. A `Run` is the state of one call's attempts; the sync and async loops
below drive it the same way and differ only in how they wait and call LiteLLM.
"""

from __future__ import annotations

import asyncio
import os
import random
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any

from locus_llm.config import Locus
from locus_llm.errors import DispatchError, LocusError, NoAllowedLocusError
from locus_llm.profile import Entity
from locus_llm.stats import Stats

if TYPE_CHECKING:
    from locus_llm.state import BudgetGuard

MAX_RETRY_AFTER_S = 10.0  # a locus asking us to wait longer than this is failed over instead
BACKOFF_BASE_S = 0.25
BACKOFF_CAP_S = 4.0

_litellm_lock = threading.Lock()
_litellm: Any = None
_priced: set[str] = set()  # locus models whose price LiteLLM has been told


def litellm_module(local_models: bool = False, loci: Iterable[Locus] = ()) -> Any:
    """Import LiteLLM on first dispatch (2.7-4.4 s), offline, and register our local provider.

    Each locus's price is registered once: LiteLLM prices every response, and for a served
    model it does not know (`hosted_vllm/...`) it otherwise searches its cost map on every call
    (~1 ms of CPU; benchmarks/bench_serve.py) and reports no cost at all.
    """
    global _litellm
    if _litellm is None:
        with _litellm_lock:
            if _litellm is None:
                os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
                import litellm

                litellm.telemetry = False
                litellm.suppress_debug_info = True
                _litellm = litellm
    if local_models:
        from locus_llm.local.provider import register

        register()
    for locus in loci:
        if locus.model not in _priced:
            _register_price(locus)
    return _litellm


def _register_price(locus: Locus) -> None:
    from locus_llm.local.provider import register_price

    with _litellm_lock:
        if locus.model in _priced:
            return
        _priced.add(locus.model)
        try:
            register_price(locus.model, locus.usd_per_mtok_in or 0.0, locus.usd_per_mtok_out or 0.0)
        except Exception:  # noqa: BLE001 - a price LiteLLM cannot take only costs the slow lookup
            pass


class Action(Enum):
    RETRY = "retry"  # same locus again, after a wait
    FAILOVER = "failover"  # next locus of the plan
    STOP = "stop"  # the caller's problem or a refusal: neither retry nor shop around


@dataclass(frozen=True)
class Failure:
    action: Action
    wait_s: float | None
    kind: str
    status: int | None
    message: str


def classify_failure(exc: BaseException, *, allow_content_filter_failover: bool = False) -> Failure:
    """What to do after an attempt raised `exc` (LiteLLM maps providers' errors to these names)."""
    kind = type(exc).__name__
    status = getattr(exc, "status_code", None)
    message = str(exc).splitlines()[0][:500] if str(exc) else kind
    if kind == "ContentPolicyViolationError" or (status == 400 and _is_refusal(str(exc))):
        kind = "ContentPolicyViolationError"
        action = Action.FAILOVER if allow_content_filter_failover else Action.STOP
        return Failure(action, None, kind, status, message)
    if kind == "ContextWindowExceededError":
        return Failure(Action.FAILOVER, None, kind, status, message)
    if kind == "RateLimitError":
        wait = retry_after_seconds(exc)
        if wait is not None and wait > MAX_RETRY_AFTER_S:
            return Failure(Action.FAILOVER, None, kind, status, message)
        return Failure(Action.RETRY, wait, kind, status, message)
    if kind in {
        "InternalServerError",
        "ServiceUnavailableError",
        "BadGatewayError",
        "APIConnectionError",
        "APIError",
        "StreamInterrupted",
    }:
        return Failure(Action.RETRY, None, kind, status, message)
    # Timeouts: a silent locus is failed over rather than retried.
    # Auth, not found, bad request (e.g. a fallback rejecting a prefill) and anything else: next locus.
    return Failure(Action.FAILOVER, None, kind, status, message)


def _is_refusal(text: str) -> bool:
    """Providers that LiteLLM does not map still say so in their error code or message."""
    text = text.lower()
    return any(
        marker in text
        for marker in (
            "content_policy",
            "content_filter",
            "content management policy",
            "safety system",
        )
    )


def retry_after_seconds(exc: BaseException) -> float | None:
    headers: Any = None
    response = getattr(exc, "response", None)
    if response is not None:
        headers = getattr(response, "headers", None)
    headers = headers or getattr(exc, "litellm_response_headers", None) or {}
    try:
        value = headers.get("retry-after") or headers.get("Retry-After")
    except AttributeError:
        return None
    try:
        return max(0.0, float(value)) if value is not None else None
    except (TypeError, ValueError):
        return None


def backoff_seconds(try_number: int) -> float:
    """Exponential backoff with full jitter: never a tight loop, never a thundering herd."""
    return random.uniform(BACKOFF_BASE_S, min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2**try_number))


class StreamInterrupted(Exception):
    """A stream ended without a finish reason: a truncated answer is never a success."""


@dataclass
class Step:
    locus: Locus
    params: dict[str, Any]
    vault: Any = None  # a redaction.Vault when this attempt had to be pseudonymised
    started: float = field(default_factory=time.perf_counter)
    first_token_at: float | None = None
    first_timeout: float = 60.0  # streaming: seconds to wait for the first chunk
    chunk_timeout: float = 60.0  # streaming: seconds to wait for each later chunk (stall)


class Run:
    """The attempts of one call, over its plan. Not shared between calls."""

    def __init__(
        self,
        plan: list[Locus],
        messages: list[dict[str, Any]],
        params: dict[str, Any],
        *,
        stats: Stats,
        entities: list[Entity],
        redact: list[str],
        redact_zones: list[str],
        allow_content_filter_failover: bool = False,
        budget: BudgetGuard | None = None,
    ) -> None:
        self.plan = plan
        self.messages = messages
        self.params = params
        self.stats = stats
        self.entities = entities
        self.redact = redact
        self.redact_zones = redact_zones
        self.allow_content_filter_failover = allow_content_filter_failover
        self.budget = budget  # reserves a paid locus's predicted cost before its attempts
        self.attempts: list[dict[str, Any]] = []
        self.redacted: dict[str, int] = {}
        self.last_error: BaseException | None = None
        self._index = 0
        self._tries = 0
        self._retrying = False
        self._min_context = 0

    def next(self) -> Step | None:
        while self._index < len(self.plan):
            locus = self.plan[self._index]
            if not self._retrying:
                if locus.context_window <= self._min_context:
                    self._skip(locus, "context window no larger than the one exceeded")
                    continue
                if not self.stats.healthy(locus.name):
                    self._skip(locus, "circuit open")
                    continue
                if self.budget is not None and (reason := self.budget.admit(locus)) is not None:
                    self._skip(locus, reason)
                    continue
                self._tries = 0
            self._retrying = False
            self._tries += 1
            step = self._build(locus)
            if step is not None:
                return step
        return None

    def failed(self, step: Step, exc: BaseException) -> float | None:
        """Record a failed attempt; return seconds to wait before retrying, or None to move on.

        Raises the original error when the failure is one that must not be retried or failed over.
        """
        failure = classify_failure(
            exc, allow_content_filter_failover=self.allow_content_filter_failover
        )
        self.last_error = exc
        self._record(step, "error", failure.kind, failure.message, failure.status)
        if failure.action is Action.STOP:
            raise exc
        self.stats.record_failure(step.locus.name)
        if failure.action is Action.RETRY and self._tries <= step.locus.max_retries:
            self._retrying = True
            return failure.wait_s if failure.wait_s is not None else backoff_seconds(self._tries)
        if failure.kind == "ContextWindowExceededError":
            self._min_context = max(self._min_context, step.locus.context_window)
        self._index += 1
        return None

    def succeeded(self, step: Step, usage: dict[str, int]) -> dict[str, Any]:
        latency_ms = (time.perf_counter() - step.started) * 1000
        ttft_ms = None
        if step.first_token_at is not None:
            ttft_ms = (step.first_token_at - step.started) * 1000
        cost = cost_usd(step.locus, usage)
        self.stats.record_success(
            step.locus.name,
            latency_ms=latency_ms,
            ttft_ms=ttft_ms,
            tokens_out=usage.get("completion_tokens", 0),
            cost_usd=cost,
        )
        self._record(step, "ok", None, None, None)
        return {
            "locus": step.locus.name,
            "zone": step.locus.zone,
            "model": step.locus.model,
            "usage": usage,
            "cost_usd": cost,
            "latency_ms": round(latency_ms, 3),
        }

    def exhausted(self) -> LocusError:
        tried = (
            ", ".join(
                f"{a['locus']}: {a.get('error_class') or a['outcome']}" for a in self.attempts
            )
            or "none"
        )
        if (
            self.attempts
            and all(a["outcome"] == "skipped" for a in self.attempts)
            and any(a["reason"].startswith("tenant budget") for a in self.attempts)
        ):
            # nothing was sent: the tenant's money, not a locus, stopped this call
            skipped = {a["locus"]: [a["reason"]] for a in self.attempts}
            detail = "; ".join(f"{n}: {r[0]}" for n, r in skipped.items())
            return NoAllowedLocusError(
                f"no locus of the plan could take this call: {detail}; nothing was sent",
                denied=skipped,
            )
        last = f"; last error: {self.last_error}" if self.last_error else ""
        return DispatchError(
            f"every allowed locus failed ({tried}){last}",
            attempts=self.attempts,
            last_error=self.last_error,
        )

    def _build(self, locus: Locus) -> Step | None:
        messages = self.messages
        vault = None
        if self.redact and locus.zone in self.redact_zones:
            try:
                from locus_llm.redaction import Vault
            except ImportError:  # fail closed: no pseudonymiser, no trip to this zone
                self._skip(locus, "redaction required but unavailable")
                return None
            vault = Vault()
            messages = vault.redact_messages(self.messages, self.entities, self.redact)
            for kind, count in vault.redacted_types.items():
                self.redacted[kind] = self.redacted.get(kind, 0) + count
        params = {**locus.params, **self.params, "model": locus.model, "messages": messages}
        # A slow first token is a reason to fail over only when there is somewhere to go: on the
        # last locus of the plan a late answer beats no answer.
        last = self._index >= len(self.plan) - 1
        first_timeout = (
            locus.ttft_timeout_s if locus.ttft_timeout_s and not last else locus.timeout_s
        )
        chunk_timeout = locus.stall_timeout_s or locus.timeout_s
        timeout = locus.timeout_s
        if isinstance(self.params.get("timeout"), int | float):  # the caller's timeout: a cap
            cap = float(self.params["timeout"])
            timeout, first_timeout, chunk_timeout = (
                min(t, cap) for t in (timeout, first_timeout, chunk_timeout)
            )
        if self.params.get("stream"):
            # the sync HTTP client has one read timeout for every chunk, the first included
            timeout = (
                min(first_timeout, chunk_timeout) if not last else max(first_timeout, chunk_timeout)
            )
        params.update(timeout=timeout, max_retries=0, num_retries=0)
        if locus.api_base:
            params["api_base"] = locus.api_base
        if (key := locus.api_key()) is not None:
            params["api_key"] = key
        return Step(locus, params, vault, first_timeout=first_timeout, chunk_timeout=chunk_timeout)

    def _skip(self, locus: Locus, reason: str) -> None:
        self.attempts.append({"locus": locus.name, "outcome": "skipped", "reason": reason})
        self._index += 1

    def _record(
        self, step: Step, outcome: str, kind: str | None, message: str | None, status: int | None
    ) -> None:
        attempt: dict[str, Any] = {
            "locus": step.locus.name,
            "outcome": outcome,
            "latency_ms": round((time.perf_counter() - step.started) * 1000, 3),
        }
        if kind:
            attempt.update(error_class=kind, error=message, status=status)
        if step.vault is not None:
            attempt["redacted"] = True
        self.attempts.append(attempt)


def cost_usd(locus: Locus, usage: dict[str, int]) -> float:
    return (
        usage.get("prompt_tokens", 0) * (locus.usd_per_mtok_in or 0.0)
        + usage.get("completion_tokens", 0) * (locus.usd_per_mtok_out or 0.0)
    ) / 1e6


def usage_of(obj: Any) -> dict[str, int]:
    usage = getattr(obj, "usage", None)
    if usage is None:
        return {}
    get = usage.get if isinstance(usage, dict) else lambda k, d=None: getattr(usage, k, d)
    return {k: int(get(k, 0) or 0) for k in ("prompt_tokens", "completion_tokens", "total_tokens")}


def restore_response(step: Step, response: Any) -> Any:
    if step.vault is None:
        return response
    for choice in response.choices:
        message = choice.message
        if isinstance(message.content, str):
            message.content = step.vault.restore(message.content)
        if message.tool_calls:
            restored = step.vault.restore_tool_calls(
                [
                    call.model_dump() if hasattr(call, "model_dump") else call
                    for call in message.tool_calls
                ]
            )
            for call, new in zip(message.tool_calls, restored, strict=True):
                call.function.arguments = new["function"]["arguments"]
    return response


# --- the loops --------------------------------------------------------------------------------

Finish = Callable[[Run, dict[str, Any] | None, BaseException | None], dict[str, Any]]


def complete(run: Run, litellm: Any, finish: Finish) -> Any:
    """Non-streaming call: returns the LiteLLM ModelResponse of the first locus that answers."""
    try:
        while (step := run.next()) is not None:
            try:
                response = litellm.completion(**step.params)
            except Exception as exc:
                wait = run.failed(step, exc)
                if wait:
                    time.sleep(wait)
                continue
            return _answer(run, step, response, finish)
        raise run.exhausted()
    except BaseException as exc:
        _record_failure(run, exc, finish)
        raise


async def acomplete(run: Run, litellm: Any, finish: Finish) -> Any:
    """The async form of `complete`: the same steps, awaiting the call and the backoff."""
    try:
        while (step := run.next()) is not None:
            try:
                response = await litellm.acompletion(**step.params)
            except Exception as exc:
                wait = run.failed(step, exc)
                if wait:
                    await asyncio.sleep(wait)
                continue
            return _answer(run, step, response, finish)
        raise run.exhausted()
    except BaseException as exc:
        _record_failure(run, exc, finish)
        raise


def _answer(run: Run, step: Step, response: Any, finish: Finish) -> Any:
    """Account for the answering attempt, restore redacted values, attach the decision."""
    outcome = run.succeeded(step, usage_of(response))
    response = restore_response(step, response)
    _attach(response, finish(run, outcome, None))
    return response


def _record_failure(run: Run, exc: BaseException, finish: Finish) -> None:
    if not getattr(exc, "_locus_recorded", False):  # once, however deep the error came from
        finish(run, None, exc)
        _mark(exc)


class ChunkRestorer:
    """Restores placeholders in streamed content and tool-call arguments, across chunk edges."""

    def __init__(self, vault: Any) -> None:
        self.vault = vault
        self.content = vault.stream_restorer() if vault is not None else None
        self.arguments: dict[int, Any] = {}

    def __call__(self, chunk: Any, last: bool) -> Any:
        if self.vault is None or not getattr(chunk, "choices", None):
            return chunk
        delta = chunk.choices[0].delta
        if self.content is not None and (delta.content or last):
            delta.content = self.content.feed(delta.content or "")
            if last:
                delta.content += self.content.flush()
        for call in getattr(delta, "tool_calls", None) or []:
            function = getattr(call, "function", None)
            if function is None or function.arguments is None:
                continue
            restorer = self.arguments.setdefault(call.index or 0, self.vault.stream_restorer())
            function.arguments = restorer.feed(function.arguments)
            if last:
                function.arguments += restorer.flush()
        return chunk


def _finish_reason(chunk: Any) -> str | None:
    choices = getattr(chunk, "choices", None) or []
    return getattr(choices[0], "finish_reason", None) if choices else None


def _has_content(chunk: Any) -> bool:
    choices = getattr(chunk, "choices", None) or []
    delta = getattr(choices[0], "delta", None) if choices else None
    return bool(delta is not None and (delta.content or getattr(delta, "tool_calls", None)))


class StreamAttempt:
    """One streamed attempt: what it delivered, its usage, whether it finished honestly."""

    def __init__(self, run: Run, step: Step) -> None:
        self.run = run
        self.step = step
        self.restore = ChunkRestorer(step.vault)
        self.usage: dict[str, int] = {}
        self.finished = False
        self.delivered = False

    def observe(self, chunk: Any) -> Any:
        """Account for a chunk and return it restored, ready for the caller."""
        if self.step.first_token_at is None and _has_content(chunk):
            self.step.first_token_at = time.perf_counter()
        self.usage = usage_of(chunk) or self.usage
        reason = _finish_reason(chunk)
        self.finished = self.finished or reason is not None
        self.delivered = self.delivered or _has_content(chunk)
        return self.restore(chunk, reason is not None)

    def check_finished(self) -> None:
        if not self.finished:  # a truncated answer is never a success
            raise StreamInterrupted(
                f"stream from {self.step.locus.name} ended without a finish reason"
            )

    def failed_after_output(self, exc: BaseException) -> DispatchError:
        """The caller holds part of an answer: no failover can undo that, so end it clearly."""
        self.run._record(self.step, "error", type(exc).__name__, str(exc)[:500], None)
        self.run.stats.record_failure(self.step.locus.name)
        return DispatchError(
            f"stream from locus {self.step.locus.name!r} failed after partial output: {exc}",
            attempts=self.run.attempts,
            last_error=exc,
        )


class RoutedStream:
    """Iterator of LiteLLM stream chunks; `.locus` holds the decision once the stream ends."""

    def __init__(self, run: Run, litellm: Any, finish: Finish) -> None:
        self.locus: dict[str, Any] | None = None
        self._iterator = self._chunks(run, litellm, finish)

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        return next(self._iterator)

    def close(self) -> None:
        self._iterator.close()

    def _chunks(self, run: Run, litellm: Any, finish: Finish) -> Iterator[Any]:
        done = False
        try:
            while (step := run.next()) is not None:
                attempt = StreamAttempt(run, step)
                try:
                    for chunk in litellm.completion(**step.params):
                        yield attempt.observe(chunk)
                    attempt.check_finished()
                except GeneratorExit:
                    raise
                except Exception as exc:
                    if attempt.delivered:
                        raise attempt.failed_after_output(exc) from exc
                    wait = run.failed(step, exc)
                    if wait:
                        time.sleep(wait)
                    continue
                self.locus = finish(run, run.succeeded(step, attempt.usage), None)
                done = True
                return
            raise run.exhausted()
        except BaseException as exc:
            if not done:
                reason = (
                    exc
                    if isinstance(exc, Exception)
                    else DispatchError("stream closed by the caller")
                )
                self.locus = finish(run, None, reason)
            raise


class AsyncRoutedStream:
    """Async iterator of LiteLLM stream chunks; `.locus` holds the decision once it ends.

    Unlike the sync stream, it can tell a slow first token from a stall: each wait has its own
    limit (`ttft_timeout_s`, then `stall_timeout_s`).
    """

    def __init__(self, run: Run, litellm: Any, finish: Finish) -> None:
        self.locus: dict[str, Any] | None = None
        self._iterator = self._chunks(run, litellm, finish)

    def __aiter__(self) -> AsyncIterator[Any]:
        return self

    async def __anext__(self) -> Any:
        return await self._iterator.__anext__()

    async def aclose(self) -> None:
        await self._iterator.aclose()

    async def _chunks(self, run: Run, litellm: Any, finish: Finish) -> AsyncIterator[Any]:
        done = False
        try:
            while (step := run.next()) is not None:
                attempt = StreamAttempt(run, step)
                try:
                    chunks = (await litellm.acompletion(**step.params)).__aiter__()
                    limit = step.first_timeout
                    while True:
                        try:
                            chunk = await asyncio.wait_for(chunks.__anext__(), timeout=limit)
                        except StopAsyncIteration:
                            break
                        except TimeoutError:
                            raise StreamInterrupted(
                                f"no chunk from {step.locus.name} within {limit:g} s"
                            ) from None
                        limit = step.chunk_timeout
                        yield attempt.observe(chunk)
                    attempt.check_finished()
                except (GeneratorExit, asyncio.CancelledError):
                    raise
                except Exception as exc:
                    if attempt.delivered:
                        raise attempt.failed_after_output(exc) from exc
                    wait = run.failed(step, exc)
                    if wait:
                        await asyncio.sleep(wait)
                    continue
                self.locus = finish(run, run.succeeded(step, attempt.usage), None)
                done = True
                return
            raise run.exhausted()
        except BaseException as exc:
            if not done:
                reason = exc if isinstance(exc, Exception) else DispatchError("stream cancelled")
                self.locus = finish(run, None, reason)
            raise


def _attach(response: Any, info: dict[str, Any]) -> None:
    response.locus = info
    hidden = getattr(response, "_hidden_params", None)
    if isinstance(hidden, dict):
        # a new dict: LiteLLM's logging thread may be serialising the old one right now
        response._hidden_params = {**hidden, "locus": info}


def _mark(exc: BaseException) -> None:
    try:
        exc._locus_recorded = True  # type: ignore[attr-defined]
    except AttributeError:
        pass

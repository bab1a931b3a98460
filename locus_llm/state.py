"""Where routing state lives: this process's memory, or one Redis shared by every replica.

    state: memory                      # the default: each process keeps its own
    state: redis://127.0.0.1:6379/0    # every replica, gateway or embedded, shares one picture

Shared through Redis:
  - per locus, the circuit breaker and the measured profile (the EWMAs of `stats.Stats`): each
    outcome is applied to this process's view at once and written to Redis by a background
    thread (one pipeline, Lua scripts so concurrent replicas never lose an update) — a failure
    at once, a success with the next refresh; every REFRESH_S the same thread reads all loci
    back. A routed call never waits on Redis for health,
    and a circuit opened by one replica is respected by the others within about REFRESH_S.
  - per tenant, the money spent in the budget period (`budgets` in the config). Before a call
    goes to a paid locus it reserves the predicted cost, atomically against the tenant's budget
    (a Lua script: committed spend + live reservations + this estimate ≤ budget, or no). After
    the call the reservation is settled with the actual cost, or released if the call failed
    (the background thread writes it at once; until then the reservation still counts).
    Replicas together can therefore never admit more than the budget holds, whatever the
    concurrency; only a call whose actual cost exceeds its estimate can overshoot, by that
    difference. A reservation left behind by a replica that died expires after its call's
    worst-case duration.

If Redis cannot be reached, one warning is logged for the outage (and one line when it is back).
Health and profiles carry on from this process's own numbers; budgets fail closed: spend is
unknown, the policy sees `budget_state: "unknown"` and the default bundle denies paid loci until
Redis answers again. Settlements made meanwhile are kept and written when it does. Every Redis
command has a short timeout, and while Redis is down only the background thread probes it.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit, urlunsplit

from locus_llm.errors import ConfigError, LocusError
from locus_llm.stats import LocusStats, Stats

if TYPE_CHECKING:
    from locus_llm.config import Locus, LocusConfig

log = logging.getLogger("locus_llm.state")

REFRESH_S = 0.2  # how stale a replica's view of shared health and profiles may get
RETRY_S = 1.0  # while Redis is down, how often the background thread tries it again
TIMEOUT_S = 0.25  # connect and command timeout: a hanging Redis must never hang routing
RESERVATION_SLACK_S = 30.0  # a reservation outlives its call's worst case by this much
MAX_KEPT_SETTLEMENTS = 100_000  # settlements held while Redis is down, oldest dropped beyond
KEY_PREFIX = "locus:"
PERIOD_TTL_S = {"total": 0, "day": 3 * 86_400, "month": 63 * 86_400}  # spend keys expire after
EPSILON_USD = 1e-12  # float slack in budget comparisons

BUDGET_UNKNOWN = "tenant budget unknown (state backend unreachable)"


class StateUnavailable(LocusError):
    """The shared state backend cannot be reached right now: spend is unknown."""


def budget_period(period: str, now: datetime | None = None) -> str:
    """The label of the current budget period: "total", a UTC day or a UTC month."""
    now = now or datetime.now(UTC)
    if period == "day":
        return now.strftime("%Y-%m-%d")
    if period == "month":
        return now.strftime("%Y-%m")
    return "total"


def open_state(config: LocusConfig, stats: Stats | None = None) -> State:
    """The state backend the config names; `stats` (memory only) reuses existing breakers."""
    breaker = config.breaker
    if config.state == "memory":
        stats = stats or Stats(
            failure_threshold=breaker.failure_threshold, cooldown_s=breaker.cooldown_s
        )
        return MemoryState(stats, period=config.budgets.period)
    if stats is not None:
        raise ConfigError(
            "a Stats object can be given to the router only with `state: memory`; "
            f"with {redacted_url(config.state)} the breakers and profiles live in "
            "Redis"
        )
    return RedisState(
        config.state,
        [locus.name for locus in config.loci],
        period=config.budgets.period,
        failure_threshold=breaker.failure_threshold,
        cooldown_s=breaker.cooldown_s,
    )


def redacted_url(url: str) -> str:
    """The URL without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def reservation_ttl_s(locus: Locus) -> float:
    """How long a call on `locus` can take at worst, retries included, plus slack."""
    return locus.timeout_s * (locus.max_retries + 1) + RESERVATION_SLACK_S


@dataclass(frozen=True)
class Reservation:
    """Money set aside for one call in flight; settled or released when the call ends."""

    tenant: str
    period: str
    id: str
    amount_usd: float
    locus: str


class State(Protocol):
    """What the router needs from a state backend."""

    backend: str
    stats: Stats

    def spent(self, tenant: str) -> float:
        """Committed spend plus live reservations this period; raises StateUnavailable."""

    def reserve(
        self, tenant: str, amount_usd: float, budget_usd: float, *, ttl_s: float, locus: str
    ) -> Reservation | None:
        """Set `amount_usd` aside if it fits the budget, else None; raises StateUnavailable."""

    def settle(
        self, tenant: str, actual_usd: float, reservation: Reservation | None = None
    ) -> None:
        """Drop the reservation (if any) and add the actual cost; never raises."""

    def status(self) -> dict[str, Any]: ...

    def close(self) -> None: ...


class BudgetGuard:
    """One call's account with its tenant's budget, across the attempts of its plan.

    A free locus needs no reservation; a paid one (a cloud zone, or a predicted cost above zero)
    gets one before its first attempt, kept over its retries, released when the plan moves on.
    """

    def __init__(
        self, state: State, tenant: str, budget_usd: float | None, estimates: dict[str, float]
    ) -> None:
        self.state = state
        self.tenant = tenant
        self.budget_usd = budget_usd
        self.estimates = estimates
        self.reservation: Reservation | None = None

    def admit(self, locus: Locus) -> str | None:
        """Reserve for attempts on `locus`: None when it may go, else why it may not."""
        estimate = self.estimates.get(locus.name, 0.0)
        paid = estimate > 0 or locus.zone == "cloud"
        if self.reservation is not None and self.reservation.locus == locus.name:
            return None
        self.release()
        if self.budget_usd is None or not paid:
            return None
        try:
            reservation = self.state.reserve(
                self.tenant,
                estimate,
                self.budget_usd,
                ttl_s=reservation_ttl_s(locus),
                locus=locus.name,
            )
        except StateUnavailable:
            return BUDGET_UNKNOWN
        if reservation is None:
            return (
                f"tenant budget ${self.budget_usd:.4f} would be exceeded "
                f"(predicted ${estimate:.6f})"
            )
        self.reservation = reservation
        return None

    def release(self) -> None:
        reservation, self.reservation = self.reservation, None
        if reservation is not None:
            self.state.settle(self.tenant, 0.0, reservation)

    def end(self, cost_usd: float | None) -> None:
        """The call is over: charge its actual cost (None: it failed, nothing is charged)."""
        reservation, self.reservation = self.reservation, None
        if reservation is not None or (cost_usd or 0.0) > 0:
            self.state.settle(self.tenant, cost_usd or 0.0, reservation)


# --- memory ------------------------------------------------------------------------------------


class MemoryState:
    """Everything in this process: the default, and what one embedded router needs."""

    backend = "memory"

    def __init__(self, stats: Stats, *, period: str = "total") -> None:
        self.stats = stats
        self.period = period
        self._committed: dict[tuple[str, str], float] = {}
        self._held: dict[tuple[str, str], dict[str, tuple[float, float]]] = {}  # id: usd, until
        self._lock = threading.Lock()

    def spent(self, tenant: str) -> float:
        with self._lock:
            return self._spent((budget_period(self.period), tenant))

    def reserve(
        self, tenant: str, amount_usd: float, budget_usd: float, *, ttl_s: float, locus: str
    ) -> Reservation | None:
        period = budget_period(self.period)
        with self._lock:
            if self._spent((period, tenant)) + amount_usd > budget_usd + EPSILON_USD:
                return None
            reservation = Reservation(tenant, period, uuid.uuid4().hex, amount_usd, locus)
            held = self._held.setdefault((period, tenant), {})
            held[reservation.id] = (amount_usd, time.monotonic() + ttl_s)
        return reservation

    def settle(
        self, tenant: str, actual_usd: float, reservation: Reservation | None = None
    ) -> None:
        key = (reservation.period if reservation else budget_period(self.period), tenant)
        with self._lock:
            if reservation is not None:
                self._held.get(key, {}).pop(reservation.id, None)
            if actual_usd > 0:
                self._committed[key] = self._committed.get(key, 0.0) + actual_usd

    def status(self) -> dict[str, Any]:
        return {"backend": self.backend, "reachable": True}

    def close(self) -> None:
        pass

    def _spent(self, key: tuple[str, str]) -> float:
        held = self._held.get(key, {})
        now = time.monotonic()
        for expired in [rid for rid, (_, until) in held.items() if until < now]:
            del held[expired]
        return self._committed.get(key, 0.0) + sum(usd for usd, _ in held.values())


# --- Redis -------------------------------------------------------------------------------------

# Lua keeps every read-modify-write atomic across replicas. Numbers go back as strings: Redis
# turns a Lua number reply into an integer.

RECORD_SUCCESS = """
local alpha = tonumber(ARGV[1])
local function ewma(field, value)
  local old = tonumber(redis.call('HGET', KEYS[1], field))
  if old then value = old + alpha * (value - old) end
  redis.call('HSET', KEYS[1], field, string.format('%.17g', value))
end
local latency = tonumber(ARGV[2])
local first = tonumber(ARGV[3]) or latency
local tokens_out = tonumber(ARGV[4])
redis.call('HINCRBY', KEYS[1], 'calls', 1)
ewma('latency_ms', latency)
ewma('ttft_ms', first)
if tokens_out > 1 and latency - first > 0 then
  ewma('tokens_per_s', (tokens_out - 1) * 1000 / (latency - first))
end
ewma('error_rate', 0)
redis.call('HINCRBYFLOAT', KEYS[1], 'cost_usd', ARGV[5])
redis.call('HSET', KEYS[1], 'consecutive_failures', 0)
redis.call('HDEL', KEYS[1], 'opened_at')
return 1
"""

RECORD_FAILURE = """
local alpha = tonumber(ARGV[1])
local old = tonumber(redis.call('HGET', KEYS[1], 'error_rate'))
local rate = 1
if old then rate = old + alpha * (1 - old) end
redis.call('HSET', KEYS[1], 'error_rate', string.format('%.17g', rate))
redis.call('HINCRBY', KEYS[1], 'calls', 1)
redis.call('HINCRBY', KEYS[1], 'errors', 1)
local failures = redis.call('HINCRBY', KEYS[1], 'consecutive_failures', 1)
if failures >= tonumber(ARGV[2]) then  -- (re)open: a failed probe restarts the cooldown
  local now = redis.call('TIME')
  redis.call('HSET', KEYS[1], 'opened_at', now[1] .. '.' .. string.format('%06d', now[2]))
end
return failures
"""

# KEYS: the tenant's committed spend (a float string), its reservations (id -> "usd deadline").
# ARGV empty: read the spend. ARGV = id, usd, budget, ttl_s: reserve if it fits.
SPEND = """
local now = redis.call('TIME')
now = tonumber(now[1]) + tonumber(now[2]) / 1000000
local spent = tonumber(redis.call('GET', KEYS[1])) or 0
local held = redis.call('HGETALL', KEYS[2])
for i = 1, #held, 2 do
  local usd, deadline = string.match(held[i + 1], '^(%S+) (%S+)$')
  if tonumber(deadline) < now then
    redis.call('HDEL', KEYS[2], held[i])
  else
    spent = spent + tonumber(usd)
  end
end
if #ARGV == 0 then return {1, string.format('%.17g', spent)} end
local usd = tonumber(ARGV[2])
if spent + usd > tonumber(ARGV[3]) + 1e-12 then return {0, string.format('%.17g', spent)} end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2] .. ' ' .. string.format('%.6f', now + ARGV[4]))
redis.call('PEXPIRE', KEYS[2], math.ceil((tonumber(ARGV[4]) + 60) * 1000))
return {1, string.format('%.17g', spent + usd)}
"""

# KEYS as SPEND. ARGV: reservation id ('' for none), actual usd, key ttl in seconds (0: none).
SETTLE = """
if ARGV[1] ~= '' then redis.call('HDEL', KEYS[2], ARGV[1]) end
if tonumber(ARGV[2]) > 0 then redis.call('INCRBYFLOAT', KEYS[1], ARGV[2]) end
if tonumber(ARGV[3]) > 0 then redis.call('EXPIRE', KEYS[1], ARGV[3]) end
return 1
"""

_FLOAT_FIELDS = ("ttft_ms", "tokens_per_s", "latency_ms", "error_rate", "cost_usd")
_INT_FIELDS = ("calls", "errors", "consecutive_failures")
_SEEDED_FIELDS = ("ttft_ms", "tokens_per_s", "latency_ms", "error_rate")  # from a profile file


@dataclass(frozen=True)
class _Write:
    kind: str  # "stats" (dropped during an outage) or "settle" (kept and written later)
    script: str
    keys: tuple[str, ...]
    args: tuple[str, ...]


def _redis_module() -> Any:
    try:
        import redis
    except ImportError:
        raise ConfigError(
            "a redis:// state backend needs the Redis client: pip install 'locus-llm[redis]'"
        ) from None
    return redis


class RedisState:
    """Breakers, profiles and spend in one Redis, shared by every replica that names it."""

    backend = "redis"

    def __init__(
        self,
        url: str,
        loci: list[str],
        *,
        period: str = "total",
        failure_threshold: int = 5,
        cooldown_s: float = 30.0,
        alpha: float = 0.2,
    ) -> None:
        redis = _redis_module()
        self.url = url
        self.period = period
        self.loci = list(loci)
        self._errors = (redis.RedisError, OSError)
        try:
            # URL options (?socket_timeout=...) win over these defaults
            self._client = redis.Redis.from_url(
                url,
                socket_timeout=TIMEOUT_S,
                socket_connect_timeout=TIMEOUT_S,
                retry=redis.retry.Retry(redis.backoff.NoBackoff(), 0),
                decode_responses=True,
            )
        except ValueError as exc:
            raise ConfigError(f"state: {redacted_url(url)}: {exc}") from None
        self._scripts = {
            script: self._client.register_script(script)
            for script in (RECORD_SUCCESS, RECORD_FAILURE, SPEND, SETTLE)
        }
        self.stats = SharedStats(
            self, alpha=alpha, failure_threshold=failure_threshold, cooldown_s=cooldown_s
        )
        self.available = True  # until a command fails
        self.outages = 0
        self._retry_at = 0.0
        self._writes: list[_Write] = []
        self._urgent = False
        self._spent: dict[tuple[str, str], tuple[float, float]] = {}  # usd, monotonic read time
        self._wake = threading.Condition()
        self._stopping = False
        self._sync(refresh=True)  # the first routed call already sees what the others know
        self._thread = threading.Thread(target=self._run, name="locus-state", daemon=True)
        self._thread.start()

    # --- spend: on the caller's thread, short timeouts ----------------------------------------

    def spent(self, tenant: str) -> float:
        """The policy's view of the spend: read at most every REFRESH_S per tenant (this
        process's own reservations and settlements kept current in between). It may lag other
        replicas by that much; the reservation, not this number, is what enforces the budget."""
        if not self.available:
            raise StateUnavailable(f"state backend {redacted_url(self.url)} is unreachable")
        key = (budget_period(self.period), tenant)
        cached = self._spent.get(key)
        if cached is not None and time.monotonic() - cached[1] < REFRESH_S:
            return cached[0]
        _, spent = self._spend_script(tenant, (), key[0])
        self._spent[key] = (spent, time.monotonic())
        return spent

    def reserve(
        self, tenant: str, amount_usd: float, budget_usd: float, *, ttl_s: float, locus: str
    ) -> Reservation | None:
        period = budget_period(self.period)
        reservation = Reservation(tenant, period, uuid.uuid4().hex, amount_usd, locus)
        admitted, spent = self._spend_script(
            tenant,
            (reservation.id, repr(float(amount_usd)), repr(float(budget_usd)), repr(float(ttl_s))),
            period,
        )
        self._spent[(period, tenant)] = (spent, time.monotonic())  # as fresh as it gets
        return reservation if admitted else None

    def settle(
        self, tenant: str, actual_usd: float, reservation: Reservation | None = None
    ) -> None:
        """Written by the background thread at once, so the caller (often an event loop, just
        as LiteLLM's logging threads wake) never waits on a round trip; until it lands the
        reservation still counts, which errs on the safe side. Kept while Redis is down."""
        period = reservation.period if reservation else budget_period(self.period)
        write = _Write(
            "settle",
            SETTLE,
            self._spend_keys(period, tenant),
            (
                reservation.id if reservation else "",
                repr(float(actual_usd)),
                str(PERIOD_TTL_S[self.period]),
            ),
        )
        self._submit(write, urgent=True)
        key = (period, tenant)
        if (cached := self._spent.get(key)) is not None:  # what this process knows already
            held = reservation.amount_usd if reservation else 0.0
            self._spent[key] = (cached[0] - held + actual_usd, cached[1])

    def status(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "url": redacted_url(self.url),
            "reachable": self.available,
            "outages": self.outages,
            "pending_settlements": sum(w.kind == "settle" for w in self._writes),
        }

    def close(self) -> None:
        """Write what is pending (if Redis answers) and stop the background thread."""
        with self._wake:
            self._stopping = True
            self._wake.notify()
        self._thread.join(5 * TIMEOUT_S + 1.0)
        self._client.close()

    def _spend_script(
        self, tenant: str, args: tuple[str, ...], period: str | None = None
    ) -> tuple[bool, float]:
        if not self.available:
            raise StateUnavailable(f"state backend {redacted_url(self.url)} is unreachable")
        keys = self._spend_keys(period or budget_period(self.period), tenant)
        try:
            admitted, spent = self._scripts[SPEND](keys=keys, args=args)
        except self._errors as exc:
            self._went_down(exc)
            raise StateUnavailable(
                f"state backend {redacted_url(self.url)} is unreachable: {exc}"
            ) from None
        return bool(admitted), float(spent)

    @staticmethod
    def _spend_keys(period: str, tenant: str) -> tuple[str, str]:
        return (f"{KEY_PREFIX}spend:{period}:{tenant}", f"{KEY_PREFIX}held:{period}:{tenant}")

    # --- the background thread: write outcomes, read the shared view ---------------------------

    def _submit(self, write: _Write, *, urgent: bool) -> None:
        """Queue a write: an urgent one (a failure, which may open a circuit) goes out at once,
        the others with the next refresh, so a routed call never wakes the thread for them."""
        with self._wake:
            self._writes.append(write)
            if urgent:
                self._urgent = True
                self._wake.notify()

    def _run(self) -> None:
        next_refresh = time.monotonic() + REFRESH_S
        while True:
            with self._wake:
                while not self._stopping:
                    now = time.monotonic()
                    if self.available and self._urgent:
                        break
                    wake_at = next_refresh if self.available else self._retry_at
                    if now >= wake_at:
                        break
                    self._wake.wait(wake_at - now)
                stopping = self._stopping
            refresh = time.monotonic() >= next_refresh or not self.available
            due = self.available or time.monotonic() >= self._retry_at
            if due and self._sync(refresh=refresh) and refresh:
                next_refresh = time.monotonic() + REFRESH_S
            if stopping:
                return

    def _sync(self, *, refresh: bool) -> bool:
        """One pipeline: pending writes, then (if `refresh`) every locus. False if Redis failed."""
        with self._wake:
            writes, self._writes = self._writes, []
            self._urgent = False
        pipe = self._client.pipeline(transaction=False)
        for write in writes:
            self._scripts[write.script](keys=write.keys, args=write.args, client=pipe)
        if refresh:
            pipe.time()
            for name in self.loci:
                pipe.hgetall(self._locus_key(name))
        fetched_at = time.monotonic()
        try:
            results = pipe.execute() if writes or refresh else []
        except self._errors as exc:
            self._went_down(exc)
            self._keep([w for w in writes if w.kind == "settle"])
            return False
        finally:
            pipe.reset()
        self._came_back()
        if refresh:
            seconds, micros = results[len(writes)]
            server_now = seconds + micros / 1e6
            self.stats.install(
                {
                    name: entry
                    for name, entry in zip(self.loci, results[len(writes) + 1 :], strict=True)
                },
                server_now,
                fetched_at,
            )
        return True

    def _keep(self, settlements: list[_Write]) -> None:
        with self._wake:
            kept = settlements + self._writes
            if len(kept) > MAX_KEPT_SETTLEMENTS:
                log.error(
                    "state backend down too long: dropping %d unwritten settlements",
                    len(kept) - MAX_KEPT_SETTLEMENTS,
                )
                kept = kept[-MAX_KEPT_SETTLEMENTS:]
            self._writes = kept

    def _went_down(self, exc: BaseException) -> None:
        with self._wake:
            was_up, self.available = self.available, False
            self._retry_at = time.monotonic() + RETRY_S
        if was_up:  # one warning per outage, however many calls meet it
            self.outages += 1
            log.warning(
                "state backend %s unreachable (%s: %s): breakers and profiles fall back "
                "to this process, budgets fail closed for paid loci until it answers",
                redacted_url(self.url),
                type(exc).__name__,
                exc,
            )

    def _came_back(self) -> None:
        if not self.available:
            self.available = True
            log.info("state backend %s reachable again", redacted_url(self.url))

    @staticmethod
    def _locus_key(name: str) -> str:
        return f"{KEY_PREFIX}locus:{name}"

    def _record(self, script: str, name: str, args: tuple[str, ...]) -> None:
        if name in self.loci:  # shared only for configured loci: the snapshot reads those
            self._submit(
                _Write("stats", script, (self._locus_key(name),), args),
                urgent=script is RECORD_FAILURE,
            )


class SharedStats(Stats):
    """`Stats` whose numbers are the ones in Redis, with this process's own as the fallback.

    The inherited storage holds the shared view: refreshed from Redis by the state's background
    thread, and updated here at once by this process's own outcomes (Redis gets them too, a
    moment later). `local` holds only this process's outcomes: used while Redis is unreachable.
    """

    def __init__(
        self, state: RedisState, *, alpha: float, failure_threshold: int, cooldown_s: float
    ) -> None:
        super().__init__(alpha=alpha, failure_threshold=failure_threshold, cooldown_s=cooldown_s)
        self.local = Stats(alpha=alpha, failure_threshold=failure_threshold, cooldown_s=cooldown_s)
        self._state = state

    def get(self, name: str) -> LocusStats:
        return super().get(name) if self._state.available else self.local.get(name)

    def healthy(self, name: str) -> bool:
        return super().healthy(name) if self._state.available else self.local.healthy(name)

    def record_success(
        self,
        name: str,
        *,
        latency_ms: float,
        ttft_ms: float | None = None,
        tokens_out: int = 0,
        cost_usd: float = 0.0,
    ) -> None:
        kwargs = {
            "latency_ms": latency_ms,
            "ttft_ms": ttft_ms,
            "tokens_out": tokens_out,
            "cost_usd": cost_usd,
        }
        super().record_success(name, **kwargs)
        self.local.record_success(name, **kwargs)
        self._state._record(
            RECORD_SUCCESS,
            name,
            (
                repr(self.alpha),
                repr(float(latency_ms)),
                "" if ttft_ms is None else repr(float(ttft_ms)),
                str(int(tokens_out)),
                repr(float(cost_usd)),
            ),
        )

    def record_failure(self, name: str) -> None:
        super().record_failure(name)
        self.local.record_failure(name)
        self._state._record(RECORD_FAILURE, name, (repr(self.alpha), str(self.failure_threshold)))

    def to_dict(self) -> dict[str, dict[str, Any]]:
        source = super() if self._state.available else self.local
        return source.to_dict()

    def load_profiles(self, path: Any) -> None:
        super().load_profiles(path)
        self.local.load_profiles(path)

    def install(
        self, entries: dict[str, dict[str, str]], server_now: float, fetched_at: float
    ) -> None:
        """Take the loci as read from Redis; `opened_at` moves onto this process's clock."""
        seeds = self.local.to_dict()
        view = {}
        for name, entry in entries.items():
            stats = LocusStats()
            for field in fields(LocusStats):
                if field.name in entry and field.name in _FLOAT_FIELDS:
                    setattr(stats, field.name, float(entry[field.name]))
                elif field.name in entry and field.name in _INT_FIELDS:
                    setattr(stats, field.name, int(entry[field.name]))
                elif field.name in _SEEDED_FIELDS and name in seeds:
                    setattr(stats, field.name, seeds[name][field.name])
            if "opened_at" in entry:
                stats.opened_at = fetched_at - (server_now - float(entry["opened_at"]))
            view[name] = stats
        with self._lock:
            self._stats.update(view)


__all__ = [
    "BUDGET_UNKNOWN",
    "BudgetGuard",
    "MemoryState",
    "RedisState",
    "Reservation",
    "SharedStats",
    "State",
    "StateUnavailable",
    "budget_period",
    "open_state",
]

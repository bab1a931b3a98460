"""LocusConfig: the loci, the policy bundle, analysis settings, the objective and the decision log.

Read from YAML (or TOML/JSON), from a Python dict, or built with the defaults (`default_config()`).
Environment overrides: LOCUS_CONFIG (the file), LOCUS_POLICY_BUNDLE, LOCUS_DECISION_LOG,
LOCUS_PROFILES, LOCUS_STATE.
Errors name the file, the field and what was expected.
"""

from __future__ import annotations

import json
import os
import tomllib
from functools import cache
from importlib.util import find_spec
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from locus_llm.errors import ConfigError

Zone = Literal["device", "onprem", "cloud"]
PACKAGED_BUNDLE = Path(__file__).parent / "policies"


class Locus(BaseModel):
    """One place a call can run, and what we know about it before measuring."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_.\-]+$")
    zone: Zone
    model: str  # LiteLLM model string, e.g. "hosted_vllm/llama-3-8b", "openai/gpt-4o"
    api_base: str | None = None
    api_key_env: str | None = None  # name of the environment variable holding the key
    capability: int = Field(default=2, ge=0, le=10)  # tier: higher handles harder work
    context_window: int = Field(default=8192, gt=0)
    region: str | None = None
    usd_per_mtok_in: float | None = Field(default=None, ge=0)  # None: from LiteLLM's cost map
    usd_per_mtok_out: float | None = Field(default=None, ge=0)
    timeout_s: float = Field(default=60.0, gt=0)  # whole attempt
    ttft_timeout_s: float | None = Field(default=None, gt=0)  # streaming: first token
    stall_timeout_s: float | None = Field(default=None, gt=0)  # streaming: gap between chunks
    max_retries: int = Field(default=1, ge=0, le=10)  # retries on this locus before failing over
    expected_ttft_ms: float | None = Field(default=None, ge=0)  # prior until measured
    expected_tokens_per_s: float | None = Field(default=None, gt=0)
    params: dict[str, Any] = Field(default_factory=dict)  # extra LiteLLM parameters

    def has_credentials(self) -> bool:
        """A locus that names a key variable needs it set; loci without one need none."""
        return self.api_key_env is None or bool(os.environ.get(self.api_key_env))

    def api_key(self) -> str | None:
        return os.environ.get(self.api_key_env) if self.api_key_env else None


class PolicySettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    bundle: Path = PACKAGED_BUNDLE
    data: dict[str, Any] = Field(default_factory=dict)  # merged over the bundle's data.json
    reload: bool = True  # check the bundle for changes before each decision


class AnalysisSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    classifier: Path | None = None  # a retrained router model folder; None: the packaged one
    tokens_out_default: int = Field(default=256, gt=0)  # expected output when max_tokens is unset


class BreakerSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    failure_threshold: int = Field(default=5, ge=1)  # consecutive failures that open the circuit
    cooldown_s: float = Field(default=30.0, gt=0)  # then one probe is let through


class BudgetSettings(BaseModel):
    """Per-tenant spending limits, counted in the state backend (shared across replicas)."""

    model_config = ConfigDict(extra="forbid")

    period: Literal["total", "day", "month"] = "total"  # counters restart each UTC day/month
    default_usd: float | None = Field(default=None, ge=0)  # tenants not listed; None: no limit
    tenants: dict[str, Annotated[float, Field(ge=0)]] = Field(default_factory=dict)

    def for_tenant(self, tenant: str) -> float | None:
        return self.tenants.get(tenant, self.default_usd)


STATE_SCHEMES = ("redis://", "rediss://", "unix://")


class LocusConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    loci: list[Locus]
    policy: PolicySettings = Field(default_factory=PolicySettings)
    analysis: AnalysisSettings = Field(default_factory=AnalysisSettings)
    sensitivity: dict[str, Any] = Field(default_factory=dict)  # see analysis.sensitivity
    breaker: BreakerSettings = Field(default_factory=BreakerSettings)
    objective: Literal["cost", "latency"] = (
        "cost"  # after the floor and the budget: what to minimise
    )
    decision_log: Path | None = None
    profiles: Path | None = None  # a `locus bench` profile file: measured numbers to start from
    allow_failover_on_content_filter: bool = False  # never shop a refused request around by default
    local_models: list[str] = Field(default_factory=list)  # names for the locus-onnx provider
    state: str = "memory"  # or redis://host:port/db: breakers, profiles and spend shared
    budgets: BudgetSettings = Field(default_factory=BudgetSettings)

    @field_validator("state")
    @classmethod
    def _state_backend(cls, state: str) -> str:
        state = state.strip()
        if state != "memory" and not state.startswith(STATE_SCHEMES):
            raise ValueError(
                f"expected 'memory' or a Redis URL such as redis://127.0.0.1:6379/0 "
                f"(rediss:// and unix:// too), got {state!r}"
            )
        return state

    @field_validator("loci")
    @classmethod
    def _unique_names(cls, loci: list[Locus]) -> list[Locus]:
        names = [locus.name for locus in loci]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"locus names must be unique; repeated: {duplicates}")
        if not loci:
            raise ValueError("at least one locus is required")
        return loci

    @model_validator(mode="after")
    def _resolve_prices(self) -> LocusConfig:
        for locus in self.loci:
            if locus.usd_per_mtok_in is None or locus.usd_per_mtok_out is None:
                price_in, price_out = litellm_prices(locus.model)
                if locus.usd_per_mtok_in is None:
                    locus.usd_per_mtok_in = price_in
                if locus.usd_per_mtok_out is None:
                    locus.usd_per_mtok_out = price_out
        return self

    def locus(self, name: str) -> Locus:
        for locus in self.loci:
            if locus.name == name:
                return locus
        raise ConfigError(f"no locus named {name!r}: configured are {[x.name for x in self.loci]}")


def default_config() -> LocusConfig:
    """The embedded default: the on-device ONNX model only. No keys, no servers, nothing leaves."""
    return LocusConfig(
        loci=[
            Locus(
                name="device",
                zone="device",
                model="locus-onnx/smollm2",
                capability=1,
                context_window=8192,
                region="local",
                usd_per_mtok_in=0.0,
                usd_per_mtok_out=0.0,
                timeout_s=120.0,
                expected_ttft_ms=80.0,
                expected_tokens_per_s=80.0,
            )
        ],
        local_models=["smollm2"],
    )


def load_config(path: str | Path | None = None) -> LocusConfig:
    """Read a config file (YAML, TOML or JSON); with no path, LOCUS_CONFIG or the default."""
    path = path or os.environ.get("LOCUS_CONFIG")
    if not path:
        config = default_config()
    else:
        path = Path(path)
        config = config_from_dict(read_config_file(path), source=str(path), base_dir=path.parent)
    return apply_env_overrides(config)


def read_config_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc}") from None
    try:
        if path.suffix == ".toml":
            data = tomllib.loads(text)
        elif path.suffix == ".json":
            data = json.loads(text)
        else:
            data = yaml.safe_load(text)
    except (yaml.YAMLError, tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: not valid {path.suffix.lstrip('.') or 'YAML'}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def config_from_dict(
    data: dict[str, Any], source: str = "<config>", base_dir: Path | None = None
) -> LocusConfig:
    """Validate a config mapping; relative paths are taken relative to `base_dir`."""
    try:
        config = LocusConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, source, data)) from None
    if base_dir is not None:
        config = _rebase_paths(config, base_dir)
    return config


def describe_validation_error(exc: ValidationError, source: str, data: dict[str, Any]) -> str:
    """One line per problem: file, dotted field (with locus names), what was expected."""
    lines = []
    for error in exc.errors():
        location = list(error["loc"])
        if len(location) >= 2 and location[0] == "loci" and isinstance(location[1], int):
            try:
                location[1] = data["loci"][location[1]].get("name", location[1])
            except (KeyError, IndexError, AttributeError, TypeError):
                pass
        field = ".".join(str(part) for part in location) or "(top level)"
        message = error["msg"]
        if error["type"] == "extra_forbidden":
            message = "unknown field (check the spelling)"
        elif error["type"] == "literal_error":
            message = f"expected {error['ctx']['expected']}, got {error['input']!r}"
        lines.append(f"{source}: {field}: {message}")
    return "; ".join(lines)


def apply_env_overrides(config: LocusConfig) -> LocusConfig:
    if bundle := os.environ.get("LOCUS_POLICY_BUNDLE"):
        config.policy.bundle = Path(bundle)
    if log := os.environ.get("LOCUS_DECISION_LOG"):
        config.decision_log = Path(log)
    if profiles := os.environ.get("LOCUS_PROFILES"):
        config.profiles = Path(profiles)
    if state := os.environ.get("LOCUS_STATE"):
        try:
            config.state = LocusConfig._state_backend(state)
        except ValueError as exc:
            raise ConfigError(f"LOCUS_STATE: {exc}") from None
    return config


def _rebase_paths(config: LocusConfig, base_dir: Path) -> LocusConfig:
    if not config.policy.bundle.is_absolute():
        config.policy.bundle = base_dir / config.policy.bundle
    if config.decision_log is not None and not config.decision_log.is_absolute():
        config.decision_log = base_dir / config.decision_log
    if config.profiles is not None and not config.profiles.is_absolute():
        config.profiles = base_dir / config.profiles
    classifier = config.analysis.classifier
    if classifier is not None and not classifier.is_absolute():
        config.analysis.classifier = base_dir / classifier
    return config


def litellm_prices(model: str) -> tuple[float, float]:
    """Per-Mtok prices from LiteLLM's bundled cost map, read as JSON so litellm is not imported.

    Unknown models cost 0 here; configure prices explicitly for those.
    """
    prices = _litellm_cost_map()
    entry = prices.get(model) or prices.get(model.split("/", 1)[-1]) or {}
    return (
        float(entry.get("input_cost_per_token") or 0.0) * 1e6,
        float(entry.get("output_cost_per_token") or 0.0) * 1e6,
    )


@cache
def _litellm_cost_map() -> dict[str, Any]:
    spec = find_spec("litellm")
    if spec is None or not spec.submodule_search_locations:
        return {}
    path = Path(next(iter(spec.submodule_search_locations)))
    path = path / "model_prices_and_context_window_backup.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}

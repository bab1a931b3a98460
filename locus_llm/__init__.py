"""locus: decide per LLM call where inference runs (device, on-prem, cloud), and run it there.

Names are imported on first use (PEP 562), so `import locus_llm` stays cheap for tools that need
only a part of it (the MCP server's cold start, the CLI's --help).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "ConfigError": "locus_llm.errors",
    "DispatchError": "locus_llm.errors",
    "InvalidRequestError": "locus_llm.errors",
    "LocusError": "locus_llm.errors",
    "NoAllowedLocusError": "locus_llm.errors",
    "PolicyError": "locus_llm.errors",
    "LocusConfig": "locus_llm.config",
    "load_config": "locus_llm.config",
    "DataClass": "locus_llm.profile",
    "RequestProfile": "locus_llm.profile",
    "RoutingContext": "locus_llm.profile",
    "Decision": "locus_llm.router",
    "Router": "locus_llm.router",
}
__all__ = [
    "ConfigError",
    "DataClass",
    "Decision",
    "DispatchError",
    "InvalidRequestError",
    "LocusConfig",
    "LocusError",
    "NoAllowedLocusError",
    "PolicyError",
    "RequestProfile",
    "Router",
    "RoutingContext",
    "load_config",
]

if TYPE_CHECKING:
    from locus_llm.config import LocusConfig, load_config
    from locus_llm.errors import (
        ConfigError,
        DispatchError,
        InvalidRequestError,
        LocusError,
        NoAllowedLocusError,
        PolicyError,
    )
    from locus_llm.profile import DataClass, RequestProfile, RoutingContext
    from locus_llm.router import Decision, Router


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'locus_llm' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)

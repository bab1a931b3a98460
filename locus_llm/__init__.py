"""locus: decide per LLM call where inference runs (device, on-prem, cloud), and run it there."""

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

__all__ = [
    "ConfigError", "DataClass", "Decision", "DispatchError", "InvalidRequestError", "LocusConfig",
    "LocusError", "NoAllowedLocusError", "PolicyError", "RequestProfile", "Router", "RoutingContext",
    "load_config",
]
__version__ = "0.1.0"

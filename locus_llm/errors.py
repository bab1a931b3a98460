"""The errors locus raises. Each says what went wrong and where, in one line a person can act on."""

from __future__ import annotations


class LocusError(Exception):
    """Base of every error raised by locus."""


class ConfigError(LocusError, ValueError):
    """A configuration file or value is invalid: names the file, the field and what was expected."""


class PolicyError(LocusError):
    """The policy bundle cannot be loaded or evaluated: nothing is sent anywhere."""


class AnalysisError(LocusError):
    """Request analysis failed (the router treats the request as RESTRICTED instead of raising)."""


class InvalidRequestError(LocusError, ValueError):
    """The caller's messages or parameters are malformed: nothing is sent."""


class NoAllowedLocusError(LocusError):
    """The policy allows no locus for this request: nothing is sent."""

    def __init__(self, message: str, denied: dict[str, list[str]] | None = None) -> None:
        super().__init__(message)
        self.denied = denied or {}


class DispatchError(LocusError):
    """Every locus in the plan failed. `attempts` lists what was tried; `last_error` is the original error."""

    def __init__(
        self,
        message: str,
        attempts: list[dict] | None = None,
        last_error: BaseException | None = None,
    ) -> None:
        super().__init__(message)
        self.attempts = attempts or []
        self.last_error = last_error


class ModelNotFound(LocusError, LookupError):
    """A local model is not prepared; the message names the command that prepares it."""

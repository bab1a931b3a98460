"""The embedded Rego policy: bundle loading, evaluation, hot reload, and a test runner."""

from locus_llm.policy.engine import PolicyDecision, PolicyEngine, load_bundle

__all__ = ["PolicyDecision", "PolicyEngine", "load_bundle"]

"""LlamaIndex integration of locus: `Locus`, an LLM routed per call."""

from llama_index.llms.locus.base import Locus

__all__ = ["Locus"]

"""LangChain integration of locus: `ChatLocus`, a chat model routed per call."""

from langchain_locus.chat_models import ChatLocus

__all__ = ["ChatLocus"]

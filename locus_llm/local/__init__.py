"""The device locus: local ONNX models (converted from GGUF or published in the common layout).

Importing this package is cheap: onnxruntime, tokenizers and LiteLLM load only when used.
"""

from locus_llm.local.base import ChatModel, ContextWindowExceeded, Delta

__all__ = ["ChatModel", "ContextWindowExceeded", "Delta"]

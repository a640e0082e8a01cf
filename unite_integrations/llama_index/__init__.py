"""LlamaIndex integration: ``UniTELLM``, the ensemble as a LlamaIndex ``FunctionCallingLLM``.

Needs ``llama-index-core`` (``pip install "unite-integrations[llama-index]"``).
"""

from .llm import UniTELLM

__all__ = ["UniTELLM"]

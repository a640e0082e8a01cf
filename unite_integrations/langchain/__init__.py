"""LangChain integration: ``UniTEChatModel``, an ensemble of open LLMs as one chat model.

Needs ``langchain-core`` (the ``langchain`` extra).
"""

from .chat_model import UniTEChatModel

__all__ = ["UniTEChatModel"]

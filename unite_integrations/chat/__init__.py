"""The framework-neutral chat core under every front end (no LangChain or LlamaIndex here).

Front ends (``UniTEChatModel``, ``UniTELLM``, the OpenAI-compatible server) translate their types
to a ``ChatRequest``, call a ``ChatCore`` and translate its ``ChatResult``/``ChatChunk``s back::

    core = ChatCore(engine, defaults=ChatDefaults(max_tokens=64))
    result = core.invoke(ChatRequest(messages=(Message("user", "Hi"),)))
    for chunk in core.stream(request): ...
    result = await core.ainvoke(request)
    choices = core.choices(replace(request, options=ChatOptions(n=3)))  # n answers
    async for chunk in await core.astream(request): ...
"""

from ..engine.tool_format import ToolCallStream, parse_calls, tool_choice, tool_names
from .core import ChatCore, PreparedCall, default_model_name
from .messages import decode_arguments, make_message, make_tool_call, render, role_of
from .options import (
    DEFAULT_MAX_TOKENS,
    MAX_CHOICES,
    ChatDefaults,
    choice_seed,
    engine_options,
    no_bool_for_int,
    stop_strings,
)
from .request_grammar import response_format
from .types import (
    ROLES,
    ChatChunk,
    ChatOptions,
    ChatRequest,
    ChatResult,
    ChatUsage,
    FinishReason,
    Message,
    ResponseFormat,
    Role,
    ToolCall,
    ToolCallChunk,
)

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "MAX_CHOICES",
    "ROLES",
    "ChatChunk",
    "ChatCore",
    "ChatDefaults",
    "ChatOptions",
    "ChatRequest",
    "ChatResult",
    "ChatUsage",
    "FinishReason",
    "Message",
    "PreparedCall",
    "ResponseFormat",
    "Role",
    "ToolCall",
    "ToolCallChunk",
    "ToolCallStream",
    "choice_seed",
    "decode_arguments",
    "default_model_name",
    "engine_options",
    "make_message",
    "make_tool_call",
    "no_bool_for_int",
    "parse_calls",
    "render",
    "response_format",
    "role_of",
    "stop_strings",
    "tool_choice",
    "tool_names",
]

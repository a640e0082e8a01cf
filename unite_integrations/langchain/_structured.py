"""``with_structured_output`` for ``UniTEChatModel``: a bound call plus LangChain's parsers.

The constrained decoding itself is the chat core's (a response format or a forced tool call);
this module only picks the binding and the parser for each of LangChain's methods.
"""

from __future__ import annotations

from operator import itemgetter
from typing import TYPE_CHECKING, Any, cast

from langchain_core.language_models import LanguageModelInput
from langchain_core.messages import AIMessage
from langchain_core.output_parsers import (
    JsonOutputKeyToolsParser,
    JsonOutputParser,
    PydanticOutputParser,
    PydanticToolsParser,
)
from langchain_core.runnables import Runnable, RunnableMap, RunnablePassthrough
from langchain_core.utils.function_calling import convert_to_json_schema, convert_to_openai_tool
from langchain_core.utils.pydantic import is_basemodel_subclass
from pydantic import BaseModel

if TYPE_CHECKING:
    from .chat_model import UniTEChatModel

__all__ = ["structured_output"]


def structured_output(
    llm: UniTEChatModel,
    schema: dict[str, Any] | type | None,
    method: str,
    include_raw: bool,
    strict: bool | None,
) -> Runnable[LanguageModelInput, dict[str, Any] | BaseModel]:
    """The runnable behind ``UniTEChatModel.with_structured_output``."""
    if schema is None and method != "json_mode":
        raise ValueError(f"with_structured_output(method={method!r}) needs a schema")
    pydantic_class = isinstance(schema, type) and is_basemodel_subclass(schema)
    ls_format = {"kwargs": {"method": method, "strict": strict}, "schema": schema}
    bound: Runnable[LanguageModelInput, AIMessage]
    parser: Runnable[Any, Any]
    if method == "function_calling":
        assert schema is not None
        name = convert_to_openai_tool(schema)["function"]["name"]
        bound = llm.bind_tools(
            [schema],
            tool_choice=name,
            parallel_tool_calls=False,
            ls_structured_output_format=ls_format,
        )
        parser = (
            PydanticToolsParser(tools=[cast(type, schema)], first_tool_only=True)
            if pydantic_class
            else JsonOutputKeyToolsParser(key_name=name, first_tool_only=True)
        )
    elif method in ("json_schema", "json_mode"):
        json_schema = convert_to_json_schema(schema) if schema is not None else None
        extra = {"ls_structured_output_format": ls_format} if schema is not None else {}
        bound = llm.bind(response_format=json_schema or {"type": "object"}, **extra)
        parser = (
            PydanticOutputParser(pydantic_object=cast(Any, schema))
            if pydantic_class
            else JsonOutputParser()
        )
    else:
        raise ValueError(
            f"unknown method {method!r}: use 'json_schema', 'function_calling' or 'json_mode'"
        )
    if not include_raw:
        return bound | parser
    parse = RunnablePassthrough.assign(
        parsed=itemgetter("raw") | parser, parsing_error=lambda _: None
    )
    none = RunnablePassthrough.assign(parsed=lambda _: None)
    return RunnableMap(raw=bound) | parse.with_fallbacks([none], exception_key="parsing_error")

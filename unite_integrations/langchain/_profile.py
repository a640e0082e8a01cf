"""What ``UniTEChatModel`` tells LangChain it can do (its ``ModelProfile``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

from langchain_core.language_models import ModelProfile

from ..engine.config import MemberSpec

__all__ = ["model_profile"]


def model_profile(members: Sequence[str | MemberSpec]) -> ModelProfile:
    """Text in and out, tool calling and structured output; the input window where every
    member's is given (otherwise it is learnt when the members load)."""
    profile = ModelProfile(
        open_weights=True,
        text_inputs=True,
        image_inputs=False,
        image_url_inputs=False,
        pdf_inputs=False,
        audio_inputs=False,
        video_inputs=False,
        image_tool_message=False,
        pdf_tool_message=False,
        text_outputs=True,
        image_outputs=False,
        audio_outputs=False,
        video_outputs=False,
        reasoning_output=False,
        tool_calling=True,
        tool_choice=True,
        tool_call_streaming=True,
        structured_output=True,
        temperature=True,
    )
    windows = [m.context_window if isinstance(m, MemberSpec) else None for m in members]
    if all(w is not None for w in windows):
        profile["max_input_tokens"] = min(cast(list[int], windows))
    return profile

"""The compatibility check as a LangChain tool and a LlamaIndex FunctionTool."""

from __future__ import annotations

import json

import pytest
from langchain_core.messages import ToolMessage
from langchain_tests.unit_tests import ToolsUnitTests
from pydantic import ValidationError

from unite_integrations.compat import CompatibilityReport
from unite_integrations.tools import (
    TOOL_NAME,
    CompatibilityCheckInput,
    UniTECompatibilityTool,
    compatibility_function_tool,
)


class TestUniTECompatibilityToolStandard(ToolsUnitTests):
    @property
    def tool_constructor(self) -> type[UniTECompatibilityTool]:
        return UniTECompatibilityTool

    @property
    def tool_constructor_params(self) -> dict:
        return {"max_items": 10, "allow_measured": False}

    @property
    def tool_invoke_params_example(self) -> dict:
        return {
            "members": ["smollm2-135m-instruct", "gemma-3-270m"],
            "scores": {"smollm2-135m-instruct": 0.31, "gemma-3-270m": 0.29},
        }


def test_schema_describes_every_argument():
    tool = UniTECompatibilityTool()
    schema = tool.get_input_schema().model_json_schema()
    assert set(schema["properties"]) == {"members", "scores", "task", "n_items"}
    assert schema["required"] == ["members"]
    for prop in schema["properties"].values():
        assert prop.get("description")
    task = schema["properties"]["task"]["anyOf"][0]
    assert {"multiple-choice", "short-answer", "math", "triviaqa"} <= set(task["enum"])
    assert tool.name == TOOL_NAME and "compatible" in tool.description
    # What a chat model sees when the tool is bound.
    from langchain_core.utils.function_calling import convert_to_openai_tool

    fn = convert_to_openai_tool(tool)["function"]
    assert fn["name"] == TOOL_NAME and fn["parameters"]["required"] == ["members"]


def _members(tiny_dirs) -> list[str]:
    return [str(tiny_dirs["bytelevel_bpe"]), str(tiny_dirs["sentencepiece_bpe"])]


def test_langchain_tool_quick_check_content_and_artifact(tiny_dirs, cache_dir):
    a, b = _members(tiny_dirs)
    tool = UniTECompatibilityTool(cache_dir=str(cache_dir), top_k=5)
    call = {
        "name": TOOL_NAME,
        "args": {"members": [a, b], "scores": {a: 0.8, b: 0.704}},
        "id": "call-1",
        "type": "tool_call",
    }
    msg = tool.invoke(call)
    assert isinstance(msg, ToolMessage) and msg.tool_call_id == "call-1"
    assert msg.content.startswith("verdict: risky")
    assert "12.0%" in msg.content and "recommendation: use" in msg.content
    report = CompatibilityReport.model_validate(msg.artifact)
    assert report.verdict == "risky" and report.mode == "quick"
    json.dumps(msg.artifact)  # a plain JSON-able dict
    # Plain args give the content alone.
    text = tool.invoke({"members": [a, b], "scores": {a: 0.8, b: 0.76}})
    assert text.startswith("verdict: compatible")


def test_langchain_tool_measured_is_capped_and_can_be_disabled(tiny_dirs, cache_dir):
    a, b = _members(tiny_dirs)
    tool = UniTECompatibilityTool(cache_dir=str(cache_dir), top_k=5, max_items=3)
    msg = tool.invoke(
        {
            "name": TOOL_NAME,
            "args": {"members": [a, b], "task": "multiple-choice", "n_items": 50},
            "id": "c",
            "type": "tool_call",
        }
    )
    assert msg.artifact["n_items"] == 3 and msg.artifact["mode"] == "measured"
    quick_only = UniTECompatibilityTool(cache_dir=str(cache_dir), allow_measured=False)
    out = quick_only.invoke({"members": [a, b], "task": "math"})
    assert "quick checks only" in out  # a ToolException, returned as the tool's output
    bad = UniTECompatibilityTool(cache_dir=str(cache_dir)).invoke({"members": ["./no-such"]})
    assert "no-such" in bad


def test_langchain_tool_rejects_bad_arguments():
    with pytest.raises(Exception, match="members"):
        UniTECompatibilityTool().invoke({"members": []})
    with pytest.raises(Exception, match="task"):
        UniTECompatibilityTool().invoke({"members": ["x"], "task": "squad"})
    with pytest.raises(ValidationError):
        CompatibilityCheckInput(members=["x"], n_items=0)


def test_llamaindex_function_tool(tiny_dirs, cache_dir):
    a, b = _members(tiny_dirs)
    tool = compatibility_function_tool(cache_dir=str(cache_dir), top_k=5)
    meta = tool.metadata
    assert meta.name == TOOL_NAME and "UniTE" in meta.description
    params = meta.get_parameters_dict()
    assert params["required"] == ["members"]
    assert set(params["properties"]) == {"members", "scores", "task", "n_items"}
    assert meta.to_openai_tool()["function"]["name"] == TOOL_NAME
    out = tool.call(members=[a, b], scores={a: 0.5, b: 0.3})
    assert isinstance(out.raw_output, CompatibilityReport)
    assert out.raw_output.verdict == "incompatible"
    assert out.content.startswith("verdict: incompatible") and "40.0%" in out.content
    assert out.tool_name == TOOL_NAME


def test_public_imports():
    import unite_integrations
    from unite_integrations.langchain.tools import UniTECompatibilityTool as next_to_langchain
    from unite_integrations.llama_index.tools import compatibility_function_tool as next_to_li

    # The framework tools live with their adapters; the old import path still names them.
    assert next_to_langchain is UniTECompatibilityTool
    assert next_to_li is compatibility_function_tool
    from unite_integrations.compat import check_compatibility

    assert unite_integrations.check_compatibility is check_compatibility

"""The prompt a tool conversation renders to, on the tiny gemma3 / qwen3_vl / qwen3 models with their real
chat templates (snapshot files in tests/support/snapshots), and the forced opener in place."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlx_server.adapters.mlx.engine import MlxEngine
from mlx_server.domain.conversation import (
    ChatRequest,
    Message,
    Role,
    TextPart,
    ToolCall,
    ToolChoice,
    ToolChoiceMode,
    ToolSpec,
)
from mlx_server.domain.families import GEMMA3, QWEN3, QWEN3_VL
from mlx_server.domain.models import ModelRef
from mlx_server.domain.ports import PromptInput
from mlx_server.domain.tool_plan import plan_tools

pytestmark = pytest.mark.slow
SNAPSHOTS = Path(__file__).parents[1] / "support" / "snapshots"
WEATHER = ToolSpec("get_weather", "Get the current weather for a city", {
    "type": "object", "properties": {"city": {"type": "string", "description": "City name"},
                                     "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
    "required": ["city"]})
LOOP = (Message(Role.SYSTEM, (TextPart("You are a helpful assistant."),)),
        Message(Role.USER, (TextPart("What is the weather in Paris?"),)),
        Message(Role.ASSISTANT, tool_calls=(ToolCall("call_1", "get_weather",
                                                     '{"city": "Paris", "unit": "celsius"}'),)),
        Message(Role.TOOL, (TextPart('{"temperature": 21, "condition": "sunny"}'),),
                tool_call_id="call_1"))


AUTO = ToolChoice()


def rendered(path: Path, family: str, choice: ToolChoice = AUTO) -> str:
    model = ModelRef(path.name, str(path), family, 4096, vision=family != QWEN3.name)
    engine = MlxEngine()
    engine.load(model)
    plan = plan_tools(ChatRequest("m", LOOP, tools=(WEATHER,), tool_choice=choice), model)
    prompt = engine.prepare(PromptInput(plan.messages, plan.template_tools, (), plan.prefix))
    # the model's own tokenizer, to read the prompt back (a text model's processor is one)
    tokenizer = getattr(engine._processor, "tokenizer", engine._processor)
    return str(tokenizer.decode(prompt.payload["input_ids"][0].tolist()))  # type: ignore[index]


@pytest.mark.parametrize("family", [GEMMA3.name, QWEN3_VL.name, QWEN3.name])
def test_tool_loop_prompt_matches_the_snapshot(family: str, request: pytest.FixtureRequest) -> None:
    path = request.getfixturevalue(f"tiny_{family}")
    expected = (SNAPSHOTS / f"{family}_tool_loop.txt").read_text(encoding="utf-8")
    assert rendered(path, family) == expected


@pytest.mark.parametrize(("family", "opener"), [
    # a family with a call grammar forces only the opener: the grammar writes the named call
    # (domain/tool_plan.py; without a grammar the call's start is forced too, as before)
    (GEMMA3.name, "<start_of_turn>model\n```tool_code\n"),
    (QWEN3_VL.name, "<|im_start|>assistant\n<tool_call>\n"),
    # a forced call is the answer, not the reasoning: the empty think block is closed first
    (QWEN3.name, "<|im_start|>assistant\n<think>\n\n</think>\n\n<tool_call>\n"),
])
def test_a_named_tool_choice_forces_the_opener_into_the_prompt(
        family: str, opener: str, request: pytest.FixtureRequest) -> None:
    path = request.getfixturevalue(f"tiny_{family}")
    named = ToolChoice(ToolChoiceMode.FUNCTION, "get_weather")
    assert rendered(path, family, named).endswith(opener)

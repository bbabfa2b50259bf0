"""The OpenAI Agents SDK (openai-agents, Responses model by default) runs an agent turn against a bot,
pointed at it by base URL, plain and streamed, and a second turn continues by previous_response_id."""

from __future__ import annotations

import asyncio

from agents import Agent, OpenAIResponsesModel, RunConfig, Runner, set_tracing_disabled
from openai import AsyncOpenAI

from tests.support.fake_openai import FakeOpenAI
from tests.support.servers import ThreadedServer


def test_an_agent_turn_against_a_bot(bot: ThreadedServer, upstream: FakeOpenAI) -> None:
    set_tracing_disabled(True)  # no trace export to OpenAI's platform

    async def run() -> tuple[str, str, str]:
        client = AsyncOpenAI(base_url=bot.url + "/v1", api_key="unused", max_retries=0)
        model = OpenAIResponsesModel(model="gpt-4o-mini", openai_client=client)
        agent = Agent(name="helper", instructions="Answer briefly.", model=model)
        config = RunConfig(tracing_disabled=True)
        first = await Runner.run(agent, "My name is Ada.", run_config=config)
        second = await Runner.run(
            agent, "What is my name?", previous_response_id=first.last_response_id, run_config=config
        )
        streamed = Runner.run_streamed(agent, "Stream it", run_config=config)
        async for _ in streamed.stream_events():
            pass
        await client.close()
        return str(first.final_output), str(second.final_output), str(streamed.final_output)

    first, second, streamed = asyncio.run(run())
    # the bot's prompt, the agent's instructions, the input
    assert first == "3 messages; last: My name is Ada."
    assert second == "5 messages; last: What is my name?"
    contents = [m["content"] for m in upstream.requests[1].body["messages"]]
    assert contents == [
        "You are a test bot.",
        "Answer briefly.",
        "My name is Ada.",
        first,
        "What is my name?",
    ]
    assert streamed == "3 messages; last: Stream it"
    assert upstream.requests[-1].body["stream"] is True

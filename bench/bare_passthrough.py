"""The reference "bare pass-through" of docs/performance notes: FastAPI + uvicorn + ``openai.AsyncOpenAI``
forwarding ``POST /v1/chat/completions`` and nothing else (no system prompt, no token counting, no
trimming, no sessions, no error mapping). What the chat service costs is measured side by side with it.

    python bench/bare_passthrough.py --port 8091 --base-url http://127.0.0.1:8090/v1

The upstream's body is relayed as it came (``with_raw_response`` / ``with_streaming_response``), the
cheapest way the openai client offers: no pydantic response objects are built.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import AsyncIterator
from typing import Any

import openai
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse


def create_app(base_url: str, api_key: str = "bench") -> FastAPI:
    client = openai.AsyncOpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=60.0)
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def completions(request: Request) -> Response:
        body: dict[str, Any] = json.loads(await request.body())
        if not body.get("stream"):
            raw = await client.chat.completions.with_raw_response.create(**body)
            return Response(raw.http_response.content, media_type="application/json")
        manager = client.chat.completions.with_streaming_response.create(**body)
        streamed = await manager.__aenter__()

        async def relay() -> AsyncIterator[bytes]:
            try:
                async for chunk in streamed.http_response.aiter_bytes():
                    yield chunk
            finally:
                await manager.__aexit__(None, None, None)

        return StreamingResponse(relay(), media_type="text/event-stream")

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8091)
    parser.add_argument("--base-url", required=True, help="the upstream's OpenAI base URL (…/v1)")
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args()
    uvicorn.run(create_app(args.base_url), host=args.host, port=args.port, log_level=args.log_level)


if __name__ == "__main__":
    main()

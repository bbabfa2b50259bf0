"""``kubechat``: serve a bot over HTTP, or chat with it in the terminal.

Heavy imports (FastAPI, httpx2, tiktoken) happen inside the subcommands, so ``--help`` and
argument errors answer at once.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from typing import TextIO


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kubechat", description="A chat bot that keeps its context.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve the bot's HTTP API")
    serve.add_argument("--host", default=os.environ.get("KUBECHAT_HOST", "127.0.0.1"))
    serve.add_argument("--port", type=int, default=int(os.environ.get("KUBECHAT_PORT", "8080")))
    serve.add_argument(
        "--log-level",
        default=os.environ.get("KUBECHAT_LOG_LEVEL", "info"),
        choices=["critical", "error", "warning", "info", "debug"],
    )
    commands.add_parser("chat", help="chat with the bot in this terminal (settings from the environment)")
    seed = commands.add_parser(
        "seed-encodings", help="put tiktoken encoding files where tiktoken finds them offline"
    )
    seed.add_argument("--from", dest="source", required=True, help="folder with <name>.tiktoken files")
    seed.add_argument(
        "--to", dest="target", default=os.environ.get("TIKTOKEN_CACHE_DIR"), help="TIKTOKEN_CACHE_DIR"
    )
    args = parser.parse_args(argv)
    if args.command == "serve":
        return _serve(args.host, args.port, args.log_level)
    if args.command == "seed-encodings":
        return _seed(args.source, args.target)
    return asyncio.run(chat_loop(sys.stdin, sys.stdout))


def _serve(host: str, port: int, log_level: str) -> int:
    import uvicorn

    from chatbot_service.app import create_app
    from chatbot_service.logs import configure
    from chatbot_service.settings import SettingsError

    configure(log_level)
    try:
        app = create_app()
    except SettingsError as exc:  # what the process itself is told at start (KUBECHAT_METRICS, ...)
        print(f"kubechat: cannot start: {exc}", file=sys.stderr)
        return 2
    # No WebSocket routes: ws="none" keeps uvicorn from importing a WebSocket library for nothing.
    uvicorn.run(app, host=host, port=port, log_level=log_level, log_config=None, ws="none")
    return 0


def _seed(source: str, target: str | None) -> int:
    from pathlib import Path

    from chatbot_service.encodings import seed

    if not target:
        print("kubechat: --to is required when TIKTOKEN_CACHE_DIR is not set", file=sys.stderr)
        return 2
    try:
        for path in seed(Path(source), Path(target)):
            print(path)
    except OSError as exc:
        print(f"kubechat: {exc}", file=sys.stderr)
        return 1
    return 0


async def chat_loop(stdin: TextIO, stdout: TextIO) -> int:
    """The terminal bot: a ``You: `` prompt, the answer, the running token total, trim notices."""
    from chatbot_service.errors import ChatError
    from chatbot_service.holder import SettingsHolder
    from chatbot_service.memory import memory_limit, store_budget
    from chatbot_service.service import ChatService
    from chatbot_service.sessions import Stores
    from chatbot_service.sources import read_local
    from chatbot_service.upstream import Upstream

    holder = SettingsHolder(lambda: read_local(os.environ))
    holder.reload()
    settings = holder.current
    if settings is None or settings.missing():
        problems = holder.problems or ["no OpenAI API key: set OPENAI_API_KEY"]
        print("kubechat: cannot start: " + "; ".join(problems), file=sys.stderr)
        return 2
    stores = Stores(store_budget(memory_limit(os.environ)))
    upstream = Upstream()
    service = ChatService(holder, stores, upstream)
    session_id: str | None = None
    total = 0
    stdout.write(
        f"kubechat: chatting with {settings.model}. Empty line or Ctrl-D quits, /reset starts over.\n"
    )
    try:
        while True:
            stdout.write("You: ")
            stdout.flush()
            line = await asyncio.to_thread(stdin.readline)
            text = line.rstrip("\n")
            if not text.strip():
                break
            if text.strip() == "/reset":
                session_id, total = None, 0
                stdout.write("(new conversation)\n")
                continue
            try:
                result = await service.turn(session_id, text)
            except ChatError as exc:
                stdout.write(f"error: {exc.message}\n")
                continue
            session_id = result.session_id
            total += result.usage.get("total_tokens", 0)
            stdout.write(f"Bot: {result.reply}\n")
            notice = (
                f" (history trimmed: {result.usage['dropped_messages']} older messages left out)"
                if result.truncated
                else ""
            )
            stdout.write(
                f"[tokens: {result.usage.get('total_tokens', 0)} this turn, {total} in total]{notice}\n"
            )
    finally:
        await upstream.aclose()
    stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""What rendering replies as Markdown costs the chat page while they stream, side by side in one run.

    .venv/bin/python bench/page_render.py [--rounds 3] [--sizes 50,300]

One headless Chromium (Debian's, driven by Playwright), one real ``kubechat serve`` and the fake OpenAI
upstream (tests/support), replies streamed as fast as the service relays them. Three versions of the page's
``messages.js`` (where a reply is rendered), served in turn to the same page (interleaved,
``--rounds`` times):

- ``page``: as shipped (Markdown re-rendered at most once per frame, each render waiting 3x its cost),
- ``every-delta``: the same page rendering the whole reply on every delta (the naive way; the anchor),
- ``text``: the same page showing the reply as plain text (no Markdown: the floor).

Per run: seconds from Enter to the finished reply, the longest gap between two animation frames (the
longest the page was frozen), the number of renders, and the main thread's long tasks (> 50 ms) summed.
Replies are Markdown (headings, bold, code, links, lists) of ``--sizes`` kB; up to 50 kB they come in
deltas of ~50 characters, larger ones in ~1 kB deltas (the fake upstream cuts at spaces).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.browser import Tab, chromium, page_bot  # noqa: E402

MESSAGES_JS = (REPO / "chatbot_service" / "static" / "messages.js").read_text()


def variants() -> dict[str, str]:
    every = re.sub(
        r"function scheduleRender\(msg\) \{.*?\n\}\n",
        "function scheduleRender(msg) {\n  window.__renders++; renderReply(msg);\n}\n",
        MESSAGES_JS,
        count=1,
        flags=re.S,
    )
    shipped = MESSAGES_JS.replace(
        "function renderReply(msg) {", "function renderReply(msg) {\n  window.__renders++;", 1
    )
    text = shipped.replace("if (!markdownAvailable()) {", "if (true) {", 1)
    changed = every != MESSAGES_JS and shipped != MESSAGES_JS and text != shipped
    assert changed, "messages.js changed shape: update the bench"
    return {"page": shipped, "every-delta": every, "text": text}


def reply_of(kilobytes: int) -> str:
    word = "lorem-ipsum-dolor-sit-amet-consectetur-adipiscing" if kilobytes <= 50 else "lorem," * 150
    section = (
        "## Part {i}\n\n**bold** `code` [a link](https://example.org/{i}) "
        + " ".join([word] * 20)
        + "\n\n- item\n"
    )
    out = ""
    i = 0
    while len(out) < kilobytes * 1000:
        out += section.format(i=i) + " "
        i += 1
    return out


MEASURE = """() => {
    window.__renders = 0;
    window.__gaps = [];
    window.__long = 0;
    let last = performance.now();
    const tick = (now) => {
        window.__gaps.push(now - last);
        last = now;
        if (!window.__stop) requestAnimationFrame(tick);
    };
    window.__stop = false;
    requestAnimationFrame(tick);
    new PerformanceObserver((list) => { for (const e of list.getEntries()) window.__long += e.duration; })
        .observe({ type: "longtask" });
}"""


def run(tab: Tab, url: str, source: str, reply: str, fake: Any) -> dict[str, float]:
    page = tab.page
    page.unroute("**/static/messages.js")
    page.route(
        "**/static/messages.js",
        lambda route: route.fulfill(status=200, content_type="text/javascript; charset=utf-8", body=source),
    )
    page.goto(url + "/")
    page.locator("#dot.ready").wait_for()
    fake.reply = reply
    page.evaluate(MEASURE)
    started = time.monotonic()
    tab.send("go")
    page.locator(".msg.bot .actions .meta").wait_for(timeout=600_000)
    seconds = time.monotonic() - started
    page.evaluate("() => { window.__stop = true; }")
    gaps: list[float] = page.evaluate("() => window.__gaps")
    renders: int = page.evaluate("() => window.__renders")
    long_ms: float = page.evaluate("() => window.__long")
    shown = len(page.locator(".msg.bot .bubble").text_content() or "")
    assert shown > len(reply) * 0.5, "the reply was not shown"
    return {"seconds": seconds, "max_frame_gap_ms": max(gaps), "renders": renders, "long_tasks_ms": long_ms}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sizes", default="50,300", help="reply sizes in kB, comma-separated")
    args = parser.parse_args()
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", tempfile.mkdtemp(prefix="kubechat-bench-tiktoken-"))
    shared = REPO.parent / "shared" / "tiktoken"
    if shared.is_dir():
        from chatbot_service.encodings import seed

        seed(shared, Path(os.environ["TIKTOKEN_CACHE_DIR"]))
    sources = variants()
    sizes = [int(s) for s in args.sizes.split(",")]
    results: dict[tuple[int, str], list[dict[str, float]]] = {}
    with page_bot(max_reply_tokens="100000", request_timeout="600") as (fake, bot), chromium() as browser:
        warm = Tab(browser, bot.url, viewport={"width": 1280, "height": 800})
        try:  # the bot's and the browser's first turn costs more (imports, JIT): not in any figure
            run(warm, bot.url, sources["page"], reply_of(sizes[0]), fake)
        finally:
            warm.close()
        for size in sizes:
            reply = reply_of(size)
            for round_ in range(args.rounds):
                for name, source in sources.items():
                    tab = Tab(browser, bot.url, viewport={"width": 1280, "height": 800})
                    try:
                        results.setdefault((size, name), []).append(run(tab, bot.url, source, reply, fake))
                    finally:
                        tab.close()
                print(f"{size} kB: round {round_ + 1}/{args.rounds} done", file=sys.stderr)
    print(
        f"{'reply':>8} {'version':<12} {'seconds':>8} {'max frame gap ms':>17} {'renders':>8} "
        f"{'long tasks ms':>14}"
    )
    for (size, name), runs in results.items():
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        print(
            f"{size:>6}kB {name:<12} {med['seconds']:>8.2f} {med['max_frame_gap_ms']:>17.0f} "
            f"{med['renders']:>8.0f} {med['long_tasks_ms']:>14.0f}"
        )
    print("\nratios (medians), page / every-delta and page / text:")
    for size in sizes:
        page, every, text = (
            {k: statistics.median(r[k] for r in results[(size, n)]) for k in results[(size, n)][0]}
            for n in ("page", "every-delta", "text")
        )
        print(
            f"{size:>6}kB  time {page['seconds'] / every['seconds']:.2f}x"
            f" / {page['seconds'] / text['seconds']:.2f}x"
            f"   max frame gap {page['max_frame_gap_ms'] / every['max_frame_gap_ms']:.2f}x"
            f" / {page['max_frame_gap_ms'] / text['max_frame_gap_ms']:.2f}x"
            f"   long tasks {page['long_tasks_ms'] / max(every['long_tasks_ms'], 1):.2f}x"
        )


if __name__ == "__main__":
    main()

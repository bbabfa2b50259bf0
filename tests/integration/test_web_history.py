"""Conversations on the chat page, in a real browser against a real ``kubechat serve``: stopping a reply (and
the contract that a stopped turn is not kept), the history panel across reloads and tabs, resuming from the
session store, deleting, and a session the bot no longer has."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import httpx2

from tests.support.browser import Tab, page_bot
from tests.support.fake_openai import FakeOpenAI, Fault

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

LONG_REPLY = " ".join(f"word{i}" for i in range(80))


def remembered(page: Page) -> list[dict[str, Any]]:
    """The page's list of conversations, as it keeps it in localStorage."""
    slot = "Object.keys(localStorage).find((k) => k.startsWith('kubechat.conversations:'))"
    raw = page.evaluate(f"() => localStorage.getItem({slot})")
    entries: list[dict[str, Any]] = json.loads(raw or "[]")
    return entries


def session_of(page: Page, title: str) -> str:
    return next(str(e["id"]) for e in remembered(page) if e["title"] == title)


def stream_slowly(fake: FakeOpenAI) -> None:
    """The next reply comes word by word, slowly enough to be stopped midway."""
    fake.reply = LONG_REPLY
    fake.fail_next(Fault(chunk_delay=0.1))


def test_stop_mid_stream_keeps_nothing_of_the_turn(tab: Tab, fake: FakeOpenAI, bot_url: str) -> None:
    from playwright.sync_api import expect

    page = tab.page
    page.goto(bot_url + "/")
    tab.send("one")
    expect(tab.last_reply()).to_have_text("2 messages; last: one")

    stream_slowly(fake)
    tab.send("tell me a long story")
    expect(tab.last_reply()).to_contain_text("word2")
    stop = page.get_by_role("button", name="Stop", exact=True)
    expect(stop).to_be_visible()
    stop.click()

    stopped = page.locator(".msg.bot").last
    expect(stopped).to_have_class("msg bot incomplete")
    expect(stopped.locator(".meta")).to_have_text("Stopped · not saved")
    expect(page.locator(".notice").last).to_contain_text("were not saved: the bot will not see them")
    expect(page.locator("#send")).to_be_enabled()
    expect(stop).to_be_hidden()
    shown = stopped.locator(".bubble").text_content() or ""
    assert shown.startswith("word0 word1 word2") and "word79" not in shown
    # What was shown stays copyable.
    expect(stopped.get_by_role("button", name="Copy", exact=True)).to_be_visible()

    # The contract, seen from both sides: the next turn's context lacks the stopped message and its partial
    # reply, and the bot's record of the session holds only whole turns.
    fake.reply = None
    tab.send("three")
    expect(tab.last_reply()).to_have_text("4 messages; last: three")
    sent = [m["content"] for m in fake.last.body["messages"]]
    assert sent == ["You are a test bot.", "one", "2 messages; last: one", "three"]
    record = httpx2.get(f"{bot_url}/sessions/{session_of(page, 'one')}").json()
    assert [m["content"] for m in record["messages"]] == [
        "one",
        "2 messages; last: one",
        "three",
        "4 messages; last: three",
    ]


def test_escape_stops_a_first_turn_and_no_conversation_is_left_behind(
    tab: Tab, fake: FakeOpenAI, bot_url: str
) -> None:
    from playwright.sync_api import expect

    page = tab.page
    page.goto(bot_url + "/")
    stream_slowly(fake)
    tab.send("first words")
    expect(tab.last_reply()).to_contain_text("word1")
    expect(page.locator("#input")).to_be_focused()
    page.keyboard.press("Escape")
    expect(page.locator(".msg.bot .meta")).to_have_text("Stopped · not saved")
    expect(page.locator("#input")).to_be_focused()
    # A first turn that never finished created no session: nothing to list, and the next message starts one.
    conversations = page.get_by_role("navigation", name="Conversations")
    expect(conversations.get_by_role("listitem")).to_have_count(0)
    fake.reply = None
    tab.send("again")
    expect(tab.last_reply()).to_have_text("2 messages; last: again")
    expect(conversations.get_by_role("listitem")).to_have_text(["again"])
    assert page.locator(".error").count() == 0


def test_history_after_reload_resume_and_delete(tab: Tab, bot_url: str) -> None:
    from playwright.sync_api import expect

    page = tab.page
    page.goto(bot_url + "/")
    conversations = page.get_by_role("navigation", name="Conversations")
    entries = conversations.get_by_role("listitem")
    expect(page.get_by_text("will be listed here")).to_be_visible()
    tab.send("first conversation")
    expect(tab.last_reply()).to_have_text("2 messages; last: first conversation")
    page.get_by_role("button", name="New conversation").click()
    tab.send("second one\nwith a second line that the title leaves on one line")
    expect(tab.last_reply()).to_contain_text("2 messages; last: second one")
    title = "second one with a second line that the title leaves on one line"
    expect(entries).to_have_text([title, "first conversation"])  # newest first, from the first message
    tokens = tab.tokens_shown()

    # A reload keeps the list and reopens the tab's conversation from the bot's session store.
    page.reload()
    expect(entries).to_have_text([title, "first conversation"])
    expect(page.locator(".msg.user .bubble")).to_have_text([title.replace("one with", "one\nwith")])
    expect(tab.last_reply()).to_contain_text("2 messages; last: second one")
    expect(conversations.get_by_role("button", name=title)).to_have_attribute("aria-current", "true")
    assert tab.tokens_shown() == tokens

    # Resume the other one by keyboard; the bot still has its context.
    first = conversations.get_by_role("button", name="first conversation")
    first.focus()
    page.keyboard.press("Enter")
    expect(page.locator(".msg.user .bubble")).to_have_text(["first conversation"])
    expect(first).to_have_attribute("aria-current", "true")
    expect(page.locator("#input")).to_be_focused()
    tab.send("continue")
    expect(tab.last_reply()).to_have_text("4 messages; last: continue")
    expect(entries).to_have_text(["first conversation", title])  # the one just used comes first

    # Another tab of this browser sees the same list and opens nothing by itself.
    other = tab.context.new_page()
    other.goto(bot_url + "/")
    expect(other.get_by_role("navigation", name="Conversations").get_by_role("listitem")).to_have_count(2)
    expect(other.locator("#empty")).to_be_visible()

    # Delete by keyboard: Tab from the entry reaches its Delete button; the bot forgets the session.
    second_id = session_of(page, title)
    conversations.get_by_role("button", name=title).focus()
    page.keyboard.press("Tab")
    delete = entries.filter(has_text=title).get_by_role("button", name="Delete", exact=True)
    expect(delete).to_be_focused()
    with page.expect_response(lambda r: r.request.method == "DELETE") as deleted:
        page.keyboard.press("Enter")
    assert deleted.value.status == 204
    expect(entries).to_have_text(["first conversation"])
    assert httpx2.get(f"{bot_url}/sessions/{second_id}").status_code == 404
    expect(page.locator(".msg.user .bubble")).to_have_text(["first conversation", "continue"])  # not this one

    # Deleting the open conversation clears the view too.
    first_id = session_of(page, "first conversation")
    entries.get_by_role("button", name="Delete", exact=True).click()
    expect(entries).to_have_count(0)
    expect(page.locator("#log .msg")).to_have_count(0)
    expect(page.locator("#new-chat")).to_be_focused()
    assert httpx2.get(f"{bot_url}/sessions/{first_id}").status_code == 404
    other.reload()
    expect(other.get_by_role("navigation", name="Conversations").get_by_role("listitem")).to_have_count(0)
    assert tab.problems() == [], tab.console


def test_an_expired_session_says_so(browser: Browser) -> None:
    from playwright.sync_api import expect

    with page_bot(session_idle_ttl="1") as (_, bot):
        tab = Tab(browser, bot.url, viewport={"width": 1280, "height": 800})
        try:
            page = tab.page
            page.goto(bot.url + "/")
            entries = page.get_by_role("navigation", name="Conversations").get_by_role("listitem")
            tab.send("remember me")
            expect(tab.last_reply()).to_have_text("2 messages; last: remember me")
            page.wait_for_timeout(1500)  # longer than the bot keeps an idle session

            # Reopened after a reload: the bot no longer has it, and the page says so.
            page.reload()
            error = page.locator(".error")
            expect(error).to_contain_text("This conversation has expired.")
            expect(entries.filter(has_text="remember me")).to_contain_text("expired")
            expect(page.locator("#log .msg")).to_have_count(0)
            tab.send("hello again")
            expect(tab.last_reply()).to_have_text("2 messages; last: hello again")
            expect(entries).to_have_count(2)

            # It expires while open: the next message says so, comes back to resend, and then starts anew.
            page.wait_for_timeout(1500)
            tab.send("still there?")
            expect(page.locator(".error").last).to_contain_text("This conversation is gone.")
            expect(page.locator("#input")).to_have_value("still there?")
            page.locator("#input").press("Enter")
            expect(tab.last_reply()).to_have_text("2 messages; last: still there?")

            # An expired entry can still be deleted (the bot answers 404: it goes from the list all the same).
            with page.expect_response(lambda r: r.request.method == "DELETE") as deleted:
                entries.filter(has_text="remember me").get_by_role(
                    "button", name="Delete", exact=True
                ).click()
            assert deleted.value.status == 404
            expect(entries.filter(has_text="remember me")).to_have_count(0)
            assert tab.problems() == [], tab.console
        finally:
            tab.close()

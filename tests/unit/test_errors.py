"""API failures are sorted by the Status the API server sends (reason, causes), never by its wording."""

from __future__ import annotations

import json

from kubechat_operator.errors import (
    ApiStatus,
    ChildrenRefused,
    NamespaceTerminating,
    TransientApiError,
    classify,
)


def status(code: int, reason: str, message: str = "whatever the server says", *causes: str) -> str:
    details = {"causes": [{"reason": c, "message": "m", "field": "f"} for c in causes]}
    return json.dumps(
        {"kind": "Status", "status": "Failure", "code": code, "reason": reason, "message": message}
        | ({"details": details} if causes else {})
    )


def test_an_invalid_child_is_refused_for_good_whatever_the_message() -> None:
    for code, reason in ((422, "Invalid"), (400, "BadRequest"), (413, "RequestEntityTooLarge")):
        failure = classify(ApiStatus.parse(code, status(code, reason, "failed", "FieldValueInvalid")))
        assert isinstance(failure, ChildrenRefused), reason
        assert "failed" in str(failure)


def test_a_terminating_namespace_is_told_by_its_cause_not_its_message() -> None:
    body = status(403, "Forbidden", "unable to create new content", "NamespaceTerminating")
    assert isinstance(classify(ApiStatus.parse(403, body)), NamespaceTerminating)
    # the same words without the cause: an RBAC refusal, worth retrying once someone grants the rights
    plain = status(403, "Forbidden", "namespace is being terminated")
    assert isinstance(classify(ApiStatus.parse(403, plain)), TransientApiError)


def test_conflicts_busy_servers_and_foreign_bodies_are_retried() -> None:
    for code, reason in (
        (409, "Conflict"),
        (500, "InternalError"),
        (429, "TooManyRequests"),
        (504, "Timeout"),
    ):
        assert isinstance(classify(ApiStatus.parse(code, status(code, reason))), TransientApiError), reason
    html = ApiStatus.parse(502, b"<html>bad gateway</html>", "Bad Gateway")
    assert (html.code, html.reason, html.message) == (502, "", "Bad Gateway")
    assert isinstance(classify(html), TransientApiError)


def test_messages_are_bounded() -> None:
    parsed = ApiStatus.parse(422, status(422, "Invalid", "x" * 10_000))
    assert len(parsed.message) == 500

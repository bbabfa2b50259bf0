"""Reading a client's JSON and describing what is wrong with it the way OpenAI does. Pure: no I/O.

``json.loads`` alone lets through what later fails as a 500: ``NaN``/``Infinity``/``1e999`` (which no
JSON encoder will send on), strings with lone UTF-16 surrogates (``"\\ud800"``: not Unicode text, no
UTF-8 encoder takes them), and nesting deep enough to exhaust the stack. ``parse_json`` refuses each
with a ``JSONDecodeError`` naming it, so the framework answers 400 ``malformed_json``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from chatbot_service.errors import BadRequest

_ESCAPED_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]")


def _finite(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"{text[:40]} is out of range for a number")
    return number


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


def parse_json(body: bytes) -> Any:
    """Parse a request body; every refusal is a ``JSONDecodeError`` whose ``msg`` says what is wrong."""
    try:
        value = json.loads(body, parse_float=_finite, parse_constant=_no_constant)
    except RecursionError:
        raise json.JSONDecodeError("nested too deeply", "", 0) from None
    except UnicodeDecodeError:
        raise json.JSONDecodeError("not UTF-8 text", "", 0) from None
    except json.JSONDecodeError:
        raise
    except ValueError as exc:  # from the hooks above: the scanner does not wrap them
        raise json.JSONDecodeError(str(exc), "", 0) from None
    if _ESCAPED_SURROGATE.search(body) and _has_lone_surrogate(value):
        raise json.JSONDecodeError("a string holds a lone UTF-16 surrogate, which is not Unicode text", "", 0)
    return value


def _has_lone_surrogate(value: Any) -> bool:
    """Walk without recursion (the value may be as deep as the parser allowed)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


# -- pydantic's errors, said as OpenAI says them ----------------------------------------------

_TYPE_NAMES = {
    "string_type": "a string",
    "int_type": "an integer",
    "int_from_float": "an integer",
    "float_type": "a decimal",
    "bool_type": "a boolean",
    "dict_type": "an object",
    "model_type": "an object",
    "model_attributes_type": "an object",
    "list_type": "an array",
}
_COMPARISONS = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}
_UNION_TAGS = frozenset({"str", "int", "float", "bool", "dict", "list", "none"})


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a decimal number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    if value is None:
        return "null"
    return "something else"


def param_name(loc: Sequence[int | str]) -> str | None:
    """``("body", "messages", 0, "content", "str")`` -> ``messages[0].content``: pydantic's location
    without the ``body`` root and the union-member tags it inserts."""
    out = ""
    for part in loc[1:] if loc and loc[0] == "body" else loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part not in _UNION_TAGS and "[" not in part and not part[:1].isupper():
            out += f".{part}" if out else part
    return out or None


def _describe(problem: Mapping[str, Any], param: str | None) -> tuple[str, str]:
    kind = str(problem.get("type", ""))
    ctx = problem.get("ctx") or {}
    given = problem.get("input")
    name = param or "body"
    if kind == "missing":
        return f"Missing required parameter: '{name}'.", "missing_required_parameter"
    if kind == "extra_forbidden":
        return f"Unrecognized request argument supplied: {name}", "unknown_parameter"
    if kind in _TYPE_NAMES:
        if param is None:
            return "The request body must be a JSON object.", "invalid_type"
        expected, got = _TYPE_NAMES[kind], _json_type(given)
        return f"Invalid type for '{name}': expected {expected}, but got {got} instead.", "invalid_type"
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        number = "integer" if isinstance(given, int) else "decimal"
        low = kind.startswith("greater")
        bound = ctx.get("ge", ctx.get("gt", ctx.get("le", ctx.get("lt"))))
        op = _COMPARISONS[kind]
        where = "below minimum" if low else "above maximum"
        code = f"{number}_{'below_min' if low else 'above_max'}_value"
        return (
            f"Invalid '{name}': {number} {where} value. "
            f"Expected a value {op} {bound}, but got {given} instead.",
            code,
        )
    if kind == "literal_error":
        supported = ctx.get("expected")
        return f"Invalid value: {str(given)[:80]!r}. Supported values are: {supported}.", "invalid_value"
    if kind in ("too_short", "too_long"):
        if kind == "too_short":
            return f"Invalid '{name}': empty array. Expected an array with at least one item.", "empty_array"
        return (
            f"Invalid '{name}': array too long. Expected at most {ctx.get('max_length')} items, "
            f"but got {ctx.get('actual_length')}.",
            "array_above_max_length",
        )
    if kind == "string_pattern_mismatch":
        return f"Invalid '{name}': must match {ctx.get('pattern')}.", "invalid_value"
    if kind == "unsupported_parameter":
        return f"'{name}' is not supported by kubechat bots", "unsupported_parameter"
    return f"Invalid '{name}': {problem.get('msg', 'invalid value')}", "invalid_value"


def validation_error(problems: Iterable[Mapping[str, Any]]) -> BadRequest:
    """One 400 for a failed body: the first problem's parameter, every distinct problem's message."""
    messages: list[str] = []
    first_param: str | None = None
    first_code = "invalid_value"
    seen: set[str | None] = set()
    for problem in problems:
        param = param_name(problem.get("loc", ()))
        if param in seen:
            continue  # a union reports each member's failure; one message per parameter is enough
        seen.add(param)
        message, code = _describe(problem, param)
        if not messages:
            first_param, first_code = param, code
        messages.append(message)
    return BadRequest(" ".join(messages[:5]) or "invalid request body", code=first_code, param=first_param)

"""What tokens cost: the price table per model and the cost of a request. Pure: no I/O.

The one source of prices for everything that speaks of money (cost budgets here, usage in the bot's
status later): defaults shipped below, overridden per model by the ChatBot's ``spec.limits.prices``.
Prices are USD per million tokens, as OpenAI publishes them; costs are whole nano-dollars (1e-9 USD)
so counters stay integers (Redis ``HINCRBY``) and sums never drift.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal

NANO_PER_USD = 10**9


@dataclass(frozen=True, slots=True)
class Price:
    """USD per million tokens of prompt (input) and of reply (output)."""

    input: Decimal
    output: Decimal


def _p(input_usd: str, output_usd: str) -> Price:
    return Price(Decimal(input_usd), Decimal(output_usd))


#: OpenAI's list prices (standard tier, USD per 1M tokens); a dated snapshot uses its family's price.
DEFAULT_PRICES: Mapping[str, Price] = {
    "gpt-5": _p("1.25", "10.00"),
    "gpt-5-mini": _p("0.25", "2.00"),
    "gpt-5-nano": _p("0.05", "0.40"),
    "gpt-4.1": _p("2.00", "8.00"),
    "gpt-4.1-mini": _p("0.40", "1.60"),
    "gpt-4.1-nano": _p("0.10", "0.40"),
    "gpt-4o": _p("2.50", "10.00"),
    "gpt-4o-mini": _p("0.15", "0.60"),
    "o1": _p("15.00", "60.00"),
    "o3": _p("2.00", "8.00"),
    "o3-mini": _p("1.10", "4.40"),
    "o4-mini": _p("1.10", "4.40"),
    "gpt-4-turbo": _p("10.00", "30.00"),
    "gpt-4": _p("30.00", "60.00"),
    "gpt-3.5-turbo": _p("0.50", "1.50"),
}


class PriceTable:
    """Defaults with overrides; lookup by exact name, then by the longest known family prefix."""

    def __init__(self, overrides: Mapping[str, Price] | None = None) -> None:
        self._prices = {**DEFAULT_PRICES, **(overrides or {})}
        self._prefixes = sorted(self._prices, key=len, reverse=True)
        self._pico: dict[str, tuple[int, int] | None] = {}  # model -> pico-dollars per token, in and out

    def price(self, model: str) -> Price | None:
        for name in self._prefixes:
            if model == name or model.startswith((name + "-", name + ":")):
                return self._prices[name]
        return None

    def cost(self, model: str, prompt_tokens: int, completion_tokens: int) -> int:
        """Nano-dollars for one request, rounded up; 0 for a model without a price. Integer arithmetic on
        pico-dollars per token (USD per million tokens to 6 decimals, finer than any price list)."""
        if model not in self._pico:
            price = self.price(model)
            self._pico[model] = None if price is None else (_pico(price.input), _pico(price.output))
        pico = self._pico[model]
        if pico is None:
            return 0
        return -(-(prompt_tokens * pico[0] + completion_tokens * pico[1]) // 1000)


def _pico(usd_per_million: Decimal) -> int:
    return int((usd_per_million * 10**6).to_integral_value(rounding=ROUND_CEILING))


#: The shipped prices, for bots whose spec overrides none.
DEFAULT_TABLE = PriceTable()


def usd(nano: int) -> str:
    """Nano-dollars as an exact USD amount (``0.000020100``): small turns cost less than a micro-dollar."""
    return f"{Decimal(nano) / NANO_PER_USD:.9f}"


def parse_usd(value: object) -> int:
    """A USD amount from the spec (``"5"``, ``2.5``) as nano-dollars; ValueError when it is not one."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError('must be a USD amount such as 5 or "2.50"')
    try:
        amount = Decimal(str(value).strip())
    except ArithmeticError:
        raise ValueError(f"must be a USD amount (got {str(value)[:40]!r})") from None
    if not amount.is_finite() or amount < 0:
        raise ValueError("must be a USD amount of 0 or more")
    return int((amount * NANO_PER_USD).to_integral_value(rounding=ROUND_CEILING))

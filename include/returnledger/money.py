"""Money as the ledger and Amazon write it: GBP-style amounts to the penny, rounded half up."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

CENT = Decimal("0.01")


def to_pennies(value: object) -> Decimal:
    """``value`` (a Decimal, an int, a str or a float's text) to the penny, half up."""
    return Decimal(str(value)).quantize(CENT, rounding=ROUND_HALF_UP)


def money_text(value: object) -> str:
    """The amount as Amazon's ``Money.amount`` and the finance report write it: ``"12.50"``."""
    return str(to_pennies(value))

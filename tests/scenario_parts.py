"""Parts the hand-written test scenarios share, and the Amazon client of a running sandbox.

Each call returns a fresh copy, so a test may change its own scenario freely.
"""

from __future__ import annotations


def vendor() -> dict:
    """The vendor block: party VNDR1 shipping from UK-HUB-1 in GBP on the UK marketplace."""
    return {
        "party_id": "VNDR1",
        "warehouse_id": "UK-HUB-1",
        "currency": "GBP",
        "marketplace_id": "A1F83G8C2ARO7P",
    }


def full_credit_policy() -> dict:
    """Grade A sellable, a 7-day credit window, every disposition credited in full (quarantine waits,
    rejected pays nothing)."""
    return {
        "sellable_grades": ["A"],
        "credit_window_days": 7,
        "credit": {
            "RESTOCKED": 1.0,
            "REFURBISH": 1.0,
            "RECYCLE": 1.0,
            "DESTROY": 1.0,
            "RETURN_TO_SUPPLIER": 1.0,
            "QUARANTINED": None,
            "REJECTED": 0,
        },
    }


def sandbox_amazon_client(sb, **kw):
    """An AmazonVendorClient for the sandbox ``sb`` (its SP-API and LWA URLs and credentials); the rate
    and burst default to the sandbox's, ``kw`` sets any other client option."""
    from returnledger.clients.amazon import AmazonVendorClient

    kw.setdefault("rate_per_s", sb.amazon_extra["rate_per_s"])
    kw.setdefault("burst", sb.amazon_extra["burst"])
    return AmazonVendorClient(
        sb.amazon_url,
        lwa_url=sb.lwa_url,
        refresh_token=sb.lwa_refresh_token,
        lwa_client_id=sb.lwa_client_id,
        lwa_client_secret=sb.lwa_client_secret,
        **kw,
    )

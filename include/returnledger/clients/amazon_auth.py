"""Login with Amazon and the sp_api clients: which endpoint, which LWA host, whose token.

python-amazon-sp-api has no base-URL option, so the endpoint goes in as a marketplace-like object and
the LWA host as an ``AccessTokenClient`` subclass built from ``lwa_url``; the same code then talks to
Amazon and to the sandbox's simulated SP-API. sp_api is imported inside the functions (DAGs import
this package at parse time).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from urllib.parse import urlsplit

DF_TRANSACTIONS_VERSION = "2021-12-28"


@dataclass(frozen=True)
class Marketplace:
    """What sp_api reads from a ``Marketplaces`` member."""

    endpoint: str
    marketplace_id: str
    region: str


def token_client_class(lwa_url: str):
    """An ``AccessTokenClient`` for the LWA endpoint at ``lwa_url`` (Amazon's or the simulator's).

    The library caches access tokens in a process-wide cache keyed by the
    refresh token alone; this subclass keys by LWA URL, client id and client secret
    too, so two endpoints never share a token, and a wrong secret (the connection
    form's Test in a long-lived api-server) never borrows the token a right one got;
    ``forget_token`` drops a token that the API refused (an expired token, or a
    restarted simulator).
    """
    from sp_api.auth import AccessTokenClient

    parts = urlsplit(lwa_url)
    if not parts.scheme or not parts.netloc:
        raise ValueError(f"lwa_url must be an absolute URL, got {lwa_url!r}")
    path = parts.path if parts.path not in ("", "/") else "/auth/o2/token"

    def _get_cache_key(self, token_flavor=""):
        cred = self.cred
        raw = "|".join(
            (lwa_url, cred.client_id or "", cred.client_secret or "", cred.refresh_token or "", token_flavor)
        )
        return "access_token_" + hashlib.sha256(raw.encode()).hexdigest()

    def forget_token(self):
        from sp_api.auth import access_token_client

        access_token_client.cache.pop(self._get_cache_key(), None)

    return type(
        "ReturnLedgerAccessTokenClient",
        (AccessTokenClient,),
        {
            "scheme": parts.scheme + "://",
            "host": parts.netloc,
            "path": path,
            "_get_cache_key": _get_cache_key,
            "forget_token": forget_token,
        },
    )


def sp_api_client(
    name: str, marketplace: Marketplace, credentials: dict, *, timeout: float, token_client_class
):
    """A new sp_api client of the named API (invoices, transactions, df_inventory, df_transactions),
    pinned to ``marketplace``'s endpoint and logging in through ``token_client_class``."""
    from sp_api.api import (
        VendorDirectFulfillmentInventory,
        VendorDirectFulfillmentTransactions,
        VendorInvoices,
        VendorTransactionStatus,
    )
    from sp_api.base.credential_provider import FromCodeCredentialProvider

    cls, extra = {
        "invoices": (VendorInvoices, {}),
        "transactions": (VendorTransactionStatus, {}),
        "df_inventory": (VendorDirectFulfillmentInventory, {}),
        "df_transactions": (
            VendorDirectFulfillmentTransactions,
            {"version": DF_TRANSACTIONS_VERSION},
        ),
    }[name]
    client = cls(
        marketplace,
        credentials=dict(credentials),
        timeout=timeout,
        credential_providers=[FromCodeCredentialProvider],
        auth_token_client_class=token_client_class,
        **extra,
    )
    # SP_API_DEFAULT_MARKETPLACE would silently swap the endpoint for a real one: pin ours.
    client.endpoint = marketplace.endpoint
    client.marketplace_id = marketplace.marketplace_id
    client.region = marketplace.region
    return client

"""What the ledger needs from ReBound and from Amazon, as typing Protocols.

The sync, the pushes and reconciliation take these, not the concrete clients: production passes
``ReboundClient`` / ``AmazonVendorClient`` (built by the Airflow hooks), tests may pass a recording
fake, and mypy checks both against the same contract.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from datetime import date, datetime
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from returnledger.clients.amazon import TransactionStatus
    from returnledger.clients.rebound_feed import EventPage

#: told of every HTTP attempt as it ends: (attempt, http_status, transaction_id, errors)
OnAttempt = Callable[[int, int | None, str | None, list[dict]], None]
#: called before every HTTP attempt with its number; raising stops the call before anything is sent
BeforeAttempt = Callable[[int], None]


class ReturnsFeed(Protocol):
    """ReBound: the event feed, return orders and post-hoc returns."""

    def iter_event_pages(
        self, cursor: str | None, until: datetime, *, raw: bool = False
    ) -> Iterator[EventPage]: ...

    def get_returns(self, return_ids: Iterable[str]) -> tuple[list[dict], list[str]]: ...

    def create_post_hoc_return(
        self,
        *,
        amazon_return_id: str,
        returns_notice: str,
        rma_id: str | None,
        sku: str,
        asin: str | None,
        quantity: int,
        returned_at: date | datetime | str,
        reason: str | None = None,
    ) -> dict: ...


class VendorCentral(Protocol):
    """Amazon SP-API vendor operations: credit notes, inventory, and their transaction status."""

    def submit_invoices(
        self,
        invoices: list[dict],
        *,
        on_attempt: OnAttempt | None = None,
        before_attempt: BeforeAttempt | None = None,
    ) -> str: ...

    def get_transaction(self, transaction_id: str) -> TransactionStatus: ...

    def submit_inventory_update(
        self,
        warehouse_id: str,
        *,
        selling_party_id: str,
        items: list[dict],
        is_full_update: bool = False,
        on_attempt: OnAttempt | None = None,
        before_attempt: BeforeAttempt | None = None,
    ) -> str: ...

    def get_df_transaction(self, transaction_id: str) -> TransactionStatus: ...


if TYPE_CHECKING:  # mypy proves the production clients satisfy the protocols
    from returnledger.clients.amazon import AmazonVendorClient
    from returnledger.clients.rebound import ReboundClient

    def _feed(client: ReboundClient) -> ReturnsFeed:
        return client

    def _vendor(client: AmazonVendorClient) -> VendorCentral:
        return client

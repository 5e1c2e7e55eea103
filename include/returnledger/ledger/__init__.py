"""Ledger rules: the line lifecycle, apply and its writes, holds, and the bookkeeping of a sync run."""

"""Intake: the ReBound feed, raw events as received, and the return orders they name."""

"""Month-end reconciliation: Amazon's returns export in, lines matched against credits, dark returns found."""

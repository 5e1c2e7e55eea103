"""The money path to Amazon: what the ledger owes (submissions, credit notes), sending it, confirming it."""

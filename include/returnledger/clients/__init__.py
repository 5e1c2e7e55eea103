"""HTTP clients of the systems the ledger talks to (ReBound, Amazon SP-API) and what the package needs."""

"""One sync run of the returns ledger (the DAG ``returns_sync``): its steps, in their order, defined once."""

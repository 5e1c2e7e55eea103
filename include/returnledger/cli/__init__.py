"""The `returnledger` command line for operators: one module per command group, assembled by main."""

"""The ledger's database: connections, the one unit of work, the one audit writer, migrations."""

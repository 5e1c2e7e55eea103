"""returnledger: keep ReBound physical returns and Amazon Vendor Central credits in step.

Importable without Airflow; the DAGs call into it through returnledger.airflow (hooks, schedule, defaults).
"""

__version__ = "0.1.0"

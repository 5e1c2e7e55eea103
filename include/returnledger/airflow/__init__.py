"""The edge where returnledger meets Airflow: hooks and connections, schedules, task defaults, notifiers."""

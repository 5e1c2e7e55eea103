"""``make cluster`` and ``make cluster-demo``: Airflow on CeleryExecutor here, driven via its REST API."""

"""Developer tooling (not in the image): simulators, scenarios, demo runner, local Airflow, local cluster."""

"""The returns exceptions console: the owner teams' page in the Airflow UI (FastAPI, mounted by plugins/)."""

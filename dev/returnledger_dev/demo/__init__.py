"""``make demo``: a scenario month through Airflow in-process (dag.test), with a quiet screen and a log."""

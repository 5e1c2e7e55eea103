"""What people read: the month-end finance report and the owner-team digests (mailed by airflow.notifiers)."""

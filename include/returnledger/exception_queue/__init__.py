"""exception_queue."""

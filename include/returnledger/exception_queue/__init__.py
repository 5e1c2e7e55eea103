"""The business exception queue: raising exceptions, the actions people take, reading the queue, SLAs."""

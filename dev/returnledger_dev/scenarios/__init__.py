"""Scenario tools: the checker that judges a run's outputs against the expected file."""

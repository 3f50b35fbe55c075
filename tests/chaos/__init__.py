"""Fault-injection, crash and hostile-input suites (issue 4)."""

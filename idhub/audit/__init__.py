"""The audit log: every change is recorded with its actor in the change's own transaction."""

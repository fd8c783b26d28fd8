"""Issuing and validating tokens; revocation state."""

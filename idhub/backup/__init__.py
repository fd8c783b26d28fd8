"""Backups (consistent, sealed, verifiable), restore, and the retention and export of archived accounts."""

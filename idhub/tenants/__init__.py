"""Tenants and their per-tenant settings."""

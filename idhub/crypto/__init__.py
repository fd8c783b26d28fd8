"""Cryptography: secrets, encryption at rest, signing keys and JWTs."""

"""idhub: federated identity and access management."""

__version__ = "0.1.0"

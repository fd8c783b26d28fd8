"""SSO sessions of the login pages: creation, loading with idle/absolute lifetimes, ending."""

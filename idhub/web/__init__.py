"""Server-rendered pages: login, consent, logout, errors."""

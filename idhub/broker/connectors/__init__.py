"""One connector per upstream protocol."""

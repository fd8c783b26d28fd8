"""Identity brokering: upstream identity providers, their connectors, mapping and account linking."""

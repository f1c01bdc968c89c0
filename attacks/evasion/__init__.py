"""Evasion attacks: the model is served behind a query-time filter."""

"""Metrics: classifier fairness, generation quality, and the plots that show them."""

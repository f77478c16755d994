"""Metrics: classifier fairness, generation quality, skin-tone fidelity (ITA), and the plots that show them."""

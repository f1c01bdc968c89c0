"""Layer 2, what the arena keeps: match results, cached artifacts (clean and
reference models) and calibrations.
"""

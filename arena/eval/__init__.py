"""Layer 4, the researcher's measurements: the typed match record, matches,
sweeps, calibrations and the leaderboard's numbers.
"""

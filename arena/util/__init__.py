"""Layer 0: paths, JSON and file helpers, image folders, errors, progress.

Imports nothing of arena outside this package.
"""

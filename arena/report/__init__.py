"""Layer 5: everything that turns records into text for people (Markdown, terminal
tables).
"""

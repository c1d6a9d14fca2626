"""Semantic IDs: collision tokens, reports, streaming assignment, hourglass analysis and mitigations."""

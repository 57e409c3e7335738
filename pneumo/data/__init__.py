"""Data sources, splits and preprocessing that feed Ray Data."""

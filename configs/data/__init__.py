"""Data presets, for --data."""

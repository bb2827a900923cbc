"""Experiment grids, instance generators, metrics and plots (may read and write files)."""

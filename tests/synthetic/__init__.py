"""Synthetic captures with exact ground truth, for testing the pipeline stages."""

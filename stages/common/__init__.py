"""Helpers shared by several pipeline stages (lighting, conventions)."""

"""Placeholder: the Redis fixtures arrive with the rate-limit work."""

"""Wiring and lifecycle: building the server from config, running it (CLI, workers, embedded
mode), reloading config.
"""

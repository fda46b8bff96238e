"""The benchmark harness of the gateway (`make bench`, `python -m bench`); see bench/cli.py."""

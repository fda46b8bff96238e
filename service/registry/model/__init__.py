"""The registry's model, without I/O: what a write changes (plan.py) and whether a read-back
holds what was written, compared by meaning (read_back.py).
"""

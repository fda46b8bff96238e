"""The registry's model, without I/O: what a write changes (plan.py), whether a read-back
holds what was written, compared by meaning (read_back.py), and who owns which part of a
shared registry, with its merges, etags and shares (slices.py).
"""

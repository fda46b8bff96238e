"""State shared by calls and replicas: the read cache, the per-registry write locks, rate
limits and budgets.
"""

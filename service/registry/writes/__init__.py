"""The registry's resources read and written in AWS: reads through the cache and each write a
read-modify-write under the registry's lock (operations.py), a write once sent settled
(settlement.py), changes made around the gateway found on every read from AWS (drift.py),
all three written once for every resource, each resource a description (resources.py).
"""

"""AWS behind the gateway: the ECR port the domain calls (port.py), its aioboto3
implementation with one verified client per (account, region) and the credentials
(upstream.py), the breaker and bulkheads in front of it (resilience.py), the one mapping of
AWS errors (errors.py), and ECR in memory for the domain's unit tests (memory.py).
"""

"""AWS behind the gateway: the ECR client per (account, region), credentials, and the breaker
and bulkheads in front of it.
"""

"""ECR's own facts, which config, auth, aws and the registry all use: its limits
(limits.py), the etag of what it returns (etags.py), the proto <-> AWS JSON conversion
(convert.py), its regions (regions.py) and its registry policy grammar (policy_grammar.py).
"""

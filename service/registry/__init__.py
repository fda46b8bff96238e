"""The registry's configuration as the gateway knows it: operations (read-modify-write per
resource), tenants' slices, plans, etags, ECR's limits, validation.
"""

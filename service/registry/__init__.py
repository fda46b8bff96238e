"""The registry's configuration as the gateway knows it, in layers: model/ (no I/O), writes/
(reads and writes in AWS: operations, settlement, drift), rpcs/ (the RPCs' domain side:
validation, slice operations, history pages); slices.py (tenants' slices: ownership, merges,
shares, responses) is still one file across them. ECR's own facts are service/ecr/.
"""

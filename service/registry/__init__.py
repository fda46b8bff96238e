"""The registry's configuration as the gateway knows it, in layers: model/ (no I/O: plans,
read-backs, tenants' slices), writes/ (reads and writes in AWS: operations, settlement,
drift), rpcs/ (the RPCs' domain side: validation, slice operations and their answers, history
pages). Each layer imports only the ones below it. ECR's own facts are service/ecr/.
"""

"""What the gateway tells operators: logs, metrics, traces and the audit trail."""

"""The RPCs' domain side: every request's validation (validation.py), the four slice RPCs
(slice_operations.py) and their answers (slice_responses.py), the pages of
GetConfigurationHistory (history_view.py).
"""

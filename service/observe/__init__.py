"""Observability: the metrics container, log configuration and redaction, the probes app."""

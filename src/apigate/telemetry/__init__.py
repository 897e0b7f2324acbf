"""Metrics and health: what operators and Kubernetes probes ask the gateway."""

"""What operators ask the gateway: metrics (metrics.py, filter.py), health (health.py),
traces (tracing.py), the metrics listener (admin.py), wired to the App by runtime.py.

docs/OBSERVABILITY.md describes all of it; deploy/ holds the alerts and dashboard that use it.
"""

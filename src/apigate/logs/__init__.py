"""Structured log events (the full pipeline with sinks arrives with the Logging work)."""

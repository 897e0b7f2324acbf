"""CORS (the Fetch standard): preflights answered by the gateway, origins echoed on actual requests."""

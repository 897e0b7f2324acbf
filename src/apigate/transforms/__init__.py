"""Per-route header transforms: `request_headers` and `response_headers` (set, add, remove)."""

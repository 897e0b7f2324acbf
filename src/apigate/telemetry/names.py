"""Every metric name apigate exports, spelled once.

A leaf module (it imports nothing), so that any package can name the metrics its filter
contributes through `Filter.samples()` without importing the exporter; metrics.py
registers each name with its help text, labels and buckets. The guide's alert rules,
runbook queries and the Grafana dashboard use these names: renaming one is a breaking
change (tests/integration/test_monitoring_kit.py).
"""

from __future__ import annotations

from typing import Final

APIGATE_BUILD_INFO: Final = "apigate_build_info"
ACTIVE_CONNECTIONS: Final = "active_connections"
IN_FLIGHT_REQUESTS: Final = "in_flight_requests"
HTTP_REQUESTS_TOTAL: Final = "http_requests_total"
HTTP_REQUEST_DURATION_SECONDS: Final = "http_request_duration_seconds"
HTTP_ERROR_RATE: Final = "http_error_rate"
UPSTREAM_REQUEST_DURATION_SECONDS: Final = "upstream_request_duration_seconds"
UPSTREAM_FAILURES_TOTAL: Final = "upstream_failures_total"
AUTH_FAILURES_TOTAL: Final = "auth_failures_total"
AUTH_CACHE_LOOKUPS_TOTAL: Final = "auth_cache_lookups_total"
RATE_LIMITED_REQUESTS_TOTAL: Final = "rate_limited_requests_total"
RATE_LIMIT_BACKEND_ERRORS_TOTAL: Final = "rate_limit_backend_errors_total"
RATE_LIMIT_BACKEND_LATENCY_SECONDS: Final = "rate_limit_backend_latency_seconds"
RATE_LIMIT_BACKEND_ROUND_TRIPS_TOTAL: Final = "rate_limit_backend_round_trips_total"
RATE_LIMIT_BACKEND_CHECKS_TOTAL: Final = "rate_limit_backend_checks_total"
LOG_EVENTS_TOTAL: Final = "log_events_total"  # {sink}: events delivered (or written) by the sink
LOG_EVENTS_DROPPED_TOTAL: Final = "log_events_dropped_total"  # {sink, reason}
LOG_SINK_ERRORS_TOTAL: Final = "log_sink_errors_total"  # {sink}: failed deliveries (batch or item)
LOG_SINK_QUEUE_DEPTH: Final = "log_sink_queue_depth"  # {sink}: gauge, events waiting in memory
LOG_SPOOL_BYTES: Final = "log_spool_bytes"  # {sink}: gauge, bytes waiting in the disk spool
ACCESS_DENIED_TOTAL: Final = "access_denied_total"  # {route, reason}: refused by IP rules
WEBSOCKET_CONNECTIONS_ACTIVE: Final = "websocket_connections_active"  # gauge: open tunnels
WEBSOCKET_CONNECTIONS_TOTAL: Final = "websocket_connections_total"  # {route}: tunnels opened
PLUGIN_ERRORS_TOTAL: Final = "plugin_errors_total"  # {plugin}: exceptions raised by a plugin

# Read by the status page (telemetry/status.py) when present; registered by their owners
# (upstream targets and breakers: resilience; reloads: hot reload).
UPSTREAM_TARGET_HEALTHY: Final = "upstream_target_healthy"  # {service, target}: 1 up, 0 down
UPSTREAM_CIRCUIT_STATE: Final = "upstream_circuit_state"  # {service, target}: 0 closed, 1 open, 2 half-open
UPSTREAM_REQUESTS_IN_FLIGHT: Final = "upstream_requests_in_flight"  # {service, target}
UPSTREAM_POOL_CONNECTIONS: Final = "upstream_pool_connections"  # {service, target, state}: idle/active
CONFIG_RELOADS_TOTAL: Final = "config_reloads_total"  # {result}
UPSTREAM_RETRIES_TOTAL: Final = "upstream_retries_total"  # {service, reason}

"""The shared Redis client: RESP on one pipelined connection (or redis-py's cluster
pipeline), endpoint discovery (one server, Sentinel, Cluster), per-loop-turn batching,
deadlines and a circuit breaker. Rate limiting (`ratelimit/redis.py`: the Lua script and
its keys) and sessions (`auth/sessions.py`) both use it; so do the readiness check and
`apigate session`. It imports nothing from the gateway or the features (docs/ARCHITECTURE.md).
"""

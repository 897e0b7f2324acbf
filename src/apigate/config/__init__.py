"""apigate's configuration: the typed schema and the loader that fills it from YAML.

``load_config(path)`` returns a frozen :class:`Config` or raises :class:`ConfigError`
listing every problem as ``file:line key.path: message``. The reference of every key is
docs/CONFIGURATION.md.
"""

from apigate.config.errors import ConfigError
from apigate.config.loader import load_config, load_config_text, summarize
from apigate.config.schema import (
    AuthCacheConfig,
    AuthConfig,
    CloudWatchSink,
    Config,
    ElasticsearchSink,
    FileSink,
    HealthChecksConfig,
    LimitConfig,
    LoggingConfig,
    ObservabilityConfig,
    RateLimitingConfig,
    RouteConfig,
    SentinelConfig,
    ServerConfig,
    SessionStoreConfig,
    SinkConfig,
    SplunkSink,
    TlsConfig,
    TracingConfig,
    UpstreamConfig,
)

__all__ = [
    "AuthCacheConfig",
    "AuthConfig",
    "CloudWatchSink",
    "Config",
    "ConfigError",
    "ElasticsearchSink",
    "FileSink",
    "HealthChecksConfig",
    "LimitConfig",
    "LoggingConfig",
    "ObservabilityConfig",
    "RateLimitingConfig",
    "RouteConfig",
    "SentinelConfig",
    "ServerConfig",
    "SessionStoreConfig",
    "SinkConfig",
    "SplunkSink",
    "TlsConfig",
    "TracingConfig",
    "UpstreamConfig",
    "load_config",
    "load_config_text",
    "summarize",
]

"""Typed configuration: one pydantic model per YAML section.

Every key the operational guide shows is accepted here, including sections whose
behaviour later parts of apigate implement. `extra="forbid"` everywhere: a typo is an
error that names the key, never a silently ignored setting. Field descriptions are the
"meaning" column of docs/CONFIGURATION.md (a test keeps the two in step).
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from apigate.http.headers import (
    CONTENT_LENGTH,
    EXPECT,
    GATEWAY_SET_REQUEST,
    HOP_BY_HOP,
    X_FORWARDED_FOR,
    X_USER_ID,
)

Port = Annotated[int, Field(ge=1, le=65535)]
PositiveSecs = Annotated[float, Field(gt=0)]


def _redis_scheme(v: str) -> str:
    if urlsplit(v).scheme not in ("redis", "rediss", "unix"):
        raise ValueError("must start with redis://, rediss:// or unix://")
    return v


_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$"
)


def check_bind_address(v: str) -> str:
    """An IP address or a host name (RFC 1123); whether a name resolves is checked by
    `apigate check` (config/checks.py), whether the port is free only when serving."""
    try:
        ipaddress.ip_address(v)
    except ValueError:
        if not _HOSTNAME.match(v):
            raise ValueError(f"'{v}' is not an IP address or a host name") from None
    return v


BindAddress = Annotated[str, AfterValidator(check_bind_address)]
RedisUrl = Annotated[str, AfterValidator(_redis_scheme)]  # sessions' and rate limiting's Redis
LogLevel = Literal["DEBUG", "INFO", "WARN", "WARNING", "ERROR", "CRITICAL"]

HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT")
_KEY_TYPE = re.compile(r"^(ip|user|route|api_key|header:[!#$%&'*+.^_`|~0-9A-Za-z-]+)$")
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def _check_id(v: str) -> str:
    """Upstream and route ids: metric label values and log fields, so short and plain."""
    if not _ID.match(v):
        raise ValueError("must be 1-64 characters of letters, digits, '.', '_' or '-'")
    return v


def _check_networks(v: list[str] | None) -> list[str] | None:
    """Addresses and CIDRs, v4 or v6 (`10.0.0.0/8`, `2001:db8::/32`, `192.0.2.7`)."""
    for cidr in v or ():
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            raise ValueError(f"'{cidr}' is not an IP address or CIDR") from None
    return v


Networks = Annotated[list[str], AfterValidator(_check_networks)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ----------------------------------------------------------------------------- server
class TlsConfig(Section):
    cert_path: str = Field(description="PEM certificate chain served to clients.")
    key_path: str = Field(description="PEM private key for cert_path.")
    min_version: Literal["1.2", "1.3"] = Field("1.2", description="Lowest TLS version accepted.")

    @field_validator("min_version", mode="before")
    @classmethod
    def _version_as_text(cls, v: object) -> object:
        # YAML reads an unquoted `min_version: 1.2` as a float; take it as the version it names.
        return str(v) if isinstance(v, float) else v


class ServerConfig(Section):
    bind_address: BindAddress = Field("0.0.0.0", description="Address the proxy listener binds.")
    port: Port = Field(8080, description="Port of the proxy listener.")
    workers: int = Field(1, ge=1, le=256, description="Worker processes sharing the port (SO_REUSEPORT).")
    max_connections: int = Field(
        10000, ge=1, description="Open client connections per worker; beyond it new ones get 503 and close."
    )
    connection_timeout_secs: PositiveSecs = Field(
        60, description="Idle keep-alive timeout: a client connection with no request in flight is closed."
    )
    request_timeout_secs: PositiveSecs = Field(
        30, description="Whole-request deadline: 408 if the client is late, 504 if the upstream is."
    )
    max_header_bytes: int = Field(
        32768, ge=1024, description="Request line plus headers, in bytes; beyond it 431."
    )
    max_body_bytes: int = Field(
        2 * 1024**3, ge=0, description="Request body size in bytes (0 = unlimited); beyond it 413."
    )
    drain_timeout_secs: PositiveSecs = Field(
        30, description="On SIGTERM/SIGINT, how long in-flight requests may finish before being cut."
    )
    websocket_idle_timeout_secs: PositiveSecs = Field(
        300, description="A WebSocket tunnel silent both ways this long is closed (1001 going away)."
    )
    trusted_proxies: Networks = Field(
        default_factory=list, description="CIDRs whose X-Forwarded-For is believed for the client ip."
    )
    tls: TlsConfig | None = Field(None, description="Serve HTTPS on the proxy listener.")
    allow_underscores_in_headers: bool = Field(
        False,
        description="Forward request headers whose name has '_' (false: dropped, as nginx does).",
    )


# ----------------------------------------------------------------------------- logging
class ElasticsearchSink(Section):
    urls: list[str] = Field(
        min_length=1, description="Elasticsearch base URLs; the first healthy one is used."
    )
    index: str = Field(
        "api-gateway-logs-%Y.%m.%d", description="Index name, strftime pattern on event UTC time."
    )
    batch_size: int = Field(100, ge=1, description="Events per _bulk request.")
    flush_interval_secs: PositiveSecs = Field(5, description="Longest time an event waits for a batch.")
    username: str | None = Field(None, description="Basic auth user.")
    password: str | None = Field(None, description="Basic auth password.")
    api_key: str | None = Field(None, description="Elasticsearch API key (instead of basic auth).")
    verify_tls: bool = Field(True, description="Verify the server certificate.")


class CloudWatchSink(Section):
    region: str = Field(description="AWS region.")
    log_group: str = Field(description="Log group, created when missing.")
    log_stream: str = Field(
        "gateway-{instance_id}", description="Log stream; {instance_id}, {hostname}, {pid} are filled in."
    )
    batch_size: int = Field(100, ge=1, le=10000, description="Events per PutLogEvents call.")
    flush_interval_secs: PositiveSecs = Field(5, description="Longest time an event waits for a batch.")
    endpoint_url: str | None = Field(
        None, description="Override the AWS endpoint (e.g. a local test server)."
    )


class SplunkSink(Section):
    endpoint: str = Field(description="HEC URL, e.g. https://splunk:8088/services/collector.")
    token: str = Field(description="HEC token, sent as 'Authorization: Splunk <token>'.")
    sourcetype: str = Field("api_gateway", description="Splunk sourcetype.")
    index: str | None = Field(None, description="Splunk index.")
    batch_size: int = Field(100, ge=1, description="Events per HEC request.")
    flush_interval_secs: PositiveSecs = Field(5, description="Longest time an event waits for a batch.")
    ack: bool = Field(False, description="Use HEC indexer acknowledgement.")
    verify_tls: bool = Field(True, description="Verify the server certificate.")


class FileSink(Section):
    path: str = Field(description="Log file path.")
    rotation_enabled: bool = Field(True, description="Rotate the file by size.")
    max_size_mb: float = Field(100, gt=0, description="Rotate when the file reaches this size.")
    max_backups: int = Field(10, ge=0, description="Rotated files kept.")
    max_age_days: float = Field(30, ge=0, description="Rotated files older than this are deleted (0 = keep).")
    compress: bool = Field(True, description="gzip rotated files.")


SinkType = Literal["stdout", "file", "elasticsearch", "cloudwatch", "splunk"]


class SinkConfig(Section):
    type: SinkType = Field(description="stdout, file, elasticsearch, cloudwatch or splunk.")
    enabled: bool = Field(True, description="A disabled sink is accepted and ignored.")
    min_level: LogLevel = Field("INFO", description="Events below this level are not sent to this sink.")
    file: FileSink | None = Field(None, description="Settings for type: file.")
    elasticsearch: ElasticsearchSink | None = Field(None, description="Settings for type: elasticsearch.")
    cloudwatch: CloudWatchSink | None = Field(None, description="Settings for type: cloudwatch.")
    splunk: SplunkSink | None = Field(None, description="Settings for type: splunk.")

    @model_validator(mode="after")
    def _block_matches_type(self) -> SinkConfig:
        blocks = ("file", "elasticsearch", "cloudwatch", "splunk")
        for name in blocks:
            if name != self.type and getattr(self, name) is not None:
                raise ValueError(f"'{name}' settings given on a sink of type '{self.type}'")
        if self.type != "stdout" and getattr(self, self.type) is None:
            raise ValueError(f"a sink of type '{self.type}' needs a '{self.type}:' block")
        return self


def _default_sinks() -> list[SinkConfig]:
    return [SinkConfig(type="stdout")]


class LoggingConfig(Section):
    level: LogLevel = Field("INFO", description="Lowest level emitted at all.")
    format: Literal["json", "text"] = Field("json", description="Event encoding on stdout and file sinks.")
    structured: bool = Field(True, description="Emit structured events (fields, not just a message).")
    redaction_enabled: bool = Field(
        True, description="Mask tokens, keys, passwords and e-mails before sinks."
    )
    sampling_rate: float = Field(
        1.0, ge=0, le=1, description="Share of successful (2xx/3xx) access events logged; errors always are."
    )
    service: str = Field("api-gateway", description="The 'service' field of every event.")
    log_health_checks: bool = Field(False, description="Log /health/* requests too.")
    spool_dir: str = Field("/var/lib/apigate/spool", description="Disk spool for events a sink cannot take.")
    spool_max_mb: float = Field(512, gt=0, description="Spool size bound per sink; oldest dropped beyond it.")
    sinks: list[SinkConfig] = Field(default_factory=_default_sinks, description="Where events go.")


# ----------------------------------------------------------------------------- observability
class HealthChecksConfig(Section):
    liveness_enabled: bool = Field(True, description="Serve /health/live.")
    readiness_enabled: bool = Field(True, description="Serve /health/ready.")
    check_redis: bool = Field(False, description="Readiness requires a Redis PING.")
    check_upstreams: bool = Field(False, description="Readiness requires every upstream to answer.")


class TracingConfig(Section):
    enabled: bool = Field(False, description="Export OpenTelemetry spans.")
    backend: Literal["otlp", "jaeger"] = Field("otlp", description="otlp, or jaeger (spans sent as OTLP).")
    endpoint: str | None = Field(
        None, description="Collector URL (OTLP/HTTP, e.g. http://jaeger:4318/v1/traces)."
    )
    service_name: str = Field("api-gateway", description="service.name resource attribute.")
    sampling_rate: float = Field(1.0, ge=0, le=1, description="Parent-based ratio sampler.")


_BCRYPT_HASH = re.compile(r"^\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}$")


class AdminBasicAuthConfig(Section):
    username: str = Field(min_length=1, description="User name the status page asks for.")
    password_hash: str = Field(
        description="bcrypt hash of the password ($2b$..., e.g. `htpasswd -nbB user pw`), not the password."
    )

    @field_validator("password_hash")
    @classmethod
    def _bcrypt(cls, v: str) -> str:
        if not _BCRYPT_HASH.match(v):
            raise ValueError("must be a bcrypt hash ($2a$, $2b$ or $2y$, cost 04-31, 60 characters)")
        return v


class AdminConfig(Section):
    status_enabled: bool = Field(True, description="Serve GET /status and /status.json on metrics_port.")
    basic_auth: AdminBasicAuthConfig | None = Field(
        None, description="HTTP basic auth in front of the status page (/metrics and /health/* stay open)."
    )
    status_remote: bool = Field(
        False,
        description="Show the status page to clients beyond loopback without basic_auth "
        "(by default only loopback clients, e.g. kubectl port-forward, see it unless basic_auth is set).",
    )


class ObservabilityConfig(Section):
    metrics_enabled: bool = Field(True, description="Serve Prometheus /metrics on metrics_port.")
    metrics_port: Port = Field(9090, description="Port of the metrics and health listener.")
    metrics_bind_address: BindAddress | None = Field(
        None, description="Address of that listener (default: bind_address)."
    )
    health_checks: HealthChecksConfig = Field(
        default_factory=HealthChecksConfig, description="Health endpoints."
    )
    tracing: TracingConfig = Field(default_factory=TracingConfig, description="Distributed tracing.")
    admin: AdminConfig = Field(default_factory=AdminConfig, description="The status page on metrics_port.")


# ----------------------------------------------------------------------------- auth
JwtAlgorithm = Literal[
    "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "EdDSA"
]


class AuthCacheConfig(Section):
    enabled: bool = Field(True, description="Cache verified claims.")
    max_capacity: int = Field(100000, ge=1, description="Most entries held (oldest evicted first).")
    ttl_secs: PositiveSecs = Field(
        300, description="Entry lifetime, never past the token's exp; a revoked session works this long."
    )


class SessionStoreConfig(Section):
    redis_url: RedisUrl | None = Field(
        None,
        description="Redis for sessions (default: rate limiting's Redis, cluster or sentinel included; "
        "in memory when neither).",
    )
    timeout_ms: int = Field(100, ge=1, description="Longest a request waits on the session store; then 503.")


# Fields the gateway itself sets, that frame the message (RFC 9110 §7.6.1, §8.6) or that
# carry the credentials: a claim copied into one of them would corrupt the upstream request.
_RESERVED_HEADERS = frozenset(
    h.decode()
    for h in HOP_BY_HOP
    | GATEWAY_SET_REQUEST
    | {CONTENT_LENGTH, EXPECT, X_FORWARDED_FOR, b"x-user-id", b"authorization", b"cookie"}
)
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # RFC 9110 §5.6.2
_SCOPE = re.compile(r"^[\x21\x23-\x5b\x5d-\x7e]+$")  # RFC 6749 §3.3 scope-token


class AuthConfig(Section):
    token_format: Literal["jwt", "session"] = Field(
        "jwt", description="jwt (signed tokens) or session (opaque tokens looked up in session_store)."
    )
    jwt_algorithm: JwtAlgorithm = Field(
        "HS256", description="The only algorithm accepted; a token's own 'alg' header is never trusted."
    )
    jwt_secret: str | None = Field(None, description="HMAC secret for HS* algorithms.")
    jwt_public_key_path: str | None = Field(None, description="PEM public key for RS/PS/ES/EdDSA.")
    jwks_url: str | None = Field(None, description="JWKS endpoint (http/https) for RS/PS/ES/EdDSA.")
    jwks_refresh_secs: PositiveSecs = Field(
        300, description="JWKS refetch interval; an unknown kid also refetches, at most once per 30 s."
    )
    jwt_issuer: str | None = Field(None, description="Required 'iss'.")
    jwt_audience: str | list[str] | None = Field(
        None, description="Accepted 'aud' value(s); a token must name one of them."
    )
    leeway_secs: float = Field(30, ge=0, le=600, description="Clock skew allowed on exp/nbf/iat.")
    required_claims: list[str] = Field(
        default_factory=lambda: ["exp"], description="Claims a JWT must carry ('exp' always is)."
    )
    cookie_name: str = Field("session_token", description="Cookie read when there is no Bearer header.")
    cache: AuthCacheConfig = Field(default_factory=AuthCacheConfig, description="Verified-claims cache.")
    session_store: SessionStoreConfig = Field(
        default_factory=SessionStoreConfig, description="Where opaque session tokens are looked up."
    )
    claim_headers: dict[str, str] = Field(
        default_factory=dict,
        description="Upstream header name -> claim copied into it (besides X-User-ID from 'sub').",
    )

    @field_validator("jwks_url")
    @classmethod
    def _jwks_url(cls, v: str | None) -> str | None:
        if v is not None:
            parts = urlsplit(v)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError("must be an absolute http:// or https:// URL")
        return v

    @field_validator("jwt_audience")
    @classmethod
    def _audience(cls, v: str | list[str] | None) -> str | list[str] | None:
        if isinstance(v, list) and not v:
            raise ValueError("must name at least one audience")
        return v

    @field_validator("cookie_name")
    @classmethod
    def _cookie_name(cls, v: str) -> str:
        if not _TOKEN.match(v):
            raise ValueError("must be a cookie name (letters, digits and !#$%&'*+.^_`|~-)")
        return v

    @field_validator("claim_headers")
    @classmethod
    def _claim_headers(cls, v: dict[str, str]) -> dict[str, str]:
        seen: set[str] = set()
        for name in v:
            lowered = name.lower()
            if not _TOKEN.match(name):
                raise ValueError(f"'{name}' is not a header name")
            if lowered in _RESERVED_HEADERS:
                raise ValueError(f"'{name}' is set by the gateway or frames the request; pick another name")
            if lowered in seen:
                raise ValueError(f"'{name}' is given twice (header names are case-insensitive)")
            seen.add(lowered)
        return v


# ----------------------------------------------------------------------------- rate limiting
class LimitConfig(Section):
    limit: int = Field(ge=1, description="Requests allowed per window.")
    window_secs: PositiveSecs = Field(description="Window length.")
    algorithm: Literal["token_bucket", "sliding_window", "fixed_window"] = Field(
        "token_bucket", description="token_bucket, sliding_window or fixed_window."
    )
    key_type: str = Field("ip", description="ip, user, route, api_key or header:<Name>.")

    @field_validator("key_type")
    @classmethod
    def _key_type(cls, v: str) -> str:
        if not _KEY_TYPE.match(v):
            raise ValueError(f"unknown key_type '{v}' (ip, user, route, api_key, header:<Name>)")
        return v

    @model_validator(mode="after")
    def _exact_range(self) -> LimitConfig:
        # Counters are exact integers in Lua doubles (ratelimit/algorithms.py, MAX_UNITS).
        if self.limit * max(1, round(self.window_secs * 1000)) * 2 >= 2**50:
            raise ValueError("limit x window_secs is too large (limit x window in ms must stay below 2**49)")
        return self


class SentinelConfig(Section):
    master_name: str = Field(description="Sentinel master name.")
    sentinels: list[str] = Field(min_length=1, description="host:port of each sentinel.")


class RateLimitingConfig(Section):
    redis_url: RedisUrl | None = Field(
        None,
        description="redis://, rediss:// or unix:// (in memory when unset and no cluster or sentinel); "
        "with a cluster or sentinel it gives only credentials, TLS and db.",
    )
    redis_cluster_nodes: list[str] = Field(
        default_factory=list, description="host:port seeds of a Redis Cluster (instead of redis_url's host)."
    )
    redis_sentinel: SentinelConfig | None = Field(None, description="Reach Redis through Sentinel.")
    timeout_ms: int = Field(50, ge=1, description="Longest a request waits on the limit store.")
    failure_mode: Literal["fail_closed", "fail_open"] = Field(
        "fail_open", description="Store down: 503 (fail_closed) or local in-memory limits (fail_open)."
    )
    default_limit: LimitConfig | None = Field(None, description="Limit for routes without their own.")
    leases: bool = Field(
        False,
        description="Token buckets in Redis: a busy key far from its limit spends tokens leased to this "
        "instance between Redis calls (never over the limit; tokens leased to an instance that dies "
        "are refused until refilled).",
    )

    @field_validator("redis_cluster_nodes")
    @classmethod
    def _host_ports(cls, v: list[str]) -> list[str]:
        for node in v:
            host, sep, port = node.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"'{node}' is not host:port")
        return v

    @model_validator(mode="after")
    def _one_topology(self) -> RateLimitingConfig:
        if self.redis_cluster_nodes and self.redis_sentinel is not None:
            raise ValueError("give redis_cluster_nodes or redis_sentinel, not both")
        return self


# ----------------------------------------------------------------------------- upstreams, routes
def _check_upstream_url(v: str) -> str:
    parts = urlsplit(v)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an absolute http:// or https:// URL")
    if parts.query or parts.fragment:
        raise ValueError("must not have a query or fragment")
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as e:
        raise ValueError(f"bad port: {e}") from None
    return v


UpstreamUrl = Annotated[str, AfterValidator(_check_upstream_url)]
RetryOn = Literal["connect_failure", "reset_before_response", "status_502", "status_503"]


class TargetConfig(Section):
    url: UpstreamUrl = Field(
        description="http:// or https:// URL of one instance; its path prefixes upstream paths."
    )
    weight: int = Field(1, ge=1, le=1000, description="Share of the traffic, relative to the other targets.")


class CircuitBreakerConfig(Section):
    failure_threshold: int = Field(5, ge=1, description="Consecutive failures that open a target's circuit.")
    open_secs: PositiveSecs = Field(10, description="Time an open circuit sends a target nothing.")
    half_open_requests: int = Field(
        1, ge=1, description="Trial requests after open_secs; all must succeed to close the circuit."
    )
    count_5xx: bool = Field(False, description="Count 5xx responses as failures too.")


class HealthCheckConfig(Section):
    path: str = Field("/health", description="Path each target is probed at (2xx or 3xx is healthy).")
    interval_secs: PositiveSecs = Field(5, description="Time between two probes of a target.")
    timeout_secs: PositiveSecs = Field(2, description="Longest wait for a probe's answer.")
    healthy_threshold: int = Field(2, ge=1, description="Consecutive successes that bring a target back.")
    unhealthy_threshold: int = Field(3, ge=1, description="Consecutive failures that take a target out.")

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        if not v.startswith("/") or any(c in v for c in " \r\n"):
            raise ValueError("must be a path starting with '/'")
        return v


def _default_retry_on() -> list[RetryOn]:
    return ["connect_failure", "reset_before_response"]


class RetriesConfig(Section):
    attempts: int = Field(2, ge=1, le=10, description="Tries in all, the first included (2: one retry).")
    on: list[RetryOn] = Field(
        default_factory=_default_retry_on,
        description="Failures retried (only while no byte of the response reached the client).",
    )
    budget_percent: float = Field(
        20,
        ge=0,
        le=100,
        description="Retries allowed, as a percentage of recent requests (Envoy's budget).",
    )


class UpstreamConfig(Section):
    id: str = Field(description="Name routes refer to.")
    base_url: UpstreamUrl | None = Field(
        None, description="http:// or https:// URL; its path prefixes every upstream path (one target)."
    )
    targets: list[TargetConfig] = Field(
        default_factory=list, description="Several instances with weights, instead of base_url."
    )
    load_balancing: Literal["round_robin", "least_requests", "random_two_choices"] = Field(
        "round_robin", description="How a request picks a target (weights honoured)."
    )
    timeout_secs: PositiveSecs = Field(30, description="Time to the upstream's response headers; then 504.")
    connect_timeout_secs: PositiveSecs = Field(5, description="TCP (and TLS) connect timeout; then 504.")
    pool_max_idle_per_host: int = Field(
        50, ge=0, description="Idle keep-alive connections kept (per target)."
    )
    health_path: str | None = Field(None, description="Path probed by readiness when check_upstreams is on.")
    verify_tls: bool = Field(True, description="Verify an https upstream's certificate.")
    ca_path: str | None = Field(None, description="PEM CA bundle for an https upstream.")
    circuit_breaker: CircuitBreakerConfig | None = Field(
        None, description="Passive health: stop sending to a target that keeps failing."
    )
    health_check: HealthCheckConfig | None = Field(None, description="Active health: probe every target.")
    retries: RetriesConfig | None = Field(None, description="Send a failed request again, to another target.")

    _id = field_validator("id")(_check_id)

    @model_validator(mode="after")
    def _one_of(self) -> UpstreamConfig:
        if (self.base_url is None) == (not self.targets):
            raise ValueError("give either base_url or targets (not both)")
        urls = [t.url for t in self.targets]
        if len(set(urls)) != len(urls):
            raise ValueError("targets: a url is listed twice")
        return self

    @property
    def target_list(self) -> list[TargetConfig]:
        """base_url is the one-target shorthand."""
        if self.base_url is not None:
            return [TargetConfig(url=self.base_url)]
        return self.targets


# ----------------------------------------------------------------------------- header transforms
TRANSFORM_VARIABLES = ("client_ip", "request_id", "route_id", "user")
TRANSFORM_TOKEN = re.compile(r"\$\$|\$([A-Za-z_][A-Za-z0-9_]*)")  # `$$` is a literal `$`
# Fields that frame the message, that the gateway sets itself, or that say who the user is
# (RFC 9110 §7.6.1 hop-by-hop, Host): a transform cannot set, add or remove them.
_NOT_TRANSFORMABLE = frozenset(
    h.decode()
    for h in HOP_BY_HOP | GATEWAY_SET_REQUEST | {CONTENT_LENGTH, EXPECT, X_FORWARDED_FOR, X_USER_ID}
)


def _check_transform_name(name: str) -> str:
    lowered = name.lower()
    if not _TOKEN.match(name):
        raise ValueError(f"'{name}' is not a header name")
    if lowered in _NOT_TRANSFORMABLE:
        raise ValueError(
            f"'{name}' is hop-by-hop, frames the message or is set by the gateway; it cannot be transformed"
        )
    return lowered


def _check_transform_value(name: str, value: str) -> None:
    if any(c in value for c in "\r\n\0"):
        raise ValueError(f"the value of '{name}' contains a line break or NUL")
    for m in TRANSFORM_TOKEN.finditer(value):
        var = m.group(1)
        if var is not None and var not in TRANSFORM_VARIABLES:
            known = ", ".join("$" + v for v in TRANSFORM_VARIABLES)
            raise ValueError(f"unknown variable ${var} in '{name}' (known: {known}; $$ is a literal $)")


class HeaderTransformConfig(Section):
    set: dict[str, str] = Field(
        default_factory=dict, description="Header -> value, replacing every copy already there."
    )
    add: dict[str, str] = Field(
        default_factory=dict, description="Header -> value, added beside any copy already there."
    )
    remove: list[str] = Field(default_factory=list, description="Headers removed (every copy).")

    @model_validator(mode="after")
    def _names_and_values(self) -> HeaderTransformConfig:
        seen: dict[str, str] = {}
        for kind, names in (("set", list(self.set)), ("add", list(self.add)), ("remove", self.remove)):
            for name in names:
                lowered = _check_transform_name(name)
                if lowered in seen:
                    raise ValueError(
                        f"'{name}' is given in both {seen[lowered]} and {kind}"
                        if seen[lowered] != kind
                        else f"'{name}' is given twice in {kind}"
                    )
                seen[lowered] = kind
        for name, value in (*self.set.items(), *self.add.items()):
            _check_transform_value(name, value)
        return self


# ----------------------------------------------------------------------------- CORS
_ORIGIN = re.compile(r"^[a-z][a-z0-9+.-]*://[^/?#\s]+$")
CORS_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")


class CorsConfig(Section):
    allow_origins: list[str] = Field(
        min_length=1,
        description="Origins allowed: exact ('https://app.example.com'), '*' (any), "
        "or a regex after '~' ('~^https://[a-z0-9-]+\\.example\\.com$').",
    )
    allow_methods: list[str] = Field(
        default_factory=lambda: list(CORS_METHODS), description="Methods a preflight may ask for."
    )
    allow_headers: list[str] = Field(
        default_factory=list,
        description="Request headers a preflight may ask for besides the CORS-safelisted ones; '*': any.",
    )
    expose_headers: list[str] = Field(
        default_factory=list, description="Response headers the page's script may read."
    )
    allow_credentials: bool = Field(
        False, description="Allow cookies and Authorization (the origin is echoed, never '*')."
    )
    max_age_secs: int = Field(600, ge=0, le=86400, description="How long a browser may cache a preflight.")

    @field_validator("allow_origins")
    @classmethod
    def _origins(cls, v: list[str]) -> list[str]:
        for origin in v:
            if origin.startswith("~"):
                try:
                    re.compile(origin[1:])
                except re.error as e:
                    raise ValueError(f"'{origin}' is not a regular expression: {e}") from None
            elif origin not in ("*", "null") and not _ORIGIN.match(origin.lower()):
                raise ValueError(
                    f"'{origin}' is not an origin (scheme://host[:port], no path), '*' or '~regex'"
                )
        return v

    @field_validator("allow_methods")
    @classmethod
    def _cors_methods(cls, v: list[str]) -> list[str]:
        out = [m.upper() for m in v]
        bad = [m for m in out if m not in HTTP_METHODS]
        if bad:
            raise ValueError(f"unknown method(s) {', '.join(bad)}")
        return out

    @field_validator("allow_headers", "expose_headers")
    @classmethod
    def _header_names(cls, v: list[str]) -> list[str]:
        for name in v:
            if name != "*" and not _TOKEN.match(name):
                raise ValueError(f"'{name}' is not a header name")
        return v


# ----------------------------------------------------------------------------- plugins
_PLUGIN_MODULE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$")


class PluginConfig(Section):
    name: str = Field(
        description="The plugin's name: routes[].plugins, logs and plugin_errors_total{plugin}."
    )
    module: str = Field(description="Where the filter class is: 'package.module:ClassName'.")
    path: str | None = Field(
        None, description="Directory added to Python's import path first (relative: to the config file)."
    )
    priority: int | None = Field(
        None,
        description="Order in the chain, higher first (auth is 1250, rate limits 910); default: the class's.",
    )
    config: dict[str, Any] = Field(
        default_factory=dict, description="Settings, validated by the plugin class's own Config model."
    )

    _name = field_validator("name")(_check_id)

    @field_validator("module")
    @classmethod
    def _module(cls, v: str) -> str:
        if not _PLUGIN_MODULE.match(v):
            raise ValueError(f"'{v}' is not 'package.module:ClassName'")
        return v


class RouteConfig(Section):
    id: str = Field(description="Route name, the 'route' label of metrics.")
    methods: list[str] = Field(
        default_factory=lambda: list(HTTP_METHODS), description="Methods served (default: all)."
    )
    path: str = Field(description="Exact path, {param} segments, or a trailing /* prefix.")
    upstream_id: str = Field(description="Upstream the route forwards to.")
    auth_required: bool = Field(False, description="Require a valid token.")
    required_scopes: list[str] = Field(default_factory=list, description="Scopes the token must carry.")
    rate_limit: LimitConfig | Literal[False] | None = Field(
        None, description="Limit for this route; false disables the default."
    )
    strip_prefix: bool = Field(False, description="Remove the route's literal prefix before forwarding.")
    websocket: bool = Field(
        True, description="Tunnel WebSocket upgrades to the upstream; false answers them 400."
    )
    rewrite: str | None = Field(None, description="Upstream path template; {param} and {*} are filled in.")
    request_headers: HeaderTransformConfig | None = Field(
        None,
        description="Headers set, added or removed on the way to the upstream "
        "($client_ip, $request_id, $route_id, $user).",
    )
    response_headers: HeaderTransformConfig | None = Field(
        None, description="Headers set, added or removed on the way to the client (same variables)."
    )
    cors: CorsConfig | Literal[False] | None = Field(
        None, description="CORS for this route (replaces the top-level cors); false turns it off."
    )
    plugins: list[str] = Field(
        default_factory=list,
        description="Plugins (by name) for this route; a plugin no route lists runs on every route.",
    )
    ip_allow: Networks | None = Field(
        None, description="Client addresses/CIDRs admitted on this route (replaces the top-level ip_allow)."
    )
    ip_deny: Networks = Field(
        default_factory=list,
        description="Client addresses/CIDRs refused on this route, besides the top-level ip_deny.",
    )
    keep_encoded_slashes: bool = Field(
        False,
        description="Forward paths with %2F, %5C or '\\' (false: 400) if decoded they match this route too.",
    )

    _id = field_validator("id")(_check_id)

    @field_validator("required_scopes")
    @classmethod
    def _scopes(cls, v: list[str]) -> list[str]:
        for scope in v:
            if not _SCOPE.match(scope):
                raise ValueError(f"'{scope}' is not a scope (RFC 6749 §3.3: no space, quote or backslash)")
        return v

    @field_validator("methods")
    @classmethod
    def _methods(cls, v: list[str]) -> list[str]:
        out = [m.upper() for m in v]
        bad = [m for m in out if m not in HTTP_METHODS]
        if bad:
            raise ValueError(f"unknown method(s) {', '.join(bad)}")
        if not out:
            raise ValueError("must list at least one method")
        return out

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        if not v.startswith("/"):
            raise ValueError("must start with '/'")
        segments = v.split("/")[1:]
        for i, seg in enumerate(segments):
            if seg == "*" and i != len(segments) - 1:
                raise ValueError("'*' is only allowed as the last segment")
            if ("{" in seg or "}" in seg) and not re.fullmatch(r"\{[A-Za-z_][A-Za-z0-9_]*\}", seg):
                raise ValueError(f"bad parameter segment '{seg}'")
        return v


class Config(Section):
    server: ServerConfig = Field(default_factory=ServerConfig, description="The proxy listener.")
    logging: LoggingConfig = Field(default_factory=LoggingConfig, description="Structured logs and sinks.")
    observability: ObservabilityConfig = Field(
        default_factory=ObservabilityConfig, description="Metrics, health checks, tracing."
    )
    auth: AuthConfig | None = Field(None, description="Token verification for auth_required routes.")
    rate_limiting: RateLimitingConfig | None = Field(None, description="Request limits.")
    upstreams: list[UpstreamConfig] = Field(default_factory=list, description="Services behind the gateway.")
    routes: list[RouteConfig] = Field(default_factory=list, description="Path and method to upstream.")
    plugins: list[PluginConfig] = Field(
        default_factory=list, description="Python filters of your own (docs/PLUGINS.md)."
    )
    cors: CorsConfig | None = Field(
        None, description="CORS for every route (browsers calling from other origins)."
    )
    ip_allow: Networks = Field(
        default_factory=list, description="Client addresses/CIDRs admitted on every route (empty: all)."
    )
    ip_deny: Networks = Field(
        default_factory=list,
        description="Client addresses/CIDRs refused on every route; deny wins over allow.",
    )

    def has_plugins(self, route: RouteConfig) -> bool:
        """Whether any plugin may run on `route`: those it lists, and those no route lists."""
        listed = {name for r in self.routes for name in r.plugins}
        return any(p.name in route.plugins or p.name not in listed for p in self.plugins)


def config_hash(cfg: Config) -> str:
    """A configuration's fingerprint: the first 16 hex digits of the SHA-256 of the parsed
    configuration (after ${VAR} expansion; a hash, so no secret can be read back from it).
    The reload answer, the config_reloaded event and the status page all show this one."""
    return hashlib.sha256(cfg.model_dump_json().encode()).hexdigest()[:16]

"""Strict wire-protocol test servers for the log sinks (Elasticsearch `_bulk`, Splunk HEC).

They run on real sockets on 127.0.0.1, in a background thread with their own event loop,
and can be taken down (listener and connections closed, so clients get ECONNREFUSED)
and brought back on the same port.
"""

"""Rate limiting: pure algorithms, an in-memory and a Redis store, keys, and the filter.

See docs/RATE_LIMITING.md for the behaviour; each module's docstring says why it is
shaped as it is.
"""

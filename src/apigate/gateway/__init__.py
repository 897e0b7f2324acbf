"""The request's journey: router, filter chain, proxy; `app.py` builds it from the config."""

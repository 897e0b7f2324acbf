"""IP rules: `ip_allow` / `ip_deny` at the top level and per route."""

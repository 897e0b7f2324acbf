"""HTTP/1.1 on both sides: the listener (server.py) and the upstream pools (client.py)."""

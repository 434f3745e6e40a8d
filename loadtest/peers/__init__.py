"""Peers run beside imagestream on the same machine and inputs (``make bench-peers``)."""

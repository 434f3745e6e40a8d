"""Load generator and report (throughput, latency percentiles, plots)."""

"""What every process runs beside its work: metrics, lag, threads, signals."""

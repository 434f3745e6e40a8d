"""The consumer service: subscribers, delivery, commits and dead letters."""

"""The embedded stack (broker, S3 server, topics) and the demo."""

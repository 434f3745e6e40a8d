"""One micro-batch of one image task: records, S3, decode, results."""

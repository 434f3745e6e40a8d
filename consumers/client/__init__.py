"""The producer side: images into S3 and Kafka, results back, on a terminal."""

"""The HTTP gateway: embeddings, zero-shot labels, image submission and results."""

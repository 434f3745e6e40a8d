"""Milvus: collections, filter expressions, errors and keys."""

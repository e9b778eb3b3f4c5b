"""Blob storage of chunks: one interface, a local-disk and an S3 implementation."""

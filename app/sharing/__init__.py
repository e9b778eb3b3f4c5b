"""Sharing: per-user grants (ACL), "Shared with me", public links."""

"""Background upkeep of stored files, run by the worker: garbage collection, scrubbing,
version and trash retention, expiry of abandoned uploads.
"""

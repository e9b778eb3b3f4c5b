"""The coffer client: API access, chunked transfers, and (later) folder sync."""

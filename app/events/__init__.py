"""The change feed: per-recipient event log with cursors, long-poll and WebSocket push."""

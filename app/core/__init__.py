"""Building blocks with no knowledge of Coffer's domains: clock, crypto, throttles, HTTP helpers.

Nothing here imports another part of the app (an import-linter contract keeps it so).
"""

"""Coffer: a self-hosted file sync and share service (web app, API, storage)."""

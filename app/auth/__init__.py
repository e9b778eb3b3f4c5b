"""Accounts, browser sessions and device tokens."""

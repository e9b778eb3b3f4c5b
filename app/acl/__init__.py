"""Who may touch a file, and who hears of a change to it: access, audience, derived views.

Below the file services and the event feed, which both use it; above the database.
"""

"""The browser UI: server-rendered pages (htmx fragments) and their templates."""

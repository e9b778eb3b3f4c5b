"""The browser UI: pages rendered on the server, enhanced by htmx."""

"""Static assets of the browser UI (vendored htmx, the stylesheet, ES modules), served
at /static."""

"""WebDAV at /dav/: the user's whole tree for Finder, Explorer, GNOME Files, rclone and
davfs2 (wsgidav does the protocol; app/dav/provider.py maps it onto Coffer's services)."""

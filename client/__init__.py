"""The `coffer` sync client. One job per module:

- cli: the commands; live: `coffer sync` until stopped (watcher: local changes,
  feed: the server's change feed);
- sync: the full and targeted passes and direct event application, which ask
  planner (the pure three-way decision) what to do with each path;
- scanner: the local tree and its hashes; remote: the server's tree and how to address it;
  ignore: which paths are left alone;
- transfer: verified uploads and downloads; hashing: chunk and content hashes;
- api: HTTP only; errors: the client's exception types; state: the SQLite sync state;
  config: the login file.

Of the server's package it imports only `app.protocol` (hashes, chunk sizes, events).
"""

// Coffer's browser client, entry point. Pages render on the server and htmx swaps #listing;
// these modules add what htmx does not: chunked resumable uploads, row actions, the share
// and version dialogs, and live updates. Loaded as <script type="module"> (deferred, after
// htmx) on pages for signed-in users.

import { setUpRowActions } from "./actions.js";
import { setUpDrops } from "./drops.js";
import { setUpNewFolder } from "./folders.js";
import { startFeed } from "./live.js";
import { setUpShareDialog } from "./share-dialog.js";
import { setUpVersionsDialog } from "./versions-dialog.js";

function start() {
  setUpRowActions();
  setUpDrops();
  setUpNewFolder();
  setUpShareDialog();
  setUpVersionsDialog();
  startFeed();
}

// A module runs once the document is parsed, before DOMContentLoaded.
if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
else start();

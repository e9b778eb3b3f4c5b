// Coffer's browser client, entry point. Pages render on the server and htmx swaps #listing;
// these modules add what htmx does not: chunked resumable uploads, row actions, selection
// and bulk actions, keyboard use, the grid and lightbox, the share and version dialogs,
// the activity panel, the storage meter, and live updates. Loaded as <script type="module">
// (deferred, after htmx) on pages for signed-in users.

import { setUpRowActions } from "./actions.js";
import { setUpActivity } from "./activity.js";
import { setUpBulkShare } from "./bulk-share.js";
import { setUpDrops } from "./drops.js";
import { setUpNewFolder } from "./folders.js";
import { setUpGrid } from "./grid.js";
import { setUpKeyboard } from "./keyboard.js";
import { setUpListing } from "./listing.js";
import { startFeed } from "./live.js";
import { setUpSelection } from "./selection.js";
import { setUpShareDialog } from "./share-dialog.js";
import { setUpStorage } from "./storage.js";
import { setUpVersionsDialog } from "./versions-dialog.js";

function start() {
  setUpListing();  // first: it records rows as rendered before others add their state
  setUpRowActions();
  setUpSelection();
  setUpKeyboard();
  setUpGrid();
  setUpBulkShare();
  setUpActivity();
  setUpStorage();
  setUpDrops();
  setUpNewFolder();
  setUpShareDialog();
  setUpVersionsDialog();
  startFeed();
}

// A module runs once the document is parsed, before DOMContentLoaded.
if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
else start();

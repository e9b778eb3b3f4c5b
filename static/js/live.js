// Live updates: the event feed over the WebSocket /api/ws, falling back to long-polls on
// /api/file/events when sockets are blocked. Any event refreshes the listing; a share made
// to us by someone else also shows a toast. body[data-feed] says which transport is in use.

import { api } from "./api.js";
import { listing, refreshListing } from "./listing.js";
import { toast } from "./toast.js";

const me = document.querySelector('meta[name="username"]')?.content || "";
const feed = { cursor: null, failures: 0, mode: "socket" };

function handleEvents(events) {
  if (!events.length) return;
  for (const e of events) {
    // The owner hears of their own share too; only the recipient gets the toast.
    if (e.type === "share.added" && e.actor && e.actor !== me) {
      toast(`${e.actor} shared ${e.path.replace(/^\//, "")} with you`);
    }
  }
  refreshListing();
}

function openSocket() {
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  const ws = new WebSocket(`${proto}//${location.host}/api/ws?cursor=${feed.cursor}`);
  let openedAt = 0;
  ws.onopen = () => { openedAt = performance.now(); };
  ws.onmessage = (msg) => {
    const event = JSON.parse(msg.data);
    feed.failures = 0;
    if (event.type === "heartbeat") { feed.cursor = event.cursor; return; }
    feed.cursor = event.seq;
    handleEvents([event]);
  };
  ws.onclose = () => {
    // A socket refused, or dropped at once, twice in a row: a proxy or firewall blocks
    // WebSockets, so long-poll (and try the socket again in a minute).
    if (!openedAt || performance.now() - openedAt < 3000) feed.failures++;
    if (feed.failures >= 2) longPoll(60000);
    else setTimeout(openSocket, 500 * feed.failures + 200);
  };
}

async function longPoll(forMs) {
  feed.mode = "poll";
  document.body.dataset.feed = "poll";
  const until = performance.now() + forMs;
  let delay = 500;
  while (performance.now() < until) {
    try {
      const body = await api("GET", `/api/file/events?cursor=${feed.cursor}&wait=25`);
      feed.cursor = body.cursor;
      handleEvents(body.events);
      delay = 500;
    } catch (err) {
      await new Promise((r) => setTimeout(r, delay));
      delay = Math.min(delay * 2, 30000);
    }
  }
  feed.failures = 0;
  feed.mode = "socket";
  document.body.dataset.feed = "socket";
  openSocket();
}

async function connect() {
  if (!listing()) return;  // only pages with a listing follow the feed
  // The server read the cursor before rendering the page's state: follow from there, so
  // nothing that changed while the page loaded is missed.
  const rendered = document.querySelector('meta[name="feed-cursor"]')?.content;
  if (rendered) feed.cursor = Number(rendered);
  else feed.cursor = (await api("GET", "/api/file/events?cursor=latest")).cursor;
  document.body.dataset.feed = "socket";
  openSocket();
}

export function startFeed() {
  connect().catch(() => longPoll(60000));
}

// arrwDB dashboard: libraries, the live event feed (SSE), a live search (a watch) and the
// connection statistics.
// Plain JavaScript, no dependencies. Everything shown is put in the page as text
// (textContent), never parsed as HTML.
"use strict";

const KEY = "arrwdb.key"; // sessionStorage: this tab only (the API page reads it too)
const FEED_LIMIT = 200; // events kept in the feed
const STATS_EVERY_MS = 5000;
const REFRESH_DELAY_MS = 250; // libraries are read again this long after a change event
const RETRY_MS = [1000, 2000, 5000, 10000, 30000]; // reopening a stream that failed
const EVENT_TYPES = [
  "library.created",
  "library.updated",
  "library.deleted",
  "document.added",
  "document.updated",
  "document.deleted",
  "stream.reset",
  "stream.closed",
];

const $ = (id) => document.getElementById(id);

const state = {
  libraries: [],
  subscribers: new Map(), // library id -> WebSocket subscriptions + SSE streams
  source: null, // the EventSource
  lastEventId: null,
  retries: 0,
  retryTimer: null,
  statsTimer: null,
  refreshTimer: null,
  startTimer: null,
  running: false,
  events: 0,
};

class Unauthorized extends Error {}

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function storedKey() {
  return sessionStorage.getItem(KEY);
}

async function problemMessage(response) {
  try {
    const problem = await response.json();
    return problem.detail || problem.title || `HTTP ${response.status}`;
  } catch {
    return `HTTP ${response.status}`;
  }
}

async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  const key = storedKey();
  if (key) headers.Authorization = `Bearer ${key}`;
  const init = { method, headers, cache: "no-store", credentials: "omit" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  if (response.status === 401) throw new Unauthorized(await problemMessage(response));
  if (!response.ok) throw new ApiError(response.status, await problemMessage(response));
  return response.json();
}

// -- DOM helpers -----------------------------------------------------------------------------

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const [text, className] of cells) tr.append(el("td", text, className));
  return tr;
}

function showError(message) {
  const box = $("error");
  box.textContent = message || "";
  box.hidden = !message;
}

function setConnection(stateName, label) {
  const badge = $("connection");
  badge.dataset.state = stateName;
  badge.textContent = label;
}

function clock(timestamp) {
  const date = timestamp ? new Date(timestamp) : new Date();
  return Number.isNaN(date.getTime()) ? String(timestamp) : date.toLocaleTimeString();
}

// -- the key ---------------------------------------------------------------------------------

function askForKey(message) {
  stop();
  $("main").hidden = true;
  $("key-panel").hidden = false;
  $("key-message").textContent = message;
  $("forget-key").hidden = storedKey() === null;
  setConnection("locked", "API key needed");
  $("key-input").focus();
}

function refused(error) {
  if (storedKey() !== null) {
    sessionStorage.removeItem(KEY);
    askForKey(`The key was refused (${error.message}). Enter a valid key.`);
  } else {
    askForKey("This server needs an API key. Enter it once for this tab.");
  }
}

$("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const key = $("key-input").value.trim();
  if (!key) return;
  sessionStorage.setItem(KEY, key);
  $("key-input").value = "";
  start();
});

$("forget-key").addEventListener("click", () => {
  live.generation += 1;
  stopLive(); // while the key is still there to delete the search's watch with
  sessionStorage.removeItem(KEY);
  askForKey("The key is forgotten. Enter a key to go on.");
});

// -- libraries -------------------------------------------------------------------------------

async function refreshLibraries() {
  const answer = await api("GET", "/v1/libraries");
  state.libraries = answer.libraries;
  renderLibraries();
  showError("");
}

function scheduleRefresh() {
  if (state.refreshTimer !== null) return;
  state.refreshTimer = setTimeout(async () => {
    state.refreshTimer = null;
    try {
      await refreshLibraries();
    } catch (error) {
      handle(error);
    }
  }, REFRESH_DELAY_MS);
}

function renderLibraries() {
  const body = $("libraries").tBodies[0];
  const rows = state.libraries.map((library) => {
    const tr = row([
      [library.name, "name"],
      [library.document_count, "num documents"],
      [library.chunk_count, "num chunks"],
      [library.dimension ?? "–", "num"],
      [state.subscribers.get(library.id) ?? 0, "num"],
      [library.id, "id"],
    ]);
    tr.dataset.libraryId = library.id;
    return tr;
  });
  body.replaceChildren(...rows);
  $("libraries-empty").hidden = rows.length > 0;

  const select = $("search-library");
  const chosen = select.value;
  select.replaceChildren(
    ...state.libraries.map((library) => {
      const option = el("option", library.name);
      option.value = library.id;
      return option;
    }),
  );
  if (state.libraries.some((library) => library.id === chosen)) select.value = chosen;
}

function libraryName(id) {
  if (!id) return "every library";
  const library = state.libraries.find((candidate) => candidate.id === id);
  return library ? library.name : id;
}

// -- the event feed --------------------------------------------------------------------------

function openEvents() {
  closeEvents();
  const params = new URLSearchParams();
  const key = storedKey();
  if (key) params.set("access_token", key); // EventSource cannot send headers
  if (state.lastEventId !== null) params.set("since", state.lastEventId); // after a failure
  const query = params.toString();
  const source = new EventSource(query ? `/v1/events?${query}` : "/v1/events");
  state.source = source;
  setConnection("connecting", "connecting…");
  source.onopen = () => {
    state.retries = 0;
    setConnection("live", "live");
  };
  source.onerror = () => {
    if (state.source !== source) return;
    if (source.readyState === EventSource.CLOSED) {
      // refused (a 401, 429, 503...): EventSource gives up; find out why, then try again
      setConnection("down", "disconnected");
      retryEvents();
    } else {
      // the stream ended: EventSource reconnects by itself, with Last-Event-ID
      setConnection("connecting", "reconnecting…");
    }
  };
  for (const type of EVENT_TYPES) source.addEventListener(type, onEvent);
}

function closeEvents() {
  if (state.source !== null) {
    state.source.close();
    state.source = null;
  }
  if (state.retryTimer !== null) {
    clearTimeout(state.retryTimer);
    state.retryTimer = null;
  }
}

function retryEvents() {
  closeEvents();
  const delay = RETRY_MS[Math.min(state.retries, RETRY_MS.length - 1)];
  state.retries += 1;
  state.retryTimer = setTimeout(async () => {
    state.retryTimer = null;
    try {
      await refreshLibraries(); // a 401 here asks for the key
    } catch (error) {
      handle(error);
      if (!state.running) return;
    }
    if (state.running) openEvents();
  }, delay);
}

function onEvent(message) {
  let envelope;
  try {
    envelope = JSON.parse(message.data);
  } catch {
    return;
  }
  state.lastEventId = message.lastEventId || envelope.id || state.lastEventId;
  addToFeed(envelope);
  const type = envelope.type;
  if (type === "stream.reset") {
    scheduleRefresh(); // events were missed: read the libraries again
  } else if (type === "stream.closed") {
    if (envelope.data && envelope.data.reason === "unauthorized") {
      refused(new Unauthorized("it was revoked"));
    }
  } else {
    scheduleRefresh();
  }
}

function summary(envelope) {
  const data = envelope.data || {};
  switch (envelope.type) {
    case "document.added":
    case "document.updated":
      return `${data.title || data.document_id} (${data.num_chunks} chunk${data.num_chunks === 1 ? "" : "s"})`;
    case "document.deleted":
      return data.title || data.document_id;
    case "library.created":
    case "library.updated":
    case "library.deleted":
      return data.name || "";
    case "stream.reset":
      return `events after ${data.requested} are no longer kept; the feed goes on from ${data.resume_from}`;
    case "stream.closed":
      return `the server ended the stream (${data.reason}); reconnecting from ${data.last_id}`;
    default:
      return "";
  }
}

function addToFeed(envelope) {
  const item = document.createElement("li");
  item.dataset.type = envelope.type;
  if (envelope.type.startsWith("stream.")) item.className = "notice";
  item.append(
    el("time", clock(envelope.timestamp)),
    el("span", envelope.type, "type"),
    el("span", libraryName(envelope.library_id), "library"),
    el("span", `#${envelope.id}`, "id"),
    el("span", summary(envelope), "summary"),
  );
  const feed = $("events");
  feed.prepend(item);
  while (feed.childElementCount > FEED_LIMIT) feed.lastElementChild.remove();
  state.events += 1;
  $("events-empty").hidden = true;
  $("events-count").textContent =
    state.events > FEED_LIMIT ? `(last ${FEED_LIMIT} of ${state.events})` : `(${state.events})`;
}

// -- connection statistics -------------------------------------------------------------------

async function refreshStats() {
  try {
    const stats = await api("GET", "/v1/websockets/stats");
    $("stat-ws").textContent = stats.total_connections;
    $("stat-subscribed").textContent = stats.libraries_with_subscribers;
    $("stat-sse").textContent = stats.sse_streams;
    state.subscribers = new Map();
    const add = (counts) => {
      for (const [id, n] of Object.entries(counts || {})) {
        state.subscribers.set(id, (state.subscribers.get(id) || 0) + n);
      }
    };
    add(stats.subscriptions_by_library);
    add(stats.sse_streams_by_library);
    renderLibraries();
    $("stats-updated").textContent = `updated ${clock()}`;
  } catch (error) {
    if (error instanceof ApiError && error.status === 404) {
      $("stats-updated").textContent = "not served here (the WebSocket transport is off)";
      return;
    }
    handle(error);
  }
}

// -- search: a live top-k ------------------------------------------------------------------
// A search registers a watch of the same query (POST .../watches) and shows its results: the
// watch.ready list, then each watch.entered / watch.left applied in order, so the table is the
// current top-k. A new search, or leaving the page, deletes the watch. When the watch cannot be
// made (no embedder, a limit...), the search is done once instead, and the page says why.

const WATCH_EVENT_TYPES = [
  "watch.ready",
  "watch.entered",
  "watch.left",
  "stream.reset",
  "stream.closed",
];
const WATCH_ENDED = new Set(["watch_deleted", "watch_expired", "library_deleted"]);
const INFO_LIMIT = 2000; // titles and texts of chunks kept, beyond the shown ones

const live = {
  generation: 0, // counts searches: an answer to an older one is dropped
  watch: null, // {libraryId, id}: the watch shown
  source: null, // its EventSource
  lastId: null, // the last watch event id (to resume after a failure)
  ready: false, // watch.ready seen
  retries: 0,
  retryTimer: null,
  rows: [], // the top-k: [{chunk_id, document_id, score}] best first
  info: new Map(), // chunk id -> {title, text}
  reading: new Set(), // document ids being read for their chunks
  updated: null, // when the list last changed
  asked: null, // {libraryId, query, k}: the search shown
};

function watchPath(watch) {
  const library = encodeURIComponent(watch.libraryId);
  return `/v1/libraries/${library}/watches/${encodeURIComponent(watch.id)}`;
}

function setLive(stateName, label) {
  const badge = $("search-live");
  badge.hidden = false;
  badge.dataset.state = stateName;
  badge.textContent = label;
}

function plural(n) {
  return `${n} result${n === 1 ? "" : "s"}`;
}

// Delete a watch; keepalive lets the request outlive the page (pagehide). Errors are ignored:
// a watch nobody reads expires by itself.
function dropWatch(watch, keepalive = false) {
  const headers = {};
  const key = storedKey();
  if (key) headers.Authorization = `Bearer ${key}`;
  return fetch(watchPath(watch), {
    method: "DELETE",
    headers,
    keepalive,
    cache: "no-store",
    credentials: "omit",
  }).catch(() => undefined);
}

function closeWatchSource() {
  if (live.source !== null) {
    live.source.close();
    live.source = null;
  }
  if (live.retryTimer !== null) {
    clearTimeout(live.retryTimer);
    live.retryTimer = null;
  }
}

// Stop following the shown watch and delete it; the table stays as it was.
function stopLive(keepalive = false) {
  closeWatchSource();
  const watch = live.watch;
  live.watch = null;
  if (watch === null) return Promise.resolve();
  setLive("idle", "stopped");
  return dropWatch(watch, keepalive);
}

function openWatch() {
  closeWatchSource();
  const watch = live.watch;
  const params = new URLSearchParams();
  const key = storedKey();
  if (key) params.set("access_token", key);
  if (live.lastId !== null) params.set("since", live.lastId); // after a failure
  const query = params.toString();
  const source = new EventSource(`${watchPath(watch)}/events${query ? `?${query}` : ""}`);
  live.source = source;
  if (!live.ready) setLive("connecting", "connecting…");
  source.onopen = () => {
    live.retries = 0;
    if (live.ready) setLive("live", "live");
  };
  source.onerror = () => {
    if (live.source !== source) return;
    if (source.readyState === EventSource.CLOSED) {
      setLive("down", "not live");
      retryWatch(watch);
    } else {
      setLive("connecting", "reconnecting…"); // EventSource resumes with Last-Event-ID
    }
  };
  const listener = (message) => onWatchEvent(source, message);
  for (const type of WATCH_EVENT_TYPES) source.addEventListener(type, listener);
}

// The stream was refused or failed: find out whether the watch is still there, then reopen it.
function retryWatch(watch) {
  closeWatchSource();
  const delay = RETRY_MS[Math.min(live.retries, RETRY_MS.length - 1)];
  live.retries += 1;
  live.retryTimer = setTimeout(async () => {
    live.retryTimer = null;
    if (live.watch !== watch) return;
    try {
      await api("GET", watchPath(watch));
    } catch (error) {
      if (live.watch !== watch) return;
      if (error instanceof Unauthorized) {
        refused(error);
      } else if (error instanceof ApiError && error.status === 404) {
        ended("the live query is gone");
      } else {
        retryWatch(watch);
      }
      return;
    }
    if (live.watch === watch) openWatch();
  }, delay);
}

// The watch ended on the server (deleted, expired, its library deleted): the table stays.
function ended(why) {
  closeWatchSource();
  live.watch = null;
  setLive("down", "ended");
  $("search-status").textContent =
    `${plural(live.rows.length)}, no longer updated: ${why}; search again to follow the query`;
}

function onWatchEvent(source, message) {
  if (live.source !== source) return;
  let envelope;
  try {
    envelope = JSON.parse(message.data);
  } catch {
    return;
  }
  const data = envelope.data || {};
  if (message.lastEventId) live.lastId = message.lastEventId;
  switch (envelope.type) {
    case "watch.ready": // the whole list (first, or again after a stream.reset)
      live.rows = (data.results || []).map((hit) => {
        live.info.set(hit.chunk_id, { title: hit.document_title, text: hit.text ?? "" });
        return { chunk_id: hit.chunk_id, document_id: hit.document_id, score: hit.score };
      });
      live.ready = true;
      setLive("live", "live");
      break;
    case "watch.entered": {
      const at = Math.max(0, Math.min(Number(data.rank) || 0, live.rows.length));
      live.rows = live.rows.filter((hit) => hit.chunk_id !== data.chunk_id);
      live.rows.splice(at, 0, {
        chunk_id: data.chunk_id,
        document_id: data.document_id,
        score: data.score,
      });
      if (!live.info.has(data.chunk_id)) readDocument(data.document_id);
      break;
    }
    case "watch.left":
      live.rows = live.rows.filter((hit) => hit.chunk_id !== data.chunk_id);
      break;
    case "stream.closed":
      if (data.reason === "unauthorized") {
        refused(new Unauthorized("it was revoked"));
      } else if (WATCH_ENDED.has(data.reason)) {
        ended(`the live query ended (${data.reason})`);
      } // else (the server stopping, a slow reader): EventSource reconnects and resumes
      return;
    default:
      return; // stream.reset: a fresh watch.ready follows
  }
  live.updated = envelope.timestamp;
  renderResults();
}

// The title and text of a chunk that entered: read with its document (the event has its ids).
async function readDocument(documentId) {
  const watch = live.watch;
  if (watch === null || live.reading.has(documentId)) return;
  live.reading.add(documentId);
  try {
    const library = encodeURIComponent(watch.libraryId);
    const doc = await api(
      "GET",
      `/v1/libraries/${library}/documents/${encodeURIComponent(documentId)}`,
    );
    if (live.watch !== watch) return;
    if (live.info.size > INFO_LIMIT) {
      const shown = new Set(live.rows.map((hit) => hit.chunk_id));
      for (const id of live.info.keys()) if (!shown.has(id)) live.info.delete(id);
    }
    for (const chunk of doc.chunks || []) {
      live.info.set(chunk.id, { title: doc.title, text: chunk.text ?? "" });
    }
    renderResults();
  } catch (error) {
    if (error instanceof Unauthorized) refused(error);
    // else (deleted since): its chunk leaves the list with the next event
  } finally {
    live.reading.delete(documentId);
  }
}

function renderResults() {
  const rows = live.rows.map((hit) => {
    const info = live.info.get(hit.chunk_id);
    const tr = row([
      [Number(hit.score).toFixed(4), "num score"],
      [info ? info.title : hit.document_id, "title"],
      [info ? info.text : "…", "text"],
    ]);
    tr.dataset.chunkId = hit.chunk_id;
    return tr;
  });
  $("results").tBodies[0].replaceChildren(...rows);
  $("results").hidden = rows.length === 0;
  $("search-status").textContent =
    `${plural(rows.length)}, kept up to date (changed ${clock(live.updated)})`;
}

// A one-off search: when no watch could be made.
async function searchOnce(libraryId, query, k, why, generation) {
  const status = $("search-status");
  try {
    const answer = await api("POST", `/v1/libraries/${encodeURIComponent(libraryId)}/search`, {
      query_text: query,
      k,
    });
    if (generation !== live.generation) return;
    live.rows = [];
    const rows = answer.results.map((hit) =>
      row([
        [Number(hit.score).toFixed(4), "num score"],
        [hit.document_title, "title"],
        [hit.text ?? "", "text"],
      ]),
    );
    $("results").tBodies[0].replaceChildren(...rows);
    $("results").hidden = rows.length === 0;
    const took = Number(answer.took_ms).toFixed(1);
    status.textContent = `${plural(rows.length)} in ${took} ms; not live: ${why}`;
  } catch (error) {
    if (generation !== live.generation) return;
    $("results").hidden = true;
    if (error instanceof Unauthorized) {
      refused(error);
    } else {
      status.textContent = `search failed: ${error.message}`;
    }
  }
}

async function search(libraryId, query, k) {
  const generation = ++live.generation;
  live.asked = { libraryId, query, k };
  const status = $("search-status");
  const previous = stopLive(); // deleted first: it would count against the limits
  live.rows = [];
  live.info = new Map();
  live.lastId = null;
  live.ready = false;
  live.retries = 0;
  status.textContent = "searching…";
  setLive("connecting", "connecting…");
  let made = null;
  let why = null;
  try {
    await previous;
    made = await api("POST", `/v1/libraries/${encodeURIComponent(libraryId)}/watches`, {
      query_text: query,
      k,
    });
  } catch (error) {
    if (error instanceof Unauthorized) {
      if (generation === live.generation) refused(error);
      return;
    }
    why = `the live query was refused (${error.message})`;
  }
  const watch = made === null ? null : { libraryId, id: made.id };
  if (generation !== live.generation) {
    if (watch !== null) dropWatch(watch); // a newer search came first
    return;
  }
  if (watch === null) {
    setLive("down", "not live");
    await searchOnce(libraryId, query, k, why, generation);
    return;
  }
  live.watch = watch;
  openWatch();
}

$("search-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const libraryId = $("search-library").value;
  const query = $("search-query").value.trim();
  const k = Number.parseInt($("search-k").value, 10) || 5;
  if (!libraryId || !query) return;
  search(libraryId, query, k);
});

// Leaving the page deletes its watch (the request outlives the page).
window.addEventListener("pagehide", () => {
  live.generation += 1;
  stopLive(true);
});

// Back to the page from the browser's history cache: its watch was deleted, make it again.
window.addEventListener("pageshow", (event) => {
  if (event.persisted && state.running && live.asked !== null) {
    const { libraryId, query, k } = live.asked;
    search(libraryId, query, k);
  }
});

// -- start and stop --------------------------------------------------------------------------

function handle(error) {
  if (error instanceof Unauthorized) {
    refused(error);
  } else {
    showError(`arrwDB: ${error.message}`);
  }
}

function stop() {
  state.running = false;
  live.generation += 1;
  stopLive();
  clearTimeout(state.startTimer);
  state.startTimer = null;
  clearTimeout(state.refreshTimer);
  state.refreshTimer = null;
  closeEvents();
  clearInterval(state.statsTimer);
  state.statsTimer = null;
}

async function start() {
  stop();
  showError("");
  try {
    await refreshLibraries();
  } catch (error) {
    if (error instanceof Unauthorized) {
      refused(error);
    } else {
      showError(`cannot reach arrwDB (${error.message}); trying again in a few seconds`);
      setConnection("down", "unreachable");
      state.startTimer = setTimeout(start, RETRY_MS[2]);
    }
    return;
  }
  state.running = true;
  $("key-panel").hidden = true;
  $("main").hidden = false;
  $("forget-key").hidden = storedKey() === null;
  openEvents();
  refreshStats();
  state.statsTimer = setInterval(refreshStats, STATS_EVERY_MS);
}

start();

// arrwDB dashboard: libraries, the live event feed (SSE), search and connection statistics.
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

// -- search ----------------------------------------------------------------------------------

$("search-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const libraryId = $("search-library").value;
  const query = $("search-query").value.trim();
  const k = Number.parseInt($("search-k").value, 10) || 5;
  const status = $("search-status");
  if (!libraryId || !query) return;
  status.textContent = "searching…";
  try {
    const answer = await api("POST", `/v1/libraries/${encodeURIComponent(libraryId)}/search`, {
      query_text: query,
      k,
    });
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
    status.textContent = `${rows.length} result${rows.length === 1 ? "" : "s"} in ${took} ms`;
  } catch (error) {
    $("results").hidden = true;
    if (error instanceof Unauthorized) {
      refused(error);
    } else {
      status.textContent = `search failed: ${error.message}`;
    }
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

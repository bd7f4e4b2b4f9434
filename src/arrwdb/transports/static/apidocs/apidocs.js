// arrwDB's API page: Swagger UI over the server's OpenAPI document. On a server with API
// keys, the key the dashboard keeps for this tab (sessionStorage) is sent with every request
// made from the page; without one, the page asks for it.
"use strict";

const KEY = "arrwdb.key";
const root = document.getElementById("swagger");
const form = document.getElementById("key-form");
const input = document.getElementById("key-input");
const keyMessage = document.getElementById("key-message");
const loadMessage = document.getElementById("load-message");

function storedKey() {
  return sessionStorage.getItem(KEY);
}

function withKey(request) {
  const key = storedKey();
  const headers = request.headers || (request.headers = {});
  if (key && !headers.Authorization && !headers.authorization) {
    headers.Authorization = `Bearer ${key}`;
  }
  return request;
}

function ask(message) {
  form.hidden = false;
  keyMessage.textContent = message;
  loadMessage.textContent = "";
  input.focus();
}

async function load() {
  const headers = { Accept: "application/json" };
  const key = storedKey();
  if (key) headers.Authorization = `Bearer ${key}`;
  let response;
  try {
    response = await fetch(root.dataset.specUrl, { headers, cache: "no-store" });
  } catch (error) {
    loadMessage.textContent = `cannot load the API document: ${error.message}`;
    return;
  }
  if (response.status === 401) {
    if (key) {
      sessionStorage.removeItem(KEY);
      ask("The key was refused; enter a valid one.");
    } else {
      ask("This server needs an API key.");
    }
    return;
  }
  if (!response.ok) {
    loadMessage.textContent = `cannot load the API document: HTTP ${response.status}`;
    return;
  }
  const spec = await response.json();
  form.hidden = true;
  loadMessage.textContent = "";
  window.ui = SwaggerUIBundle({
    spec,
    dom_id: "#swagger",
    deepLinking: true,
    showExtensions: true,
    showCommonExtensions: true,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
    requestInterceptor: withKey,
  });
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  const key = input.value.trim();
  if (!key) return;
  sessionStorage.setItem(KEY, key);
  input.value = "";
  load();
});

load();

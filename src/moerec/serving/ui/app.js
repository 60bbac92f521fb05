// The playground page: sign in, ask for recommendations, click, watch the list and the service.

import * as api from "./api.js";
import { drawExpertLoad, drawLines } from "./charts.js";
import * as prom from "./metrics.js";

const $ = (id) => document.getElementById(id);
const RECOMMENDATION_ROUTES = ["/v1/users/{user_id}/recommendations", "/v1/recommendations"];
const METRICS_EVERY_MS = 2000;
const LATENCY_POINTS = 60;
const TITLE_LOOKUPS = 20; // per answer: item lookups count against the user's rate limit

const state = {
  history: [], // the anonymous history, oldest first
  previous: null, // the last answer's item ids, best first (to show what changed)
  subject: null, // {mode, userId} of the answer on screen
  titles: new Map(), // item id → title or null
  scrape: null, // the last /metrics latency buckets
  p50: [],
  p95: [],
};

// --------------------------------------------------------------------------- small helpers

function element(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function setStatus(text) {
  $("status").textContent = text;
}

function showError(error) {
  const box = $("error");
  if (!error) {
    box.hidden = true;
    box.textContent = "";
    return;
  }
  let text = error.message || String(error);
  if (error.status === 401) text += " — paste a new token in step 1.";
  box.textContent = text;
  box.hidden = false;
}

function mode() {
  return $("mode-anonymous").checked ? "anonymous" : "user";
}

// --------------------------------------------------------------------------- sign in

function showIdentity() {
  const token = api.savedToken();
  const who = $("who");
  if (!token) {
    who.textContent = "Not signed in. The token is kept in this tab only (sessionStorage).";
    return;
  }
  const c = api.claims(token);
  if (!c) {
    who.textContent = "Signed in with a token that is not a JWT; the service will refuse it.";
    return;
  }
  const expires = c.exp ? new Date(c.exp * 1000).toLocaleString() : "never";
  who.textContent = `Signed in as ${c.sub} (scopes: ${c.scope || "none"}; expires ${expires}).`;
  if (c.sub && mode() === "user" && !$("user-id").dataset.touched) $("user-id").value = c.sub;
}

function signIn(event) {
  event.preventDefault();
  const token = $("token").value.trim();
  api.saveToken(token);
  $("token").value = "";
  showError(null);
  showIdentity();
  setStatus(token ? "Signed in. Ask for recommendations in step 2." : "Signed out.");
}

function signOut() {
  api.saveToken("");
  showIdentity();
  setStatus("Signed out.");
}

// --------------------------------------------------------------------------- anonymous history

function renderHistory() {
  const list = $("history-chips");
  list.replaceChildren();
  state.history.forEach((item, index) => {
    const chip = element("li", null, "chip");
    chip.append(element("span", label(item)));
    const remove = element("button", "×", "chip-remove");
    remove.type = "button";
    remove.title = `remove ${item}`;
    remove.addEventListener("click", () => {
      state.history.splice(index, 1);
      renderHistory();
    });
    chip.append(remove);
    list.append(chip);
  });
}

function addToHistory(itemId) {
  state.history.push(itemId);
  renderHistory();
}

let searchTimer = null;

function onSearchInput() {
  clearTimeout(searchTimer);
  searchTimer = setTimeout(runSearch, 250);
}

async function runSearch() {
  const text = $("search").value.trim();
  const list = $("search-results");
  list.replaceChildren();
  if (!text) return;
  try {
    const { body } = await api.searchItems(text);
    if (!body.items.length) list.append(element("li", "nothing found", "muted"));
    for (const item of body.items) {
      state.titles.set(item.item_id, item.title);
      const row = element("li");
      const add = element("button", "add", "secondary");
      add.type = "button";
      add.disabled = !item.known_to_model;
      add.title = item.known_to_model ? "add to the history" : "the model does not know it";
      add.addEventListener("click", () => addToHistory(item.item_id));
      row.append(add, element("span", ` ${item.item_id} `, "item-id"));
      row.append(element("span", item.title || "(no title)"));
      list.append(row);
    }
    showError(null);
  } catch (error) {
    showError(error);
  }
}

// --------------------------------------------------------------------------- recommendations

function label(itemId) {
  const title = state.titles.get(itemId);
  return title ? `${itemId} · ${title}` : itemId;
}

async function lookUpTitles(itemIds) {
  const missing = itemIds.filter((id) => !state.titles.has(id)).slice(0, TITLE_LOOKUPS);
  await Promise.all(
    missing.map(async (id) => {
      try {
        state.titles.set(id, (await api.getItem(id)).body.title);
      } catch {
        state.titles.set(id, null);
      }
    }),
  );
}

async function fetchRecommendations() {
  const k = Number($("k").value) || 10;
  if (mode() === "user") {
    const userId = $("user-id").value.trim();
    if (!userId) throw new Error("enter a user id");
    return { subject: { mode: "user", userId }, answer: await api.recommendForUser(userId, k) };
  }
  if (!state.history.length) throw new Error("add at least one item to the history");
  const answer = await api.recommendForHistory([...state.history], k);
  return { subject: { mode: "anonymous", userId: null }, answer };
}

async function recommend(note) {
  if (!api.savedToken()) {
    showError(new Error("sign in first (step 1)"));
    return;
  }
  $("recommend").disabled = true;
  try {
    const { subject, answer } = await fetchRecommendations();
    const sameSubject =
      state.subject && state.subject.mode === subject.mode && state.subject.userId === subject.userId;
    const before = sameSubject ? state.previous : null;
    state.subject = subject;
    await lookUpTitles(answer.body.items.map((i) => i.item_id));
    render(answer.body, answer.ms, before);
    state.previous = answer.body.items.map((i) => i.item_id);
    const latency = `${answer.ms.toFixed(1)} ms`;
    setStatus(note ? `${note}; list re-fetched in ${latency}.` : `Answered in ${latency}.`);
    showError(null);
    if (subject.mode === "user") showRecent(subject.userId);
    else $("recent").textContent = "";
    scrapeMetrics(); // the charts show this request at once, not at the next tick
  } catch (error) {
    showError(error);
    setStatus("The request failed.");
  } finally {
    $("recommend").disabled = false;
  }
}

function render(body, ms, before) {
  $("meta").hidden = false;
  // During an A/B experiment the arm tells which of the two models answered.
  const arm = body.arm ? ` (${body.arm})` : "";
  $("meta-model").textContent = `${body.model_version}${arm}`;
  $("meta-latency").textContent = `${ms.toFixed(1)} ms (measured in this page)`;
  flag($("meta-cached"), body.cached);
  flag($("meta-fallback"), body.fallback);
  let history = `${body.history_length} items`;
  if (body.unknown_items && body.unknown_items.length) {
    history += ` (${body.unknown_items.length} unknown to the model, ignored)`;
  }
  $("meta-history").textContent = history;
  renderExperts(body.experts || [], body.fallback);
  renderRows(body.items, before);
}

function flag(node, value) {
  node.textContent = value ? "yes" : "no";
  node.className = value ? "flag on" : "flag";
}

function renderExperts(experts, fallback) {
  const box = $("experts");
  box.replaceChildren();
  if (!experts.length) {
    const why = fallback ? "the popularity fallback answered (no model pass)" : "a dense model";
    box.append(element("p", `No expert routing to show: ${why}.`, "muted"));
    return;
  }
  box.append(element("h3", "Experts the scored position used, per MoE layer"));
  for (const layer of experts) {
    const row = element("div", null, "expert-row");
    row.append(element("span", `layer ${layer.layer}`, "expert-layer"));
    layer.experts.forEach((expert, i) => {
      const weight = layer.weights[i];
      const cell = element("span", null, "expert");
      cell.append(element("span", `E${expert}`, "expert-name"));
      const bar = element("span", null, "expert-bar");
      const fill = element("span", null, "expert-fill");
      fill.style.width = `${Math.round(weight * 100)}%`; // CSSOM, allowed by the CSP
      bar.append(fill);
      cell.append(bar, element("span", weight.toFixed(2), "expert-weight"));
      row.append(cell);
    });
    box.append(row);
  }
}

function renderRows(items, before) {
  const table = $("results");
  const body = table.querySelector("tbody");
  body.replaceChildren();
  items.forEach((item, rank) => {
    const row = element("tr");
    row.dataset.item = item.item_id;
    const change = changeOf(item.item_id, rank, before);
    if (change.className) row.classList.add(...change.className.split(" "));
    row.append(
      element("td", rank + 1),
      element("td", change.text, "change"),
      element("td", item.item_id, "item-id"),
      element("td", state.titles.get(item.item_id) || "—"),
      element("td", item.score.toFixed(3), "score"),
    );
    const cell = element("td");
    const button = element("button", "click", "click secondary");
    button.type = "button";
    button.title =
      state.subject.mode === "user"
        ? `post a click on ${item.item_id} for user ${state.subject.userId}`
        : `append ${item.item_id} to the anonymous history`;
    button.addEventListener("click", () => click(item.item_id));
    cell.append(button);
    row.append(cell);
    body.append(row);
  });
  table.hidden = false;
}

function changeOf(itemId, rank, before) {
  if (!before) return { text: "", className: "" };
  const old = before.indexOf(itemId);
  if (old < 0) return { text: "new", className: "new" };
  if (old > rank) return { text: `▲ ${old - rank}`, className: "moved up" };
  if (old < rank) return { text: `▼ ${rank - old}`, className: "moved down" };
  return { text: "=", className: "" };
}

async function click(itemId) {
  const subject = state.subject;
  if (subject.mode === "anonymous") {
    addToHistory(itemId);
    await recommend(`${itemId} appended to the anonymous history`);
    return;
  }
  try {
    const { status, body } = await api.postClick(subject.userId, itemId);
    const what = { 201: "stored", 200: "already stored", 202: "spooled" }[status] || status;
    await recommend(`click on ${itemId} ${what} (key ${body.idempotency_key})`);
  } catch (error) {
    showError(error);
  }
}

async function showRecent(userId) {
  try {
    const { body } = await api.recentEvents(userId);
    const events = body.events.map((e) => `${e.event_type} ${e.item_id}`).join(", ");
    $("recent").textContent = `Latest events of user ${userId}, newest first: ${events}`;
  } catch {
    $("recent").textContent = "";
  }
}

// --------------------------------------------------------------------------- live metrics

async function scrapeMetrics() {
  if (!$("metrics-live").checked) return;
  try {
    const samples = prom.parsePrometheus(await api.metricsText());
    drawExpertLoad($("expert-load"), prom.expertActivations(samples), prom.modelExperts(samples));
    const buckets = prom.latencyBuckets(samples, RECOMMENDATION_ROUTES);
    const delta = prom.bucketDelta(buckets, state.scrape);
    state.scrape = buckets;
    push(state.p50, prom.quantile(0.5, delta));
    push(state.p95, prom.quantile(0.95, delta));
    drawLines(
      $("latency"),
      [
        { label: "p50", points: state.p50 },
        { label: "p95", points: state.p95 },
      ],
      (seconds) => `${(seconds * 1000).toFixed(seconds < 0.01 ? 1 : 0)} ms`,
    );
    showCounters(samples);
  } catch (error) {
    $("counters").textContent = `metrics unavailable: ${error.message}`;
  }
}

function push(points, value) {
  points.push(value === null ? null : value);
  if (points.length > LATENCY_POINTS) points.shift();
}

function showCounters(samples) {
  const hits = prom.total(samples, "moerec_cache_requests_total", (l) => l.result === "hit");
  const misses = prom.total(samples, "moerec_cache_requests_total", (l) => l.result === "miss");
  const requests = prom.total(samples, "moerec_http_requests_total");
  const fallbacks = prom.total(samples, "moerec_fallback_recommendations_total");
  const events = prom.total(samples, "moerec_events_total");
  const inFlight = prom.total(samples, "moerec_http_requests_in_flight");
  const ratio = hits + misses ? `${((100 * hits) / (hits + misses)).toFixed(0)}%` : "–";
  $("counters").textContent =
    `${requests} requests · cache hit ratio ${ratio} (${hits}/${hits + misses}) · ` +
    `${fallbacks} fallbacks · ${events} events · ${inFlight} in flight`;
}

// --------------------------------------------------------------------------- wiring

function onModeChange() {
  const anonymous = mode() === "anonymous";
  $("user-fields").hidden = anonymous;
  $("anonymous-fields").hidden = !anonymous;
}

function start() {
  $("sign-in-form").addEventListener("submit", signIn);
  $("sign-out").addEventListener("click", signOut);
  $("mode-user").addEventListener("change", onModeChange);
  $("mode-anonymous").addEventListener("change", onModeChange);
  $("user-id").addEventListener("input", () => {
    $("user-id").dataset.touched = "1";
  });
  $("search").addEventListener("input", onSearchInput);
  $("request-form").addEventListener("submit", (event) => {
    event.preventDefault();
    recommend(null);
  });
  onModeChange();
  showIdentity();
  if (api.savedToken()) setStatus("Signed in. Ask for recommendations in step 2.");
  scrapeMetrics();
  setInterval(scrapeMetrics, METRICS_EVERY_MS);
}

start();

// The service's HTTP API as the playground uses it: same origin, bearer token, JSON errors.

const TOKEN_KEY = "moerec.playground.token";

export class ApiError extends Error {
  constructor(status, code, message) {
    super(`${status} ${code}: ${message}`);
    this.status = status;
    this.code = code;
  }
}

export function savedToken() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

export function saveToken(token) {
  if (token) sessionStorage.setItem(TOKEN_KEY, token);
  else sessionStorage.removeItem(TOKEN_KEY);
}

// The token's claims, for display only (the service verifies the signature, not the page).
export function claims(token) {
  const part = token.split(".")[1];
  if (!part) return null;
  try {
    const base64 = part.replace(/-/g, "+").replace(/_/g, "/");
    const padded = base64 + "=".repeat((4 - (base64.length % 4)) % 4);
    return JSON.parse(atob(padded));
  } catch {
    return null;
  }
}

// crypto.randomUUID exists only in secure contexts (https, localhost); fall back elsewhere.
export function idempotencyKey() {
  if (crypto.randomUUID) return crypto.randomUUID();
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

// One call: returns {body, status, ms}; throws ApiError with the service's code and message.
export async function call(method, path, body) {
  const headers = { Authorization: `Bearer ${savedToken()}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const started = performance.now();
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  const ms = performance.now() - started;
  let parsed = null;
  try {
    parsed = text ? JSON.parse(text) : null;
  } catch {
    parsed = null;
  }
  if (!response.ok) {
    const error = (parsed && parsed.error) || {};
    throw new ApiError(response.status, error.code || "http_error", error.message || text);
  }
  return { body: parsed, status: response.status, ms };
}

export function recommendForUser(userId, k) {
  const query = new URLSearchParams({ k: String(k) });
  return call("GET", `/v1/users/${encodeURIComponent(userId)}/recommendations?${query}`);
}

export function recommendForHistory(history, k) {
  return call("POST", "/v1/recommendations", { history, k });
}

export function postClick(userId, itemId) {
  return call("POST", "/v1/events", {
    user_id: userId,
    item_id: itemId,
    event_type: "click",
    idempotency_key: idempotencyKey(),
  });
}

export function searchItems(text, limit = 10) {
  const query = new URLSearchParams({ q: text, limit: String(limit) });
  return call("GET", `/v1/items?${query}`);
}

export function getItem(itemId) {
  return call("GET", `/v1/items/${encodeURIComponent(itemId)}`);
}

export function recentEvents(userId, limit = 5) {
  const query = new URLSearchParams({ limit: String(limit) });
  return call("GET", `/v1/users/${encodeURIComponent(userId)}/history?${query}`);
}

// /metrics needs no token (scrapers call it); same origin, so the CSP's connect-src allows it.
export async function metricsText() {
  const response = await fetch("/metrics");
  if (!response.ok) throw new Error(`/metrics answered ${response.status}`);
  return response.text();
}

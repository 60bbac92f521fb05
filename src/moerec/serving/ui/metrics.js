// Prometheus text exposition → samples, and the few figures the playground charts.

const LABEL = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;

function unescape(value) {
  return value.replace(/\\(.)/g, (_, c) => (c === "n" ? "\n" : c));
}

// Every sample line as {name, labels, value}; comments (# HELP, # TYPE) are skipped.
export function parsePrometheus(text) {
  const samples = [];
  for (const raw of text.split("\n")) {
    const line = raw.trim();
    if (!line || line.startsWith("#")) continue;
    const brace = line.indexOf("{");
    let name;
    let rest;
    const labels = {};
    if (brace >= 0) {
      const close = line.lastIndexOf("}");
      name = line.slice(0, brace);
      for (const m of line.slice(brace + 1, close).matchAll(LABEL)) labels[m[1]] = unescape(m[2]);
      rest = line.slice(close + 1).trim();
    } else {
      const space = line.indexOf(" ");
      name = line.slice(0, space);
      rest = line.slice(space + 1).trim();
    }
    const value = parseFloat(rest.split(/\s+/)[0]); // "+Inf", "NaN" parse too
    samples.push({ name, labels, value });
  }
  return samples;
}

// {layer: [count of expert 0, count of expert 1, …]} from moerec_expert_activations_total.
export function expertActivations(samples) {
  const layers = {};
  for (const s of samples) {
    if (s.name !== "moerec_expert_activations_total") continue;
    const layer = Number(s.labels.layer);
    const expert = Number(s.labels.expert);
    layers[layer] = layers[layer] || [];
    layers[layer][expert] = (layers[layer][expert] || 0) + s.value;
  }
  for (const counts of Object.values(layers)) {
    for (let i = 0; i < counts.length; i += 1) counts[i] = counts[i] || 0;
  }
  return layers;
}

// The model's expert count, from moerec_model_info{experts="8"} (0 if unknown).
export function modelExperts(samples) {
  const info = samples.find((s) => s.name === "moerec_model_info" && s.value === 1);
  return info ? Number(info.labels.experts) || 0 : 0;
}

// Cumulative latency buckets {le: count} summed over the given route templates.
export function latencyBuckets(samples, routes) {
  const buckets = new Map();
  for (const s of samples) {
    if (s.name !== "moerec_http_request_duration_seconds_bucket") continue;
    if (!routes.includes(s.labels.route)) continue;
    const le = s.labels.le === "+Inf" ? Infinity : Number(s.labels.le);
    buckets.set(le, (buckets.get(le) || 0) + s.value);
  }
  return buckets;
}

// The requests between two scrapes: bucket-wise difference of cumulative counts.
export function bucketDelta(now, before) {
  const delta = new Map();
  for (const [le, count] of now) delta.set(le, count - ((before && before.get(le)) || 0));
  return delta;
}

// histogram_quantile as Prometheus computes it: linear inside the bucket holding rank q·n.
export function quantile(q, buckets) {
  const bounds = [...buckets.keys()].sort((a, b) => a - b);
  if (!bounds.length) return null;
  const total = buckets.get(bounds[bounds.length - 1]);
  if (!total) return null;
  const rank = q * total;
  let lower = 0;
  let below = 0;
  for (const upper of bounds) {
    const count = buckets.get(upper);
    if (count >= rank) {
      if (upper === Infinity) return lower; // beyond the last finite bucket
      const inBucket = count - below;
      return inBucket > 0 ? lower + ((upper - lower) * (rank - below)) / inBucket : upper;
    }
    lower = upper;
    below = count;
  }
  return lower;
}

export function total(samples, name, filter = () => true) {
  return samples
    .filter((s) => s.name === name && filter(s.labels))
    .reduce((sum, s) => sum + s.value, 0);
}

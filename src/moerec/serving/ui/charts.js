// Two small <canvas> charts: grouped bars (expert load) and lines over time (latency).

const PALETTE = ["#2563eb", "#ea580c", "#16a34a", "#9333ea", "#dc2626", "#0891b2"];
const FONT = "12px system-ui, sans-serif";
const PAD = { left: 58, right: 12, top: 14, bottom: 28 };

// A crisp drawing context at the display's pixel ratio, in CSS pixels.
function context(canvas) {
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth || canvas.width;
  const height = canvas.clientHeight || canvas.height;
  if (canvas.width !== Math.round(width * ratio)) {
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
  }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, width, height);
  ctx.font = FONT;
  return { ctx, width, height };
}

function axes(ctx, width, height, maxY, format) {
  ctx.strokeStyle = "#d4d4d8";
  ctx.fillStyle = "#52525b";
  ctx.textAlign = "right";
  ctx.textBaseline = "middle";
  for (let i = 0; i <= 4; i += 1) {
    const y = PAD.top + ((height - PAD.top - PAD.bottom) * (4 - i)) / 4;
    ctx.beginPath();
    ctx.moveTo(PAD.left, y);
    ctx.lineTo(width - PAD.right, y);
    ctx.stroke();
    ctx.fillText(format((maxY * i) / 4), PAD.left - 6, y);
  }
}

function empty(ctx, width, height, message) {
  ctx.fillStyle = "#71717a";
  ctx.textAlign = "center";
  ctx.textBaseline = "middle";
  ctx.fillText(message, width / 2, height / 2);
}

// layers: {layer: [count per expert]}; drawn as each expert's share of the layer's choices.
export function drawExpertLoad(canvas, layers, numExperts) {
  const { ctx, width, height } = context(canvas);
  const names = Object.keys(layers).sort((a, b) => a - b);
  const experts = Math.max(numExperts, ...names.map((l) => layers[l].length));
  canvas.dataset.bars = String(names.length * experts); // what was drawn, for tests
  if (!names.length || !experts) {
    empty(ctx, width, height, "no routed requests yet");
    return;
  }
  const shares = names.map((l) => {
    const sum = layers[l].reduce((a, b) => a + b, 0) || 1;
    return Array.from({ length: experts }, (_, e) => (layers[l][e] || 0) / sum);
  });
  const maxY = Math.max(0.25, ...shares.flat());
  axes(ctx, width, height, maxY, (v) => `${Math.round(v * 100)}%`);
  const plotW = width - PAD.left - PAD.right;
  const plotH = height - PAD.top - PAD.bottom;
  const group = plotW / experts;
  const bar = Math.max(2, (group * 0.8) / names.length);
  ctx.textAlign = "center";
  ctx.textBaseline = "top";
  for (let e = 0; e < experts; e += 1) {
    names.forEach((_, i) => {
      const h = (shares[i][e] / maxY) * plotH;
      ctx.fillStyle = PALETTE[i % PALETTE.length];
      ctx.fillRect(PAD.left + e * group + group * 0.1 + i * bar, PAD.top + plotH - h, bar - 1, h);
    });
    ctx.fillStyle = "#52525b";
    ctx.fillText(`E${e}`, PAD.left + (e + 0.5) * group, height - PAD.bottom + 6);
  }
  // The uniform share: a balanced router puts every layer's bars on this line.
  const uniformY = PAD.top + plotH - ((1 / experts) / maxY) * plotH;
  ctx.setLineDash([4, 4]);
  ctx.strokeStyle = "#71717a";
  ctx.beginPath();
  ctx.moveTo(PAD.left, uniformY);
  ctx.lineTo(width - PAD.right, uniformY);
  ctx.stroke();
  ctx.setLineDash([]);
  legend(ctx, width, names.map((l) => `layer ${l}`));
}

// series: [{label, points: [number|null]}], all the same length (one point per scrape).
export function drawLines(canvas, series, format) {
  const { ctx, width, height } = context(canvas);
  const values = series.flatMap((s) => s.points).filter((v) => v !== null);
  canvas.dataset.points = String(values.length); // what was drawn, for tests
  if (!values.length) {
    empty(ctx, width, height, "no recommendation requests in the last intervals");
    return;
  }
  const maxY = Math.max(...values) * 1.15 || 1;
  axes(ctx, width, height, maxY, format);
  const plotW = width - PAD.left - PAD.right;
  const plotH = height - PAD.top - PAD.bottom;
  const n = Math.max(...series.map((s) => s.points.length));
  const x = (i) => PAD.left + (n <= 1 ? plotW : (plotW * i) / (n - 1));
  series.forEach((s, index) => {
    ctx.strokeStyle = PALETTE[index % PALETTE.length];
    ctx.fillStyle = ctx.strokeStyle;
    ctx.lineWidth = 2;
    ctx.beginPath();
    let drawing = false;
    s.points.forEach((v, i) => {
      if (v === null) {
        drawing = false;
        return;
      }
      const y = PAD.top + plotH - (v / maxY) * plotH;
      if (drawing) ctx.lineTo(x(i), y);
      else ctx.moveTo(x(i), y);
      drawing = true;
      ctx.fillRect(x(i) - 2, y - 2, 4, 4);
    });
    ctx.stroke();
    ctx.lineWidth = 1;
  });
  ctx.fillStyle = "#52525b";
  ctx.textAlign = "left";
  ctx.textBaseline = "top";
  ctx.fillText("older ←  scrapes  → now", PAD.left, height - PAD.bottom + 6);
  legend(ctx, width, series.map((s) => s.label));
}

function legend(ctx, width, labels) {
  ctx.textAlign = "right";
  ctx.textBaseline = "top";
  labels.forEach((label, i) => {
    const y = PAD.top + i * 16;
    ctx.fillStyle = PALETTE[i % PALETTE.length];
    ctx.fillRect(width - PAD.right - 10, y + 2, 10, 10);
    ctx.fillStyle = "#27272a";
    ctx.fillText(label, width - PAD.right - 14, y);
  });
}

// The attention explorer's script: plain DOM and canvas, no library, nothing fetched.
// Data (see minigpt/explorer.py): n_layer, n_head, T, tokens [{text, label, part, lead}], scores [{name, note,
// low_first, values[layer][head]}], weights (base64: per head, the rows of its lower triangle as bytes
// round(255 sqrt(w))), colormap (base64: 256 RGB triples; entry q colours byte q), header [[key, value]].
"use strict";
(function () {
  const data = JSON.parse(document.getElementById("explorer-data").textContent);
  const L = data.n_layer, H = data.n_head, T = data.T;
  const TRI = (T * (T + 1)) / 2; // bytes per head
  const bytes = fromBase64(data.weights);
  const cmap = fromBase64(data.colormap);
  const FUTURE = [238, 239, 242]; // keys a query may not see (later tokens)
  const PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"];
  const ACCENT = "#e8175d";
  const SIDE_BY_SIDE = matchMedia("(min-width: 1100px)"); // explorer.css sets heads and aside side by side
  const MONO = getComputedStyle(document.documentElement).getPropertyValue("--mono").trim();
  const scores = data.scores.map((s, k) => ({ ...s, color: PALETTE[k % PALETTE.length], ...range(s.values) }));
  const heads = [];
  for (let layer = 0; layer < L; layer++) {
    for (let head = 0; head < H; head++) heads.push({ id: layer * H + head, layer, head });
  }

  const state = {
    rank: null, // index into scores; null: layer x head order
    ascending: false,
    threshold: null, // with a rank: heads on the wrong side of it are hidden
    selected: [], // head ids enlarged, in the order clicked
    focus: null, // the head the token view shows: the last one selected or pointed at
    direction: "query", // token view: "query" lights the keys a token reads, "key" the queries that read it
    token: null, // token index under the pointer, or pinned
    pinned: false,
    cell: null, // {id, i, j}: the cell under the pointer in an enlarged heatmap
  };

  function fromBase64(text) {
    const raw = atob(text);
    const out = new Uint8Array(raw.length);
    for (let k = 0; k < raw.length; k++) out[k] = raw.charCodeAt(k);
    return out;
  }
  function range(values) {
    const flat = values.flat().filter((v) => v !== null);
    if (!flat.length) flat.push(0); // a score with no value anywhere
    return { lo: Math.min(0, ...flat), hi: Math.max(1, ...flat), min: Math.min(...flat), max: Math.max(...flat) };
  }
  // The stored byte of head id's weight of query i on key j (j <= i), and the weight it stands for.
  const byteAt = (id, i, j) => bytes[id * TRI + (i * (i + 1)) / 2 + j];
  const weightAt = (id, i, j) => (j > i ? 0 : (byteAt(id, i, j) / 255) ** 2);
  const scoreOf = (s, id) => s.values[Math.floor(id / H)][id % H];
  const fmt = (v) => (v === null ? "n/a" : Math.abs(v) >= 10 ? v.toFixed(1) : v.toFixed(2));
  const headName = (id) => `L${Math.floor(id / H)} H${id % H}`;

  // --- tokens as text: whitespace and control characters made visible -------------------------------------
  const VISIBLE = { " ": "␣", "\n": "↵", "\t": "→", "\r": "␍" };
  const hex = (c) => "\\x" + c.charCodeAt(0).toString(16).padStart(2, "0");
  const visibleChar = (c) => VISIBLE[c] || (c < " " || c === "\x7f" ? hex(c) : c);
  const visible = (text) => Array.from(text, visibleChar).join("");
  const label = (i, max = 12) => {
    const text = visible(data.tokens[i].label);
    return text.length <= max ? text : text.slice(0, max - 1) + "…";
  };
  const quoted = (i) => `${i} “${label(i, 16)}”`;

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (k === "style") for (const [name, value] of Object.entries(v)) node.style.setProperty(name, value);
      else node.setAttribute(k, v);
    }
    for (const child of children) node.append(child);
    return node;
  }

  // --- header and controls ---------------------------------------------------------------------------------
  const about = document.getElementById("about");
  for (const [key, value] of data.header) {
    about.append(el("div", {}, el("dt", {}, key), el("dd", {}, String(value))));
  }

  const ranks = document.getElementById("ranks");
  const rankButtons = [el("button", { type: "button", class: "rank", "data-score": "" }, "layer × head")];
  scores.forEach((s, k) => {
    const b = el("button", { type: "button", class: "rank", "data-score": s.name, style: { "--c": s.color } });
    b.append(el("span", { class: "swatch" }), s.name, el("span", { class: "dir" }));
    b.title = (s.note ? s.note + ". " : "") + "Click again to reverse the order.";
    rankButtons.push(b);
  });
  rankButtons.forEach((b, k) => {
    ranks.append(b, " ");
    b.addEventListener("click", () => rankBy(k === 0 ? null : k - 1));
  });
  const threshold = document.getElementById("threshold");
  threshold.addEventListener("input", () => {
    state.threshold = Number(threshold.value);
    applyOrder();
  });
  document.getElementById("clear").addEventListener("click", () => {
    state.selected = [];
    state.focus = null;
    renderSelection();
  });
  const direction = document.getElementById("direction");
  direction.addEventListener("click", () => {
    state.direction = state.direction === "query" ? "key" : "query";
    renderTokens();
    redrawCards();
  });

  // Colour bar: the square-root scale of every heatmap (the PNGs' scale too), ticks at round weights.
  const bar = document.getElementById("colorbar");
  const barImage = bar.getContext("2d").createImageData(256, 1);
  for (let q = 0; q < 256; q++) barImage.data.set([cmap[3 * q], cmap[3 * q + 1], cmap[3 * q + 2], 255], 4 * q);
  bar.getContext("2d").putImageData(barImage, 0, 0);
  const ticks = document.getElementById("colorbar-ticks");
  for (const w of [0, 0.1, 0.25, 0.5, 1]) {
    ticks.append(el("span", { style: { left: `${100 * Math.sqrt(w)}%` } }, String(w)));
  }
  bar.title = "colour of a weight w: square-root scale, so small weights stay visible; grey: a later key, not visible";

  // --- the model view: one thumbnail per head ---------------------------------------------------------------
  const headsBox = document.getElementById("heads");
  headsBox.style.setProperty("--n-head", H);
  const thumbs = heads.map((h) => {
    const canvas = el("canvas", { class: "thumb", width: T, height: T });
    paintHeatmap(canvas, h.id);
    const bars = scores.map((s) => {
      const v = scoreOf(s, h.id);
      const width = v === null ? 0 : (100 * (v - s.lo)) / (s.hi - s.lo);
      const title = `${s.name} ${fmt(v)}${s.note ? ": " + s.note : ""}`;
      return el("span", { class: "score", "data-score": s.name, title, style: { "--c": s.color } },
        el("span", { class: "bar", style: { width: `${width}%` } }),
        el("span", { class: "v" }, el("span", { class: "n" }, s.name + " "), fmt(v)));
    });
    const button = el("button", { type: "button", class: "head", "data-layer": h.layer, "data-head": h.head,
      "aria-pressed": "false", title: `layer ${h.layer} head ${h.head}: click to enlarge` },
      el("span", { class: "name" }, headName(h.id)), canvas, ...bars);
    button.addEventListener("click", () => toggle(h.id));
    return button;
  });

  function paintHeatmap(canvas, id) {
    const ctx = canvas.getContext("2d");
    const image = ctx.createImageData(T, T);
    for (let i = 0; i < T; i++) {
      for (let j = 0; j < T; j++) {
        const rgb = j > i ? FUTURE : cmap.subarray(3 * byteAt(id, i, j), 3 * byteAt(id, i, j) + 3);
        image.data.set([rgb[0], rgb[1], rgb[2], 255], 4 * (i * T + j));
      }
    }
    ctx.putImageData(image, 0, 0);
  }

  function rankBy(k) {
    if (k !== null && state.rank === k) state.ascending = !state.ascending;
    else if (k !== null) state.ascending = scores[k].low_first;
    state.rank = k;
    state.threshold = null;
    applyOrder();
  }

  function passes(s, id) {
    if (state.threshold === null) return true;
    const v = scoreOf(s, id);
    return v !== null && (state.ascending ? v <= state.threshold + 1e-9 : v >= state.threshold - 1e-9);
  }

  function applyOrder() {
    rankButtons.forEach((b, k) => {
      const on = (k === 0 && state.rank === null) || k - 1 === state.rank;
      b.setAttribute("aria-pressed", String(on));
      const dir = b.querySelector(".dir");
      if (dir) dir.textContent = on ? (state.ascending ? " ↑" : " ↓") : "";
    });
    const filter = document.getElementById("filter");
    headsBox.replaceChildren();
    if (state.rank === null) {
      filter.hidden = true;
      headsBox.className = "layered";
      headsBox.append(el("span"));
      for (let head = 0; head < H; head++) headsBox.append(el("span", { class: "axis" }, `H${head}`));
      heads.forEach((h) => {
        if (h.head === 0) headsBox.append(el("span", { class: "axis layer" }, `L${h.layer}`));
        thumbs[h.id].classList.remove("filtered");
        headsBox.append(thumbs[h.id]);
      });
    } else {
      const s = scores[state.rank];
      const sign = state.ascending ? 1 : -1;
      const key = (id) => (scoreOf(s, id) === null ? Infinity : sign * scoreOf(s, id));
      const order = heads.map((h) => h.id).sort((a, b) => key(a) - key(b) || a - b);
      filter.hidden = false;
      threshold.min = s.min;
      threshold.max = s.max;
      threshold.step = (s.max - s.min) / 200 || 1;
      if (state.threshold === null) threshold.value = state.ascending ? s.max : s.min;
      document.getElementById("threshold-label").textContent =
        `keep heads with ${s.name} ${state.ascending ? "≤" : "≥"} ${fmt(Number(threshold.value))}`;
      headsBox.className = "ranked";
      let shown = 0;
      order.forEach((id, rank) => {
        const keep = passes(s, id);
        shown += keep;
        thumbs[id].classList.toggle("filtered", !keep);
        thumbs[id].querySelector(".name").textContent = `#${rank + 1} ${headName(id)}`;
        headsBox.append(thumbs[id]);
      });
      document.getElementById("shown-count").textContent = `${shown} of ${heads.length} heads`;
    }
    thumbs.forEach((t) => t.querySelectorAll(".score").forEach((b) => {
      b.classList.toggle("active", state.rank !== null && b.dataset.score === scores[state.rank].name);
    }));
    fitThumbs();
  }

  // Thumbnails as large as the width allows (36 to 128 px), so a small W&B panel still shows whole rows; wide
  // enough, their score bars name their scores.
  function fitThumbs() {
    // Side by side (a wide window), the heads take at most half the width; stacked, all of it.
    const main = document.querySelector("main");
    const width = (SIDE_BY_SIDE.matches ? main.clientWidth / 2 : main.clientWidth) - 40;
    const size = Math.max(36, Math.min(128, Math.floor(width / H) - 6));
    headsBox.style.setProperty("--thumb", `${size}px`);
    headsBox.classList.toggle("named", size >= 100);
  }

  // --- enlarged heads ------------------------------------------------------------------------------------
  const detail = document.getElementById("detail");
  const cards = new Map(); // head id -> {node, canvas, readout, geometry}

  function toggle(id) {
    const at = state.selected.indexOf(id);
    if (at >= 0) state.selected.splice(at, 1);
    else state.selected.push(id);
    state.focus = at >= 0 ? state.selected[state.selected.length - 1] ?? null : id;
    renderSelection();
    // Stacked (a narrow window, a W&B panel), the enlarged head is below the grid: bring it into view.
    if (at < 0 && !SIDE_BY_SIDE.matches) cards.get(id).node.scrollIntoView({ block: "nearest" });
  }

  function renderSelection() {
    thumbs.forEach((t, id) => t.setAttribute("aria-pressed", String(state.selected.includes(id))));
    for (const [id, card] of cards) {
      if (state.selected.includes(id)) continue;
      card.node.remove();
      cards.delete(id);
    }
    state.selected.forEach((id) => {
      if (!cards.has(id)) cards.set(id, makeCard(id));
      detail.prepend(cards.get(id).node); // the last selected on top, next to the token view showing it
    });
    const hint = "Click heads to enlarge them; several can be open at once, the last clicked on top.";
    if (!state.selected.length) detail.replaceChildren(el("p", { class: "empty" }, hint));
    else detail.querySelector(".empty")?.remove();
    redrawCards();
    renderTokens();
  }

  function makeCard(id) {
    const layer = Math.floor(id / H), head = id % H;
    const close = el("button", { type: "button", class: "close", "aria-label": "close", title: "close" }, "×");
    close.addEventListener("click", () => toggle(id));
    const scoreText = scores.map((s) => `${s.name} ${fmt(scoreOf(s, id))}`).join(" · ");
    const canvas = el("canvas", { class: "big" });
    const readout = el("div", { class: "readout" });
    const node = el("div", { class: "card", "data-layer": layer, "data-head": head },
      el("h3", {}, `layer ${layer} head ${head}`, el("span", { class: "scores" }, scoreText), close), canvas, readout);
    const card = { id, node, canvas, readout, geometry: null };
    canvas.addEventListener("mousemove", (e) => {
      const g = card.geometry;
      const i = Math.floor((e.offsetY - g.y0) / g.cell), j = Math.floor((e.offsetX - g.x0) / g.cell);
      const inside = i >= 0 && i < T && j >= 0 && j < T;
      state.cell = inside ? { id, i, j } : null;
      if (inside) state.focus = id;
      redrawCards();
      renderTokens();
    });
    canvas.addEventListener("mouseleave", () => {
      state.cell = null;
      redrawCards();
      renderTokens();
    });
    return card;
  }

  // Layout of the enlarged heatmaps: cells as large as the panel allows, and small enough that a whole heatmap
  // fits on screen below the token view where the screen allows it; labels beside and below. Set when the page
  // opens and when it is resized, so it does not change while the pointer moves.
  let big = null;
  function layoutBig() {
    const ctx = document.createElement("canvas").getContext("2d");
    const labelWidth = (font) => {
      ctx.font = `${font}px ${MONO}`;
      return Math.ceil(Math.max(...data.tokens.map((_, i) => ctx.measureText(label(i)).width)));
    };
    const width = Math.max(240, detail.clientWidth - 22);
    const height = window.innerHeight - detail.getBoundingClientRect().top - 70;
    let font = 11, labels = labelWidth(font);
    const byHeight = Math.max(7, Math.floor((height - labels) / T));
    const cell = Math.max(4, Math.min(14, Math.floor((width - labels - 30) / T), byHeight));
    if (cell < 11) {
      font = Math.max(7, cell);
      labels = labelWidth(font);
    }
    const x0 = labels + 22, y0 = 4;
    const every = Math.ceil(8 / cell); // label every token where labels fit, else every other, ...
    big = { cell, font, x0, y0, every, width: x0 + T * cell + 8, height: y0 + T * cell + labels + 24 };
  }

  function redrawCards() {
    for (const card of cards.values()) drawCard(card);
  }

  function drawCard(card) {
    const g = (card.geometry = big);
    const dpr = window.devicePixelRatio || 1;
    const canvas = card.canvas;
    if (canvas.width !== Math.round(g.width * dpr)) canvas.width = Math.round(g.width * dpr);
    if (canvas.height !== Math.round(g.height * dpr)) canvas.height = Math.round(g.height * dpr);
    canvas.style.width = `${g.width}px`;
    canvas.style.height = `${g.height}px`;
    Object.assign(canvas.dataset, { x0: g.x0, y0: g.y0, cell: g.cell });
    const ctx = canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.fillStyle = "#fff";
    ctx.fillRect(0, 0, g.width, g.height);
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(thumbs[card.id].querySelector("canvas"), g.x0, g.y0, T * g.cell, T * g.cell);

    // What to outline: the cell under the pointer (its row and column), or the token lit in the token view.
    const lit = litTokens();
    const mine = lit && lit.id === card.id;
    const row = mine && lit.kind === "query" ? lit.index : null;
    const col = !mine ? null : lit.kind === "key" ? lit.index : lit.mark ?? null;
    ctx.font = `${g.font}px ${MONO}`;
    ctx.textBaseline = "middle";
    ctx.textAlign = "right";
    for (let i = 0; i < T; i++) {
      if (i % g.every && i !== row) continue;
      ctx.fillStyle = i === row ? ACCENT : "#374151";
      ctx.fillText(label(i), g.x0 - 4, g.y0 + (i + 0.5) * g.cell);
    }
    ctx.save();
    ctx.translate(g.x0, g.y0 + T * g.cell + 4);
    ctx.rotate(-Math.PI / 2);
    for (let j = 0; j < T; j++) {
      if (j % g.every && j !== col) continue;
      ctx.fillStyle = j === col ? ACCENT : "#374151";
      ctx.fillText(label(j), 0, (j + 0.5) * g.cell);
    }
    ctx.restore();
    ctx.fillStyle = "#6b7280";
    ctx.textAlign = "center";
    ctx.fillText("key (attended to) →", g.x0 + (T * g.cell) / 2, g.height - 8);
    ctx.save();
    ctx.translate(8, g.y0 + (T * g.cell) / 2);
    ctx.rotate(-Math.PI / 2);
    ctx.fillText("query ↓", 0, 0);
    ctx.restore();

    ctx.strokeStyle = ACCENT;
    ctx.lineWidth = 2;
    const c = g.cell;
    if (row !== null) ctx.strokeRect(g.x0 - 1, g.y0 + row * c - 1, (row + 1) * c + 2, c + 2); // keys 0..row
    if (col !== null) ctx.strokeRect(g.x0 + col * c - 1, g.y0 + col * c - 1, c + 2, (T - col) * c + 2); // queries col..
    const cell = state.cell && state.cell.id === card.id ? state.cell : null;
    if (cell) {
      ctx.strokeStyle = "#fff";
      ctx.strokeRect(g.x0 + cell.j * g.cell, g.y0 + cell.i * g.cell, g.cell, g.cell);
      card.readout.textContent = cell.j > cell.i
        ? `query ${quoted(cell.i)} → key ${quoted(cell.j)}: not visible (a later token)`
        : `query ${quoted(cell.i)} → key ${quoted(cell.j)}: weight ${weightAt(card.id, cell.i, cell.j).toFixed(3)}`;
    } else {
      card.readout.textContent = "hover a cell: query, key and weight";
    }
  }

  // --- the token view ----------------------------------------------------------------------------------
  const tokenBox = document.getElementById("tokens");
  const tokenSpans = data.tokens.map((t, i) => {
    const span = el("span", { class: "tok", "data-i": i });
    Array.from(t.text).forEach((c, k) => {
      // Whitespace as faint glyphs; a character begun in an earlier token faint too, so the text reads once.
      if (VISIBLE[c]) span.append(el("i", { class: "ws" }, VISIBLE[c]));
      else span.append(k < t.lead ? el("i", { class: "cont" }, c) : visibleChar(c));
    });
    if (t.part) {
      span.classList.add("part");
      span.title = `token ${i}: ${t.part}`;
    } else {
      span.title = `token ${i}`;
    }
    span.addEventListener("mouseenter", () => {
      if (state.pinned) return;
      state.token = i;
      renderTokens();
      redrawCards();
    });
    span.addEventListener("click", () => {
      state.pinned = !(state.pinned && state.token === i);
      state.token = i;
      renderTokens();
      redrawCards();
    });
    return span;
  });
  data.tokens.forEach((t, i) => {
    tokenBox.append(tokenSpans[i]);
    for (const c of t.text) if (c === "\n") tokenBox.append(el("br"));
  });
  tokenBox.addEventListener("mouseleave", () => {
    if (state.pinned) return;
    state.token = null;
    renderTokens();
    redrawCards();
  });

  // What the token view lights: from a hovered cell (its query's row, its key marked), else from the token
  // under the pointer, read as a query or as a key. null when there is nothing to light.
  function litTokens() {
    if (state.cell) return { id: state.cell.id, kind: "query", index: state.cell.i, mark: state.cell.j };
    if (state.token === null || state.focus === null) return null;
    return { id: state.focus, kind: state.direction, index: state.token };
  }

  function renderTokens() {
    direction.textContent = state.direction === "query" ? "query → keys it reads" : "key ← queries that read it";
    direction.setAttribute("aria-pressed", String(state.direction === "key"));
    const head = state.cell ? state.cell.id : state.focus;
    const how = state.pinned ? "pinned: click it again to let go" : "hover a token, click to pin";
    document.getElementById("token-head").textContent = head === null
      ? "click a head to light up what its tokens attend to"
      : `head ${headName(head)} · ${how}`;
    const lit = litTokens();
    const readout = document.getElementById("token-readout");
    tokenSpans.forEach((span, k) => {
      const w = !lit ? 0 : lit.kind === "query" ? weightAt(lit.id, lit.index, k) : weightAt(lit.id, k, lit.index);
      span.style.background = w > 0 ? `rgba(232, 23, 93, ${Math.sqrt(w).toFixed(3)})` : "";
      span.style.color = Math.sqrt(w) > 0.6 ? "#fff" : "";
      span.dataset.weight = w.toFixed(4);
      span.classList.toggle("anchor", !!lit && k === lit.index);
      span.classList.toggle("mark", !!lit && lit.mark === k);
    });
    if (!lit) {
      readout.textContent = head === null ? "" : `${state.direction === "query" ? "a query" : "a key"}: hover a token`;
      return;
    }
    const others = [...Array(T).keys()]
      .map((k) => [k, lit.kind === "query" ? weightAt(lit.id, lit.index, k) : weightAt(lit.id, k, lit.index)])
      .filter(([, w]) => w > 0)
      .sort((a, b) => b[1] - a[1])
      .slice(0, 4)
      .map(([k, w]) => `${quoted(k)} ${w.toFixed(2)}`);
    const verb = lit.kind === "query" ? "reads" : "is read by";
    readout.textContent = `${headName(lit.id)} ${lit.kind} ${quoted(lit.index)} ${verb}: ${others.join(" · ")}`;
  }

  let pending = false;
  window.addEventListener("resize", () => {
    if (pending) return;
    pending = true;
    requestAnimationFrame(() => {
      pending = false;
      fitThumbs();
      layoutBig();
      redrawCards();
    });
  });

  applyOrder();
  renderSelection();
  layoutBig();
})();

// The run report's clip tables and confusion-matrix links: vanilla JavaScript over window.REPORT (clips.js).
// Every piece of clip text (names, subtitles, reasons) goes into the page through textContent, never innerHTML.
"use strict";

(function () {
  const R = window.REPORT;
  const started = performance.now();
  if (!R) {
    document.querySelectorAll(".needs-data").forEach((el) => {
      el.textContent = "clips.js did not load: keep it beside index.html.";
    });
    return;
  }
  const L = R.labels;
  const A = R.agents.length;
  const N = R.n;

  // base64 bytes -> Uint8Array: each agent's probability of each label, 0..200 (0.5% steps), 255 = no evidence
  const raw = atob(R.probs);
  const probs = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i++) probs[i] = raw.charCodeAt(i);
  const num = (arr, i) => (arr[i] < 0 ? NaN : arr[i] / 10000);

  function el(tag, cls, text) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined && text !== null) node.textContent = text;
    return node;
  }
  const fmt = (v, d) => (Number.isNaN(v) ? "–" : v.toFixed(d));

  function chip(label) {
    return label < 0 ? el("span", "chip none", "none") : el("span", "chip l" + label, L[label]);
  }

  function agentBars(i) {
    const box = el("div", "agents");
    for (let a = 0; a < A; a++) {
      const row = el("div", "agent");
      row.appendChild(el("span", "aname", R.agents[a]));
      const base = (i * A + a) * 6;
      if (probs[base] === 255) {
        row.appendChild(el("span", "noev", "no evidence"));
      } else {
        const bar = el("span", "bar");
        const parts = [];
        let top = 0;
        for (let c = 0; c < 6; c++) {
          const p = probs[base + c] / 200;
          if (p > probs[base + top] / 200) top = c;
          parts.push(L[c] + " " + p.toFixed(2));
          const seg = el("span", "seg l" + c);
          seg.style.width = (100 * p).toFixed(1) + "%";
          bar.appendChild(seg);
        }
        bar.title = R.agents[a] + ": " + parts.join(", ");
        row.appendChild(bar);
        row.appendChild(el("span", "atop", L[top] + " " + (probs[base + top] / 200).toFixed(2)));
      }
      box.appendChild(row);
    }
    return box;
  }

  function frameCell(i) {
    const td = el("td", "frame");
    const kind = R.frames[i];
    if (kind) {
      const img = el("img");
      img.src = "frames/" + encodeURIComponent(R.name[i]) + ".jpg";
      img.alt = kind === 2 ? "face crop" : "key frame";
      img.title = img.alt;
      td.appendChild(img);
    } else {
      td.appendChild(el("span", "noframe", R.statusText[R.status[i]] === "ok" ? "no frame kept" : "no frame"));
    }
    return td;
  }

  function clipRow(i) {
    const tr = el("tr");
    tr.dataset.row = i;
    tr.appendChild(frameCell(i));
    const name = el("td", "name");
    name.appendChild(el("div", "cname", R.name[i]));
    const status = R.statusText[R.status[i]];
    if (status && status !== "ok") name.appendChild(el("div", "status", status));
    name.appendChild(el("div", "sub", R.sub[i]));
    tr.appendChild(name);
    const ag = el("td");
    ag.appendChild(agentBars(i));
    tr.appendChild(ag);
    const comb = el("td", "comb");
    comb.appendChild(chip(R.label[i]));
    tr.appendChild(comb);
    tr.appendChild(el("td", "num conf", fmt(num(R.conf, i), 3)));
    tr.appendChild(el("td", "num", fmt(num(R.margin, i), 3)));
    tr.appendChild(el("td", "num", fmt(num(R.dis, i), 3)));
    const kept = el("td", "kept");
    if (R.keptFolds[i] > 0) {
      kept.appendChild(el("span", "yes", R.keptFolds[i] + "/" + R.folds + " "));
      kept.appendChild(chip(R.keptLabel[i]));
    } else {
      kept.appendChild(el("span", "no", "–"));
    }
    tr.appendChild(kept);
    tr.appendChild(el("td", "why", R.reasonText[R.reason[i]]));
    if (R.hidden) {
      const td = el("td", "hid");
      const h = R.hidden[i];
      if (h >= 0) {
        td.appendChild(chip(h));
        const guess = R.keptFolds[i] > 0 ? R.keptLabel[i] : R.label[i];
        td.appendChild(el("span", guess === h ? "right" : "wrong", guess === h ? " ✓" : " ✗"));
      }
      tr.appendChild(td);
    }
    return tr;
  }

  function fill(tbody, rows) {
    const frag = document.createDocumentFragment();
    rows.forEach((i) => frag.appendChild(clipRow(i)));
    tbody.replaceChildren(frag);
  }

  // ---- the pool table: filter, sort, page
  const table = document.getElementById("clip-table");
  const state = { key: null, dir: 1, page: 0, label: "", kept: "", split: "", text: "" };
  const pageRows = R.pageRows;
  let view = [];
  const sortKeys = {
    name: (i) => R.name[i],
    conf: (i) => R.conf[i],
    margin: (i) => R.margin[i],
    dis: (i) => R.dis[i],
    kept: (i) => R.keptFolds[i],
  };

  function recompute() {
    const text = state.text.toLowerCase();
    const label = state.label === "" ? -2 : Number(state.label);
    view = [];
    for (let i = 0; i < N; i++) {
      if (label !== -2 && R.label[i] !== label) continue;
      if (state.kept === "kept" && !(R.keptFolds[i] > 0)) continue;
      if (state.kept === "dropped" && R.keptFolds[i] > 0) continue;
      if (state.split === "split" && !R.split[i]) continue;
      if (state.split === "agree" && R.split[i]) continue;
      if (text && !R.name[i].toLowerCase().includes(text) && !R.sub[i].toLowerCase().includes(text)) continue;
      view.push(i);
    }
    if (state.key) {
      const key = sortKeys[state.key];
      const dir = state.dir;
      const numeric = state.key !== "name";
      view.sort((a, b) => {
        const x = key(a), y = key(b);
        if (numeric) {
          // clips without a value (-1) go last in either direction
          if (x < 0 || y < 0) return (x < 0) - (y < 0) || a - b;
          return (x - y) * dir || a - b;
        }
        return (x < y ? -1 : x > y ? 1 : 0) * dir || a - b;
      });
    }
    state.page = 0;
  }

  function render() {
    const pages = Math.max(1, Math.ceil(view.length / pageRows));
    state.page = Math.min(state.page, pages - 1);
    const begin = state.page * pageRows;
    fill(table.tBodies[0], view.slice(begin, begin + pageRows));
    const shown = view.length ? begin + 1 + "–" + Math.min(begin + pageRows, view.length) : "0";
    document.getElementById("clip-count").textContent =
      shown + " of " + view.length.toLocaleString("en") + " clips" +
      (view.length !== N ? " (filtered from " + N.toLocaleString("en") + ")" : "");
    document.getElementById("page-of").textContent = "page " + (state.page + 1) + " of " + pages;
    document.getElementById("prev").disabled = state.page === 0;
    document.getElementById("next").disabled = state.page >= pages - 1;
    table.querySelectorAll("th[data-key]").forEach((th) => {
      th.classList.toggle("asc", th.dataset.key === state.key && state.dir === 1);
      th.classList.toggle("desc", th.dataset.key === state.key && state.dir === -1);
    });
  }

  table.querySelectorAll("th[data-key]").forEach((th) => {
    th.addEventListener("click", () => {
      const key = th.dataset.key;
      // numbers sort high first on the first click, names A to Z
      if (state.key === key) state.dir = -state.dir;
      else state.dir = key === "name" ? 1 : -1;
      state.key = key;
      recompute();
      render();
    });
  });
  const on = (id, event, fn) => document.getElementById(id).addEventListener(event, fn);
  on("f-label", "change", (e) => { state.label = e.target.value; recompute(); render(); });
  on("f-kept", "change", (e) => { state.kept = e.target.value; recompute(); render(); });
  on("f-split", "change", (e) => { state.split = e.target.value; recompute(); render(); });
  on("f-text", "input", (e) => { state.text = e.target.value; recompute(); render(); });
  on("prev", "click", () => { state.page -= 1; render(); });
  on("next", "click", () => { state.page += 1; render(); });

  recompute();
  render();
  fill(document.getElementById("disagree-table").tBodies[0], R.disagree);

  // ---- confusion-matrix cells list their labelled clips
  document.querySelectorAll("a.cm-cell").forEach((a) => {
    a.addEventListener("click", (event) => {
      event.preventDefault();
      const s = R.students[a.dataset.student];
      const t = Number(a.dataset.true), p = Number(a.dataset.pred);
      const box = document.getElementById("cm-clips-" + a.dataset.student);
      const rows = [];
      for (let i = 0; i < R.lab.name.length; i++) {
        if (R.lab.label[i] === t && s.pred[i] === p) rows.push(i);
      }
      const head = el("p", "cm-head", rows.length + " labelled clip(s): true " + L[t] + ", predicted " + L[p] +
        " (out of fold)");
      const tbl = el("table", "cm-list");
      const hr = el("tr");
      ["clip", "subtitle", "fold", "p(predicted)"].forEach((h) => hr.appendChild(el("th", null, h)));
      tbl.appendChild(hr);
      rows.slice(0, 200).forEach((i) => {
        const tr = el("tr");
        tr.appendChild(el("td", "cname", R.lab.name[i]));
        tr.appendChild(el("td", "sub", R.lab.sub[i]));
        tr.appendChild(el("td", "num", String(R.lab.fold[i])));
        tr.appendChild(el("td", "num", (s.prob[i] / 1000).toFixed(3)));
        tbl.appendChild(tr);
      });
      box.replaceChildren(head, tbl);
      if (rows.length > 200) box.appendChild(el("p", "note", "first 200 shown"));
      box.scrollIntoView({ block: "nearest" });
    });
  });

  window.REPORT_READY_MS = performance.now();
  window.REPORT_SCRIPT_MS = performance.now() - started;
  document.body.dataset.ready = "1";
})();

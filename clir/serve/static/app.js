// The clir search page: a client of the public REST API (/indexes, /search, /indexes/{name}/docs/{id}),
// nothing more. No external assets, no build step. The API key lives in sessionStorage (this tab only).
"use strict";

(() => {
  const KEY_STORE = "clir.apiKey";
  const SNIPPET = 480; // characters of a hit's text shown in the list (the document view has all of it)
  const $ = (id) => document.getElementById(id);
  const indexes = new Map(); // name -> entry of GET /indexes
  const seenHits = new Map(); // "index\u0000doc_id" -> hit, so the document view can mark the best passage
  let searchSeq = 0;
  let lastFocus = null;
  let docFromPage = false; // the document view was opened from this page (so Back returns to it)
  let pendingState = null; // a search named in the address (#q=...), run once the indexes are known

  // ------------------------------------------------------------------ API
  class ApiError extends Error {
    constructor(status, code, detail) {
      super(`${status} ${code}: ${detail}`);
      this.status = status;
      this.code = code;
      this.detail = detail;
    }
  }

  function apiKey() {
    try {
      return sessionStorage.getItem(KEY_STORE) || "";
    } catch (e) {
      return ""; // storage disabled: the key then lives nowhere, the user re-enters it
    }
  }

  async function api(path, options = {}) {
    const headers = { Accept: "application/json", ...(options.headers || {}) };
    const key = apiKey();
    if (key) headers["X-API-Key"] = key;
    let resp;
    try {
      // relative to the page, so the page also works behind a proxy under a path prefix
      resp = await fetch(new URL(path, document.baseURI), { ...options, headers });
    } catch (e) {
      throw new ApiError(0, "unreachable", `cannot reach the server (${e.message})`);
    }
    let body = null;
    try {
      body = await resp.json();
    } catch (e) {
      body = null;
    }
    if (!resp.ok) {
      const code = (body && body.error) || resp.statusText || "error";
      let detail = body && body.detail !== undefined ? body.detail : `HTTP ${resp.status}`;
      if (typeof detail !== "string") detail = JSON.stringify(detail);
      if (body && body.request_id) detail += ` (request id ${body.request_id})`;
      throw new ApiError(resp.status, code, detail);
    }
    return body;
  }

  const search = (side, query, k) =>
    api("search", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ query, k, index: side.index, query_lang: side.lang, return_text: true }),
    });

  // ------------------------------------------------------------------ messages
  function showError(err, context) {
    const box = $("message");
    box.textContent = "";
    const strong = document.createElement("strong");
    strong.textContent = context ? `${context}: ` : "";
    box.append(strong, err instanceof ApiError ? err.message : String(err));
    if (err instanceof ApiError && err.status === 401) {
      box.append(" \u2014 enter the server's API key under \u201cAPI key\u201d above.");
      $("key-box").open = true;
      $("key-input").focus();
    }
    box.hidden = false;
  }

  function clearError() {
    $("message").hidden = true;
    $("message").textContent = "";
  }

  const setStatus = (text) => {
    $("status").textContent = text;
  };

  // ------------------------------------------------------------------ API key
  function renderKeyState() {
    const key = apiKey();
    $("key-state").textContent = key ? "set for this session" : "not set";
    $("key-forget").disabled = !key;
  }

  function useKey(key) {
    try {
      if (key) sessionStorage.setItem(KEY_STORE, key);
      else sessionStorage.removeItem(KEY_STORE);
    } catch (e) {
      showError(e, "cannot keep the key in session storage");
    }
    $("key-input").value = "";
    renderKeyState();
    loadIndexes();
  }

  // ------------------------------------------------------------------ indexes and routing
  async function loadIndexes() {
    clearError();
    setStatus("Loading indexes\u2026");
    let body;
    try {
      body = await api("indexes");
    } catch (err) {
      setStatus("");
      showError(err, "Loading the indexes failed");
      return;
    }
    if (apiKey()) $("key-box").open = false;
    indexes.clear();
    for (const entry of body.indexes || []) indexes.set(entry.name, entry);
    for (const id of ["index-a", "index-b"]) fillIndexSelect($(id));
    const names = [...indexes.keys()];
    const def = (body.indexes || []).find((i) => i.default) || body.indexes[0];
    if (def) $("index-a").value = def.name;
    // compare against another index when the default index has no routing to vary: its document-routing
    // partner when there is one, else the next index
    const pair = findPair();
    const partner = pair && [pair.source.name, pair.target.name].includes(def.name)
      ? (def.name === pair.source.name ? pair.target.name : pair.source.name)
      : null;
    $("index-b").value = routing(def).swappable || names.length < 2 ? def.name : partner || names.find((n) => n !== def.name);
    $("pair").hidden = !pair;
    sideChanged("a");
    sideChanged("b", true);
    setStatus(`${names.length} index${names.length === 1 ? "" : "es"} served.`);
    if (pendingState) {
      applyState(pendingState);
      pendingState = null;
      runSearch();
    }
  }

  function fillIndexSelect(select) {
    const keep = select.value;
    select.textContent = "";
    for (const entry of indexes.values()) {
      const opt = document.createElement("option");
      opt.value = entry.name;
      const langs = (entry.languages || []).join(", ");
      opt.textContent = `${entry.name}${entry.default ? " (default)" : ""} \u2014 ${entry.num_docs} docs${langs ? `, ${langs}` : ""}`;
      select.append(opt);
    }
    if (indexes.has(keep)) select.value = keep;
  }

  // What the index's encoder lets a request change: with madx adapters and `target` query routing, the
  // query language picks the query-side language adapter (the document side is fixed at indexing time).
  function routing(entry) {
    const fp = (entry && entry.encoder_fingerprint) || {};
    const r = fp.routing || {};
    const source = fp.source_lang || "en";
    if (fp.adapter_mode !== "madx") {
      const mode = fp.adapter_mode || "unknown";
      return { swappable: false, source, text: `Adapter mode ${mode}: no language adapters to route.` };
    }
    const doc = `documents keep the adapter they were indexed with (doc routing: ${r.doc})`;
    if (r.query === "target") {
      return {
        swappable: true,
        source,
        text: `Query language \u201c${source}\u201d keeps the ${source} adapter; another language swaps the query-side adapter; ${doc}.`,
      };
    }
    return { swappable: false, source, text: `Queries always use routing \u201c${r.query}\u201d; ${doc}.` };
  }

  function sideChanged(s, pickOther = false) {
    const entry = indexes.get($(`index-${s}`).value);
    const r = routing(entry);
    const list = $(`langs-${s}`);
    list.textContent = "";
    const langs = [r.source, ...((entry && entry.languages) || []).filter((l) => l !== r.source)];
    for (const l of langs) {
      const opt = document.createElement("option");
      opt.value = l;
      list.append(opt);
    }
    const input = $(`lang-${s}`);
    input.disabled = !r.swappable;
    if (!r.swappable) input.value = r.source;
    else if (pickOther && $("index-a").value === $("index-b").value) input.value = langs[1] || r.source;
    $(`routing-${s}`).textContent = r.text;
  }

  // ------------------------------------------------------------------ document routings side by side
  // Two indexes of one collection by one madx model (same backbone, task adapter and source language), whose
  // documents went through the source language's adapter in one and through their own language's in the
  // other (`clir index --doc-routing source|target`): the MAD-X swap, seen hit by hit.
  const LANG_NAMES = {
    ar: "Arabic", de: "German", el: "Greek", en: "English", es: "Spanish", fa: "Persian", fr: "French",
    hi: "Hindi", it: "Italian", ja: "Japanese", ko: "Korean", ru: "Russian", th: "Thai", tr: "Turkish",
    vi: "Vietnamese", zh: "Chinese",
  };
  const langName = (code) => LANG_NAMES[code] || `\u201c${code}\u201d`;

  function modelKey(entry) {
    const fp = (entry && entry.encoder_fingerprint) || {};
    if (fp.adapter_mode !== "madx" || !fp.routing) return null;
    const task = Object.entries(fp.adapters || {}).filter(([name]) => name.startsWith("task")).sort();
    return JSON.stringify([entry.collection, fp.backbone_weights, fp.source_lang, task]);
  }

  // {source, target, sourceLeft} when the two entries are such a pair, else null
  function docRoutingPair(a, b) {
    const key = modelKey(a);
    if (!key || key !== modelKey(b)) return null;
    const da = a.encoder_fingerprint.routing.doc;
    const db = b.encoder_fingerprint.routing.doc;
    if (da === "source" && db === "target") return { source: a, target: b, sourceLeft: true };
    if (da === "target" && db === "source") return { source: b, target: a, sourceLeft: false };
    return null;
  }

  function findPair() {
    const all = [...indexes.values()];
    for (const a of all) for (const b of all) {
      const pair = docRoutingPair(a, b);
      if (pair && pair.sourceLeft) return pair;
    }
    return null;
  }

  const throughSource = (pair) => `through the ${langName(pair.source.encoder_fingerprint.source_lang)} adapter`;
  const THROUGH_OWN = "through each document\u2019s own language adapter";

  // One sentence on what the two columns are, and which documents had no adapter of their own
  function pairNote(pair) {
    const src = throughSource(pair);
    let text = pair.sourceLeft
      ? `Left: documents encoded ${src}; right: ${THROUGH_OWN} (the MAD-X swap).`
      : `Left: documents encoded ${THROUGH_OWN} (the MAD-X swap); right: ${src}.`;
    text += " The query is encoded the same way on both sides; the marks say how each hit moved on the right.";
    const fallback = Object.entries(pair.target.routing_fallback || {}).filter(([, n]) => n > 0);
    if (fallback.length) {
      const names = fallback.map(([l, n]) => `${langName(l)} (${n} document${n === 1 ? "" : "s"})`).join(", ");
      text += ` No adapter for ${names}: ${fallback.length === 1 && fallback[0][1] === 1 ? "it keeps" : "they keep"} the ${langName(pair.source.encoder_fingerprint.source_lang)} one on both sides.`;
    }
    return text;
  }

  function showPair() {
    const pair = findPair();
    if (!pair) return;
    $("index-a").value = pair.source.name;
    $("index-b").value = pair.target.name;
    sideChanged("a");
    sideChanged("b");
    $("lang-b").value = $("lang-a").value; // one query encoding on both sides
    $("compare").checked = true;
    $("side-b").hidden = false;
    if ($("q").value.trim()) runSearch();
    else $("q").focus();
  }

  const sideOf = (s) => ({ index: $(`index-${s}`).value || null, lang: $(`lang-${s}`).value.trim() || "en" });

  // ------------------------------------------------------------------ search
  async function runSearch() {
    clearError();
    const query = $("q").value;
    if (!query.trim()) {
      showError("type a query first", "Nothing to search");
      $("q").focus();
      return;
    }
    const k = Number.parseInt($("k").value, 10);
    if (!Number.isInteger(k) || k < 1) {
      showError("k must be a whole number of at least 1", "Hits (k)");
      $("k").focus();
      return;
    }
    const compare = $("compare").checked;
    const sides = compare ? [sideOf("a"), sideOf("b")] : [sideOf("a")];
    const seq = ++searchSeq;
    setStatus("Searching\u2026");
    $("results").setAttribute("aria-busy", "true");
    const settled = await Promise.allSettled(sides.map((side) => search(side, query, k)));
    if (seq !== searchSeq) return; // a newer search started meanwhile
    $("results").removeAttribute("aria-busy");
    const failed = settled.findIndex((r) => r.status === "rejected");
    if (failed >= 0) {
      setStatus("");
      showError(settled[failed].reason, compare ? `Search ${failed ? "B" : "A"} failed` : "Search failed");
      return;
    }
    const answers = settled.map((r) => r.value);
    renderResults(sides, answers);
    // the address names this search: reloading, bookmarking or sharing it repeats it (the key is not in it)
    history.replaceState(null, "", `#${stateOf(query, k, sides)}`);
  }

  function stateOf(query, k, sides) {
    const p = new URLSearchParams({ q: query, k: String(k), index: sides[0].index || "", lang: sides[0].lang });
    if (sides[1]) {
      p.set("index_b", sides[1].index || "");
      p.set("lang_b", sides[1].lang);
    }
    return p.toString();
  }

  function parseState(hash) {
    if (!hash.startsWith("#q=")) return null;
    return new URLSearchParams(hash.slice(1));
  }

  function applyState(p) {
    $("q").value = p.get("q") || "";
    if (p.get("k")) $("k").value = p.get("k");
    const set = (s, index, lang) => {
      if (index && indexes.has(index)) $(`index-${s}`).value = index;
      sideChanged(s);
      if (lang && !$(`lang-${s}`).disabled) $(`lang-${s}`).value = lang;
    };
    set("a", p.get("index"), p.get("lang"));
    $("compare").checked = p.has("index_b");
    $("side-b").hidden = !$("compare").checked;
    if (p.has("index_b")) set("b", p.get("index_b"), p.get("lang_b"));
  }

  function renderResults(sides, answers) {
    const box = $("results");
    box.textContent = "";
    box.classList.toggle("compare", answers.length === 2);
    const pair = answers.length === 2 && sides[0].lang === sides[1].lang
      ? docRoutingPair(indexes.get(answers[0].index), indexes.get(answers[1].index))
      : null;
    if (pair) {
      const p = document.createElement("p");
      p.className = "pair-note";
      p.id = "pair-note";
      p.textContent = pairNote(pair);
      box.append(p);
    }
    const ranksA = new Map(answers[0].hits.map((h) => [h.doc_id, h.rank]));
    const ranksB = answers[1] ? new Map(answers[1].hits.map((h) => [h.doc_id, h.rank])) : null;
    answers.forEach((ans, i) => {
      const col = document.createElement("section");
      col.className = "column";
      col.dataset.side = i ? "b" : "a";
      const h2 = document.createElement("h2");
      const lang = sides[i].lang;
      h2.textContent = `${answers.length === 2 ? (i ? "B: " : "A: ") : ""}${ans.index} \u00b7 query language ${lang}`;
      if (pair) {
        const isSource = (i === 0) === pair.sourceLeft;
        h2.textContent = `${i ? "B" : "A"}: ${ans.index} \u00b7 documents ${isSource ? throughSource(pair) : THROUGH_OWN}`;
      }
      col.append(h2);
      if (ans.warning) col.append(note(ans.warning));
      if (!ans.hits.length) col.append(note("No hits."));
      const ol = document.createElement("ol");
      ol.className = "hits";
      for (const hit of ans.hits) {
        seenHits.set(`${ans.index}\u0000${hit.doc_id}`, hit);
        let move = null;
        if (ranksB) move = i ? movement(ranksA.get(hit.doc_id), hit.rank) : ranksB.has(hit.doc_id) ? null : "out";
        ol.append(renderHit(ans.index, hit, move));
      }
      col.append(ol);
      box.append(col);
    });
    const took = answers.map((a) => `${a.took_ms.toFixed(1)} ms`).join(" / ");
    let text = `${answers[0].hits.length} hits in ${took}.`;
    if (ranksB) text = `${compareSummary(answers[0].hits, answers[1].hits)} (${took})`;
    setStatus(text);
  }

  // B's rank against A's: up/down by how many places, the same, or new in B
  function movement(rankA, rankB) {
    if (rankA === undefined) return "new";
    if (rankA === rankB) return "same";
    return rankB < rankA ? `up ${rankA - rankB}` : `down ${rankB - rankA}`;
  }

  function compareSummary(a, b) {
    const inA = new Map(a.map((h) => [h.doc_id, h.rank]));
    const common = b.filter((h) => inA.has(h.doc_id));
    const moved = common.filter((h) => inA.get(h.doc_id) !== h.rank).length;
    return (
      `${common.length} of ${b.length} hits in both, ${moved} of them moved; ` +
      `${b.length - common.length} only in B, ${a.length - common.length} only in A.`
    );
  }

  const MOVE_LABEL = { new: "new in B", same: "same rank", out: "not in B" };

  function renderHit(index, hit, move) {
    const li = document.createElement("li");
    li.className = "hit";
    li.dataset.docId = hit.doc_id;
    const head = document.createElement("div");
    head.className = "hit-head";
    const rank = span("rank", `${hit.rank}`);
    rank.setAttribute("aria-label", `rank ${hit.rank}`);
    const link = document.createElement("a");
    link.className = "doc-link";
    link.href = docHref(index, hit.doc_id);
    link.textContent = hit.doc_id;
    head.append(rank, link);
    if (hit.lang) head.append(langBadge(hit.lang));
    const p = passageOf(hit);
    if (p && Number.isInteger(p.index)) {
      const badge = span("passage-badge", `passage ${p.index + 1}`);
      badge.title = `the best passage (${p.id ?? `number ${p.index}`}) is marked in the text`;
      head.append(badge);
    }
    const score = span("score", hit.score.toFixed(4));
    score.title = "score (inner product of query and document vectors)";
    head.append(score);
    if (move) {
      const m = span(`move ${move.split(" ")[0]}`, MOVE_LABEL[move] || move.replace(/^up /, "\u2191").replace(/^down /, "\u2193"));
      m.title = MOVE_LABEL[move] || `moved ${move} place${move.endsWith(" 1") ? "" : "s"} against A`;
      m.dataset.move = move;
      head.append(m);
    }
    li.append(head);
    if (hit.title) {
      const t = document.createElement("p");
      t.className = "title";
      t.dir = "auto"; // Persian, Arabic, Hebrew read right to left
      t.textContent = hit.title;
      if (hit.lang) t.lang = hit.lang;
      li.append(t);
    }
    if (hit.text != null) li.append(hitText(hit, true));
    return li;
  }

  // ------------------------------------------------------------------ passages
  // A hit of an index of split documents carries its best passage; the shape is read leniently so the page
  // also works with indexes (and servers) that have no passages: then the text is shown as it is.
  function passageOf(hit) {
    let p = hit.passage ?? hit.best_passage ?? null;
    if (typeof p === "string") p = { text: p };
    if (p && typeof p !== "object") p = null;
    p = { ...(p || {}) };
    p.text = p.text ?? hit.passage_text;
    p.start = p.start ?? p.char_start ?? hit.passage_start ?? hit.passage_char_start;
    p.end = p.end ?? p.char_end ?? hit.passage_end ?? hit.passage_char_end;
    p.index = p.index ?? p.n ?? hit.passage_index ?? hit.passage_n;
    p.id = p.id ?? p.passage_id ?? hit.passage_id;
    const has = (v) => v !== undefined && v !== null;
    return has(p.text) || (has(p.start) && has(p.end)) || has(p.index) || has(p.id) ? p : null;
  }

  // [start, end) of the best passage within `text`, or null when it cannot be located
  function passageSpan(text, p) {
    if (!p || text == null) return null;
    const s = Number(p.start);
    const e = Number(p.end);
    if (Number.isInteger(s) && Number.isInteger(e) && s >= 0 && e > s && e <= text.length) return [s, e];
    if (p.text) {
      const at = text.indexOf(p.text);
      if (at >= 0) return [at, at + p.text.length];
    }
    return null;
  }

  function hitText(hit, snippet) {
    const el = document.createElement("p");
    el.className = "text";
    el.dir = "auto";
    if (hit.lang) el.lang = hit.lang;
    const text = hit.text || "";
    const p = passageOf(hit);
    let range = passageSpan(text, p);
    if (p && !range && p.text) {
      // the passage is not a substring of the text we have (e.g. a title was prepended): show it alone
      el.append(mark(p.text));
      return withPassageLabel(el, p);
    }
    if (!range) {
      el.textContent = snippet && text.length > SNIPPET ? `${text.slice(0, SNIPPET)}\u2026` : text;
      return el;
    }
    let [s, e] = range;
    let from = 0;
    let to = text.length;
    if (snippet && text.length > SNIPPET) {
      // context around the passage, cut to the snippet budget
      const room = Math.max(0, SNIPPET - (e - s));
      from = Math.max(0, s - Math.floor(room / 2));
      to = Math.min(text.length, Math.max(e, from + SNIPPET));
    }
    el.append(`${from > 0 ? "\u2026" : ""}${text.slice(from, s)}`, mark(text.slice(s, e)), `${text.slice(e, to)}${to < text.length ? "\u2026" : ""}`);
    return withPassageLabel(el, p);
  }

  function withPassageLabel(el, p) {
    const where = p.index ?? p.id;
    if (where !== undefined && where !== null) el.title = `best passage: ${where}`;
    return el;
  }

  function mark(text) {
    const m = document.createElement("mark");
    m.className = "passage";
    m.textContent = text;
    return m;
  }

  // ------------------------------------------------------------------ document view
  const docHref = (index, docId) => `#doc/${encodeURIComponent(index)}/${encodeURIComponent(docId)}`;

  function parseDocHash(hash) {
    const m = /^#doc\/([^/]+)\/(.+)$/.exec(hash);
    if (!m) return null;
    try {
      return { index: decodeURIComponent(m[1]), docId: decodeURIComponent(m[2]) };
    } catch (e) {
      return null;
    }
  }

  async function showDoc(index, docId) {
    $("search-view").hidden = true;
    $("doc-view").hidden = false;
    const art = $("doc");
    art.textContent = "";
    const h2 = document.createElement("h2");
    h2.textContent = docId;
    art.append(h2, note("Loading\u2026"));
    art.focus();
    let doc;
    try {
      doc = await api(`indexes/${encodeURIComponent(index)}/docs/${encodeURIComponent(docId)}`);
    } catch (err) {
      art.lastChild.remove();
      const box = document.createElement("p");
      box.className = "message";
      box.setAttribute("role", "alert");
      box.textContent = `Opening the document failed: ${err.message}`;
      art.append(box);
      return;
    }
    art.textContent = "";
    const head = document.createElement("h2");
    head.textContent = doc.title || doc.doc_id;
    head.dir = "auto";
    if (doc.lang) head.lang = doc.lang;
    const meta = document.createElement("p");
    meta.className = "hit-head";
    if (doc.title) meta.append(span("doc-id", doc.doc_id));
    if (doc.lang) meta.append(langBadge(doc.lang));
    meta.append(span("index-name", `index ${doc.index}`));
    art.append(head, meta);
    const hit = seenHits.get(`${doc.index}\u0000${doc.doc_id}`);
    // the whole text, with the passage that made it a hit marked when it came from a result list
    art.append(hitText({ ...(hit || {}), text: doc.text, lang: doc.lang }, false));
    const extra = Object.keys(doc).filter((k) => !["index", "doc_id", "text", "title", "lang"].includes(k));
    if (extra.length) {
      const dl = document.createElement("dl");
      for (const k of extra) {
        const dt = document.createElement("dt");
        dt.textContent = k;
        const dd = document.createElement("dd");
        dd.textContent = typeof doc[k] === "string" ? doc[k] : JSON.stringify(doc[k]);
        dl.append(dt, dd);
      }
      art.append(dl);
    }
    art.focus();
  }

  function route(ev) {
    const target = parseDocHash(location.hash);
    docFromPage = Boolean(target && ev);
    if (target) {
      if (document.activeElement && document.activeElement.classList.contains("doc-link")) {
        lastFocus = document.activeElement;
      }
      showDoc(target.index, target.docId);
      return;
    }
    $("doc-view").hidden = true;
    $("search-view").hidden = false;
    if (lastFocus && document.contains(lastFocus)) lastFocus.focus();
    lastFocus = null;
  }

  // ------------------------------------------------------------------ small DOM helpers
  function span(cls, text) {
    const s = document.createElement("span");
    s.className = cls;
    s.textContent = text;
    return s;
  }

  function langBadge(lang) {
    const b = span("lang-badge", lang);
    b.title = `language: ${lang}`;
    return b;
  }

  function note(text) {
    const p = document.createElement("p");
    p.className = "note";
    p.textContent = text;
    return p;
  }

  // ------------------------------------------------------------------ wiring
  function init() {
    $("search-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      runSearch();
    });
    $("key-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      useKey($("key-input").value.trim());
    });
    $("key-forget").addEventListener("click", () => useKey(""));
    $("index-a").addEventListener("change", () => sideChanged("a"));
    $("index-b").addEventListener("change", () => sideChanged("b"));
    $("compare").addEventListener("change", () => {
      $("side-b").hidden = !$("compare").checked;
    });
    $("pair").addEventListener("click", showPair);
    $("doc-back").addEventListener("click", (ev) => {
      ev.preventDefault();
      if (docFromPage) history.back(); // back to the results it was opened from
      else location.hash = "";
    });
    window.addEventListener("hashchange", route);
    document.addEventListener("keydown", (ev) => {
      const typing = /^(INPUT|SELECT|TEXTAREA)$/.test(document.activeElement.tagName);
      if (ev.key === "/" && !typing && !$("search-view").hidden) {
        ev.preventDefault();
        $("q").focus();
      } else if (ev.key === "Escape" && !$("doc-view").hidden) {
        $("doc-back").click();
      }
    });
    $("side-b").hidden = !$("compare").checked;
    pendingState = parseState(location.hash);
    renderKeyState();
    loadIndexes();
    route();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();

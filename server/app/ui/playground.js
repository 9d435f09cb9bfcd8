// The judge playground: plain DOM and SVG, no build step, no third-party code.
// Every number shown comes from the server's own answers (/info, /score, /render, /compare and
// the rubric lab's route); nothing is computed here but positions on a chart. Request text is
// only ever put into the page as text nodes, never as markup.
"use strict";

const KEY_STORE = "drlaif-api-key"; // sessionStorage: this tab only
const SVG_NS = "http://www.w3.org/2000/svg";
const LOW_MASS = 0.5; // below it the labeler is mostly not answering on the scale
// The page is served at <server>/ui/: the API is one level up, the rubric lab beside it.
const API = new URL("../", document.baseURI);
const LAB = new URL("rubric-lab/score", document.baseURI);

const state = { info: null };

// ------------------------------------------------------------------------------------ DOM helpers

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  setAttrs(el, attrs);
  el.append(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
  return el;
}

function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  setAttrs(el, attrs);
  el.append(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
  return el;
}

function setAttrs(el, attrs) {
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "text") el.textContent = value;
    else el.setAttribute(name, value === true ? "" : String(value));
  }
}

const $ = (id) => document.getElementById(id);
const fixed = (x, digits = 3) => (x === null || x === undefined ? "–" : Number(x).toFixed(digits));
const percent = (p) => (100 * p).toFixed(1) + "%";
const yesNo = (b) => (b ? "yes" : "no");

// Offsets from the server count Unicode code points; JavaScript strings count UTF-16 units.
function codePointSlice(points, start, end) {
  return points.slice(start, end).join("");
}

// ------------------------------------------------------------------------------------------ API

class ApiError extends Error {
  constructor(status, type, message) {
    super(message);
    this.status = status;
    this.type = type;
  }
}

function apiKey() {
  return sessionStorage.getItem(KEY_STORE) || "";
}

async function call(url, body) {
  const headers = {};
  const key = apiKey();
  if (key) headers.Authorization = "Bearer " + key;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(url, {
      method: body === undefined ? "GET" : "POST",
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (err) {
    throw new ApiError(0, "network_error", "the server could not be reached: " + err.message);
  }
  let data = null;
  try {
    data = await response.json();
  } catch (err) {
    data = null;
  }
  if (!response.ok) {
    const error = data && data.error ? data.error : { type: "http_" + response.status, message: response.statusText };
    throw new ApiError(response.status, error.type, error.message);
  }
  return data;
}

const api = (path, body) => call(new URL(path, API), body);

// -------------------------------------------------------------------------------- errors, state

function showError(box, err) {
  box.replaceChildren(
    h("strong", { class: "error-type", text: err.type || "error" }),
    err.status ? h("span", { class: "error-status", text: ` (HTTP ${err.status})` }) : null,
    ": ",
    h("span", { class: "error-message", text: err.message }),
  );
  box.hidden = false;
}

function clearError(box) {
  box.hidden = true;
  box.replaceChildren();
}

// A view's request failed: its error as the server words it; a 401 also empties the page.
function failed(results, box, err) {
  if (err.status === 401) needKey();
  setResults(results, "error");
  showError(box, err);
}

// Without an accepted key the page holds no data: no rubrics, no results.
function needKey() {
  state.info = null;
  $("key-needed").hidden = false;
  $("server-info").textContent = "Waiting for an API key.";
  for (const id of ["score-rubric", "compare-rubric", "lab-preset"]) $(id).replaceChildren();
  $("score-rubric-about").textContent = "";
  for (const id of ["score-results", "compare-results", "lab-results"]) setResults($(id), "empty");
  for (const id of ["score-error", "compare-error", "lab-error"]) clearError($(id));
  $("api-key").focus();
}

function setResults(container, status, ...children) {
  container.dataset.state = status;
  container.setAttribute("aria-busy", status === "busy" ? "true" : "false");
  container.replaceChildren(...children);
}

async function loadInfo() {
  clearError($("global-error"));
  let info;
  try {
    info = await api("info");
  } catch (err) {
    if (err.status === 401) {
      needKey();
    } else {
      showError($("global-error"), err);
      $("server-info").textContent = "The server did not answer /info.";
    }
    return;
  }
  state.info = info;
  $("key-needed").hidden = true;
  $("server-info").textContent = `${info.model} · ${info.backend} on ${info.device}/${info.dtype} · ` +
    `drlaif ${info.version}` + (info.ready ? "" : " · the labeler is loading");
  fillRubrics($("score-rubric"), info.rubrics, info.default_rubric);
  fillRubrics($("compare-rubric"), info.rubrics.filter((r) => r.compare), info.default_rubric);
  fillRubrics($("lab-preset"), info.rubrics, info.default_rubric);
  describeRubric();
}

function fillRubrics(select, rubrics, preferred) {
  const kept = select.value;
  select.replaceChildren(...rubrics.map((r) => h("option", { value: r.name, text: r.name })));
  const names = rubrics.map((r) => r.name);
  select.value = names.includes(kept) ? kept : names.includes(preferred) ? preferred : names[0] || "";
}

function rubricInfo(name) {
  return state.info ? state.info.rubrics.find((r) => r.name === name) : undefined;
}

function describeRubric() {
  const r = rubricInfo($("score-rubric").value);
  if (!r) return;
  const parts = [r.description, `scale ${r.scale.min}–${r.scale.max}`];
  if (r.principles) parts.push(`principles: ${Object.keys(r.principles).join(", ")} (${r.aggregate})`);
  if (r.reasoning) parts.push("reasons before its read");
  $("score-rubric-about").textContent = parts.filter(Boolean).join(" · ");
  $("score-rationale").closest(".field").hidden = !r.reasoning;
}

// ---------------------------------------------------------------------------------------- tabs

function setUpTabs() {
  const tabs = Array.from(document.querySelectorAll('[role="tab"]'));
  const select = (tab, focus) => {
    for (const t of tabs) {
      const on = t === tab;
      t.setAttribute("aria-selected", String(on));
      t.tabIndex = on ? 0 : -1;
      $(t.getAttribute("aria-controls")).hidden = !on;
    }
    if (focus) tab.focus();
    history.replaceState(null, "", "#" + tab.id.replace("tab-", ""));
  };
  tabs.forEach((tab, i) => {
    tab.addEventListener("click", () => select(tab, false));
    tab.addEventListener("keydown", (event) => {
      const to = { ArrowRight: i + 1, ArrowLeft: i - 1, Home: 0, End: tabs.length - 1 }[event.key];
      if (to === undefined) return;
      event.preventDefault();
      select(tabs[(to + tabs.length) % tabs.length], true);
    });
  });
  const fromHash = tabs.find((t) => "#" + t.id.replace("tab-", "") === location.hash);
  if (fromHash) select(fromHash, false);
}

// ------------------------------------------------------------------------------------- inputs

function setUpResponseList(list) {
  const add = (text) => {
    const n = list.children.length + 1;
    const id = `${list.id}-${Date.now().toString(36)}-${n}`;
    const remove = h("button", { type: "button", class: "link remove" }, "Remove");
    const item = h("div", { class: "response" },
      h("div", { class: "response-head" }, h("label", { for: id }), remove),
      h("textarea", { id, rows: 3, spellcheck: "false" }));
    item.querySelector("textarea").value = text;
    remove.addEventListener("click", () => {
      const next = item.nextElementSibling || item.previousElementSibling;
      item.remove();
      renumber();
      if (next) next.querySelector("textarea").focus();
    });
    list.append(item);
    renumber();
    return item;
  };
  const renumber = () => {
    const items = Array.from(list.children);
    items.forEach((item, i) => {
      item.querySelector("label").textContent = `Response ${i + 1}`;
      item.querySelector(".remove").setAttribute("aria-label", `Remove response ${i + 1}`);
      item.querySelector(".remove").hidden = items.length === 1;
    });
  };
  for (const text of JSON.parse(list.dataset.initial || '[""]')) add(text);
  document.querySelector(`.add-response[data-list="${list.id}"]`).addEventListener("click", () => {
    add("").querySelector("textarea").focus();
  });
}

function responses(listId) {
  return Array.from($(listId).querySelectorAll("textarea")).map((t) => t.value);
}

// A view's prompt field: a string (plain or an HH transcript) or chat messages as JSON.
function setUpPromptField(fieldset) {
  const view = fieldset.dataset.view;
  const format = (value, text, checked) => h("label", {},
    h("input", { type: "radio", name: `${view}-format`, value, checked }), ` ${text}`);
  const prompt = h("textarea", { id: `${view}-prompt`, rows: 3, spellcheck: "false" });
  prompt.value = fieldset.dataset.example;
  fieldset.append(h("legend", { text: "Prompt" }),
    h("div", { class: "formats" }, format("text", "Text or HH transcript", true), format("chat", "Chat messages (JSON)")),
    h("label", { for: prompt.id, class: "sr-only", text: "Prompt text" }), prompt);
}

// A prompt as the API takes it: a string (plain or an HH transcript), or chat messages.
function readPrompt(view) {
  const text = $(`${view}-prompt`).value;
  const format = document.querySelector(`input[name="${view}-format"]:checked`).value;
  if (format === "text") return text;
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new ApiError(0, "invalid_prompt",
      'the prompt is not valid JSON chat messages ([{"role": "user", "content": "..."}]): ' + err.message);
  }
}

// ------------------------------------------------------------------------------------- charts

// The label distribution as bars, the expected score as a line at its place on the scale.
function distributionChart(distribution, scale, score, title) {
  const n = distribution.length;
  const W = 420, H = 190, left = 34, right = 8, top = 30, bottom = 24;
  const plotW = W - left - right, plotH = H - top - bottom, step = plotW / n;
  const peak = Math.max(...distribution, 0.05);
  const yMax = Math.min(1, Math.ceil((peak * 1.15) * 10) / 10);
  const y = (p) => top + plotH * (1 - p / yMax);
  const showValues = n <= 20;
  const values = []; // drawn over the expected-score line
  const captionId = `cap-${Math.random().toString(36).slice(2)}`;
  const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart dist", role: "img", "aria-labelledby": captionId });
  for (const tick of [0, yMax / 2, yMax]) {
    svg.append(s("line", { x1: left, x2: W - right, y1: y(tick), y2: y(tick), class: "grid" }),
      s("text", { x: left - 4, y: y(tick) + 3, class: "axis", "text-anchor": "end", text: Math.round(tick * 100) + "%" }));
  }
  distribution.forEach((p, i) => {
    const label = scale.min + i;
    const x = left + i * step;
    const bar = s("rect", { x: x + step * 0.15, y: y(p), width: step * 0.7, height: Math.max(0, y(0) - y(p)),
      class: "bar", "data-label": label, "data-p": p }, s("title", { text: `label ${label}: ${percent(p)}` }));
    svg.append(bar);
    if (showValues) {
      values.push(s("text", { x: x + step / 2, y: y(p) - 3, class: "bar-value", "text-anchor": "middle",
        "data-label": label, text: percent(p) }));
    }
    if (showValues || i % Math.ceil(n / 20) === 0) {
      svg.append(s("text", { x: x + step / 2, y: H - bottom + 14, class: "axis", "text-anchor": "middle", text: label }));
    }
  });
  const sx = left + (score - scale.min + 0.5) * step;
  svg.append(s("line", { x1: sx, x2: sx, y1: top - 6, y2: y(0), class: "expected" }), ...values,
    s("text", { x: Math.min(Math.max(sx, left + 40), W - right - 40), y: top - 10, class: "expected-label",
      "text-anchor": "middle", text: `expected score ${fixed(score, 2)}` }));
  const table = h("table", { class: "sr-only" },
    h("caption", { text: "Label probabilities" }),
    h("tr", {}, h("th", { scope: "col", text: "label" }), h("th", { scope: "col", text: "probability" })),
    distribution.map((p, i) => h("tr", {}, h("td", { text: scale.min + i }), h("td", { text: percent(p) }))));
  return h("figure", { class: "chart-figure" }, svg,
    h("figcaption", { id: captionId, text: `${title}: probability of each label, ${scale.min} to ${scale.max}; ` +
      `the line marks the expected score, ${fixed(score, 2)}.` }), table);
}

// A constitution's principles: each one's expected score on the scale, with its weight.
function principleChart(principles, weights, scale) {
  const names = Object.keys(principles);
  const W = 420, row = 26, left = 96, right = 92, H = names.length * row + 22;
  const x = (score) => left + (W - left - right) * (score - scale.min) / (scale.max - scale.min);
  const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart principles", role: "img",
    "aria-label": "Each principle's expected score: " +
      names.map((n) => `${n} ${fixed(principles[n].score, 2)}`).join(", ") });
  names.forEach((name, i) => {
    const p = principles[name];
    const y0 = 6 + i * row;
    svg.append(
      s("text", { x: left - 6, y: y0 + 14, class: "axis", "text-anchor": "end", text: name }),
      s("rect", { x: left, y: y0 + 3, width: W - left - right, height: 14, class: "track" }),
      s("rect", { x: left, y: y0 + 3, width: Math.max(1, x(p.score) - left), height: 14,
        class: p.label_mass < LOW_MASS ? "bar low" : "bar", "data-principle": name },
        s("title", { text: `${name}: score ${fixed(p.score, 2)}, reward ${fixed(p.reward)}, label mass ${fixed(p.label_mass)}` })),
      s("text", { x: W - right + 4, y: y0 + 14, class: "bar-value", "data-principle": name,
        text: `${fixed(p.score, 2)} · w ${fixed(weights ? weights[name] : NaN, 2)}` }));
  });
  svg.append(s("text", { x: left, y: H - 2, class: "axis", text: String(scale.min) }),
    s("text", { x: W - right, y: H - 2, class: "axis", "text-anchor": "end", text: String(scale.max) }));
  return svg;
}

// P(A better) on a 0..1 line: read with A shown first, with A shown second, and their mean.
function ordersChart(result) {
  const W = 420, H = 96, left = 16, right = 16;
  const x = (p) => left + (W - left - right) * p;
  const { ab, ba } = result.orders;
  const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart orders", role: "img",
    "aria-label": `P(A better): ${fixed(ab)} with A shown first, ` +
      (ba === null ? "" : `${fixed(ba)} with A shown second, `) + `${fixed(result.p_a)} debiased` });
  svg.append(
    s("line", { x1: x(0), x2: x(1), y1: 56, y2: 56, class: "axis-line" }),
    s("line", { x1: x(0.5), x2: x(0.5), y1: 48, y2: 64, class: "grid" }),
    s("text", { x: x(0), y: 82, class: "axis", text: "0: B better" }),
    s("text", { x: x(1), y: 82, class: "axis", "text-anchor": "end", text: "1: A better" }));
  if (ba !== null) {
    svg.append(s("rect", { x: x(Math.min(ab, ba)), y: 50, width: Math.abs(x(ab) - x(ba)), height: 12,
      class: "bias-band" }, s("title", { text: "position bias: the gap between the two orders" })));
    svg.append(s("circle", { cx: x(ba), cy: 56, r: 6, class: "order ba" }),
      s("text", { x: x(ba), y: 40, class: "order-label", "text-anchor": "middle", text: "A second" }));
  }
  svg.append(s("circle", { cx: x(ab), cy: 56, r: 6, class: "order ab" }),
    s("text", { x: x(ab), y: ba !== null && Math.abs(x(ab) - x(ba)) < 60 ? 26 : 40, class: "order-label",
      "text-anchor": "middle", text: "A first" }),
    s("path", { d: `M ${x(result.p_a)} 47 l 7 9 l -7 9 l -7 -9 z`, class: "debiased" }),
    s("text", { x: x(result.p_a), y: 94, class: "order-label strong", "text-anchor": "middle", text: "debiased" }));
  return svg;
}

// ----------------------------------------------------------------------- what the judge sees

// The labeler input exactly as /render gives it: trusted rubric text and the request's slots
// in their own colours, and where the label is read.
function judgeText(input, reasoned) {
  const points = Array.from(input.text);
  const code = h("code", { class: "judge-text" });
  let at = 0;
  for (const slot of input.slots || []) {
    if (slot.start > at) code.append(h("span", { class: "trusted", text: codePointSlice(points, at, slot.start) }));
    code.append(h("span", { class: `slot slot-${slot.name}`, "data-slot": slot.name,
      title: `${slot.name}: request text (untrusted), ${slot.token_end - slot.token_start} tokens`,
      text: codePointSlice(points, slot.start, slot.end) }));
    at = slot.end;
  }
  if (at < points.length) code.append(h("span", { class: "trusted", text: codePointSlice(points, at, points.length) }));
  const mark = h("span", { class: "answer-mark", text: reasoned ? "◀ the rationale starts here; the label is read after it"
    : "◀ the label is read here" });
  const slotTokens = (input.slots || []).map((sl) => `${sl.name} ${sl.token_end - sl.token_start}`);
  const untrusted = (input.slots || []).reduce((n, sl) => n + sl.token_end - sl.token_start, 0);
  return h("div", { class: "judge-sees-body" },
    h("p", { class: "token-count", text: `${input.input_ids.length} tokens: ` +
      `${input.input_ids.length - untrusted} trusted rubric text, ${slotTokens.join(", ")}` }),
    h("pre", { class: "judge-view" }, code, mark),
    h("p", { class: "legend" },
      h("span", { class: "trusted key", text: "rubric text (trusted)" }), " ",
      h("span", { class: "slot slot-prompt key", text: "prompt (untrusted)" }), " ",
      h("span", { class: "slot slot-response key", text: "response (untrusted)" })));
}

function scrollToEnd(container) {
  for (const pre of container.querySelectorAll(".judge-view")) pre.scrollTop = pre.scrollHeight;
}

function judgeSees(render, index) {
  // Open for the first response, and wherever the guard read a second input.
  const details = h("details", { class: "judge-sees", open: index === 0 || !!render.robust },
    h("summary", { text: `What the judge sees (${render.input_ids.length} tokens` +
      (render.truncated ? ", truncated" : "") + ")" }));
  const reasoned = !!render.reasoning;
  if (render.principles) {
    const id = `principle-${index}-${Math.random().toString(36).slice(2)}`;
    const select = h("select", { id }, Object.keys(render.principles).map((n) => h("option", { value: n, text: n })));
    const body = h("div", {}, judgeText(render, reasoned));
    select.addEventListener("change", () => body.replaceChildren(judgeText(render.principles[select.value], reasoned)));
    details.append(h("div", { class: "field inline" }, h("label", { for: id, text: "Principle " }), select), body);
  } else {
    details.append(judgeText(render, reasoned));
  }
  if (render.robust) {
    details.append(h("h5", { text: "Second read: the response without the text addressed to the judge" }),
      judgeText(render.robust, reasoned));
  }
  // Scrolled to the end, where the request text and the answer position are.
  details.addEventListener("toggle", () => scrollToEnd(details));
  return details;
}

// ----------------------------------------------------------------------------------- results

// The response with the segments that address the judge marked.
function responseText(response, spans) {
  const points = Array.from(response);
  const out = h("p", { class: "response-text" });
  let at = 0;
  for (const span of spans || []) {
    if (span.start > at) out.append(codePointSlice(points, at, span.start));
    out.append(h("mark", { class: "judge-span", "data-rule": span.rule, title: `addresses the judge (${span.rule})`,
      text: codePointSlice(points, span.start, span.end) }));
    at = span.end;
  }
  if (at < points.length) out.append(codePointSlice(points, at, points.length));
  if (!response) out.append(h("em", { text: "(empty)" }));
  return out;
}

function stat(name, value, cls, warning) {
  return h("div", { class: warning ? "stat warn" : "stat" },
    h("dt", { text: name }), h("dd", { class: cls, text: value }),
    warning ? h("dd", { class: "warning", text: warning }) : null);
}

function scoreCard(title, response, result, scale, rubric, options = {}) {
  const card = h("article", { class: "card result" }, h("h3", { text: title }));
  if (options.showResponse !== false) card.append(responseText(response, result.judge_text));
  card.append(h("dl", { class: "stats" },
    stat("Reward", fixed(result.reward), "reward"),
    stat("Expected score", fixed(result.score), "score"),
    stat("Label mass", fixed(result.label_mass), "label-mass",
      result.label_mass < LOW_MASS ? "low: the labeler is mostly not answering on the scale" : null),
    stat("Input tokens", result.input_tokens, "input-tokens"),
    stat("Truncated", yesNo(result.truncated), "truncated", result.truncated ? "cut to fit the labeler's budget" : null),
    stat("Cached", yesNo(result.cached), "cached")));
  card.append(distributionChart(result.distribution, scale, result.score, title));
  if (result.group) {
    const g = result.group;
    card.append(h("section", { class: "group", "aria-label": "The response against its group" },
      h("h4", { text: "Judged in its group" }),
      h("p", { text: `Compared with ${g.opponents} other response${g.opponents === 1 ? "" : "s"} to its prompt, ` +
        "in both orders; the reward is 2 × its mean win probability − 1. The score and chart above are its " +
        "own direct read." }),
      h("dl", { class: "stats" },
        stat("Win rate", fixed(g.win_rate), "win-rate"),
        ...(g.pairs || []).map((p) => stat(`P(better than response ${p.opponent + 1})`, fixed(p.p_win),
          "p-win", p.consistent ? null : "the two orders disagree")))));
  }
  if (result.judge_spans > 0) {
    card.append(h("section", { class: "guard", "aria-label": "The guard's two reads" },
      h("h4", { text: "The guard read it twice" }),
      h("p", { text: (result.judge_spans === 1 ? "1 segment of the response addresses"
        : `${result.judge_spans} segments of the response address`) +
        " the judge (marked in the response). The reward is the lower of the two reads." }),
      h("dl", { class: "stats" },
        stat("As written", fixed(result.reward_as_written), "reward-as-written"),
        stat("Without them (robust)", fixed(result.reward_robust), "reward-robust"))));
  }
  if (result.principles) {
    card.append(h("section", { class: "principles-section" }, h("h4", { text: "Principles" }),
      principleChart(result.principles, rubric && rubric.principles, scale)));
  }
  if (result.sample_scores) {
    card.append(h("p", { class: "samples-line", text: `Sample scores: ${result.sample_scores.map((x) => fixed(x, 2)).join(", ")}` +
      ` (spread ${fixed(result.score_spread, 2)}); ${result.reasoning_tokens} rationale tokens` }));
  }
  if (result.samples) {
    card.append(h("section", { class: "rationales" }, h("h4", { text: "Rationales" }),
      result.samples.map((sample, i) => h("figure", { class: "rationale" },
        h("blockquote", { text: sample.rationale || "(empty)" }),
        h("figcaption", { text: `sample ${i + 1}: score ${fixed(sample.score, 2)}, ended by ${sample.finish_reason}` })))));
  }
  if (options.render) card.append(judgeSees(options.render, options.index));
  return card;
}

async function onScore(event) {
  event.preventDefault();
  const box = $("score-results"), error = $("score-error");
  clearError(error);
  const rubric = $("score-rubric").value;
  let items;
  try {
    const prompt = readPrompt("score");
    items = responses("score-responses").map((response) => ({ prompt, response }));
  } catch (err) {
    showError(error, err);
    return;
  }
  const body = { items, rubric: rubric || undefined };
  const reasoned = rubricInfo(rubric) && rubricInfo(rubric).reasoning;
  const button = event.submitter || $("score-form").querySelector("[type=submit]");
  button.disabled = true;
  setResults(box, "busy", h("p", { class: "muted", text: "Scoring…" }));
  try {
    const [scored, rendered] = await Promise.all([
      api("score", reasoned && $("score-rationale").checked ? { ...body, return_rationale: true } : body),
      api("render", body),
    ]);
    const info = rubricInfo(scored.rubric);
    setResults(box, "done",
      h("h2", { tabindex: "-1", text: `${scored.rubric} · ${scored.model}` }),
      h("div", { class: "cards" }, scored.results.map((result, i) =>
        scoreCard(`Response ${i + 1}`, items[i].response, result, scored.scale, info,
          { render: rendered.results[i], index: i }))));
    scrollToEnd(box);
    box.querySelector("h2").focus();
  } catch (err) {
    failed(box, error, err);
  } finally {
    button.disabled = false;
  }
}

async function onCompare(event) {
  event.preventDefault();
  const box = $("compare-results"), error = $("compare-error");
  clearError(error);
  let item;
  try {
    item = { prompt: readPrompt("compare"), response_a: $("compare-a").value, response_b: $("compare-b").value };
  } catch (err) {
    showError(error, err);
    return;
  }
  const button = event.submitter || $("compare-form").querySelector("[type=submit]");
  button.disabled = true;
  setResults(box, "busy", h("p", { class: "muted", text: "Comparing…" }));
  try {
    const answer = await api("compare", { items: [item], rubric: $("compare-rubric").value || undefined, debias: true });
    const r = answer.results[0];
    const lean = r.orders.ba === null ? null : (r.orders.ab - r.orders.ba) / 2;
    const massWarn = (m) => (m !== null && m < LOW_MASS ? "low: the labeler is mostly not answering 1 or 2" : null);
    const card = h("article", { class: "card result compare-result" },
      h("h3", { text: "P(A better)" }),
      h("dl", { class: "stats" },
        stat("Debiased", fixed(r.p_a), "p-a"),
        stat("A shown first", fixed(r.orders.ab), "p-ab"),
        stat("A shown second", fixed(r.orders.ba), "p-ba"),
        stat("Lean to the first shown", lean === null ? "–" : (lean >= 0 ? "+" : "") + fixed(lean), "position-bias"),
        stat("Orders agree", r.consistent === null ? "–" : yesNo(r.consistent), "consistent",
          r.consistent === false ? "the orders prefer different responses: position decides" : null),
        stat("Label mass, A first", fixed(r.label_mass.ab), "mass-ab", massWarn(r.label_mass.ab)),
        stat("Label mass, A second", fixed(r.label_mass.ba), "mass-ba", massWarn(r.label_mass.ba)),
        stat("Input tokens", r.input_tokens, "input-tokens"),
        stat("Truncated", yesNo(r.truncated), "truncated"),
        stat("Cached", yesNo(r.cached), "cached")),
      h("figure", { class: "chart-figure" }, ordersChart(r),
        h("figcaption", { text: "Each order's P(A better) and their mean; the band between the two orders is " +
          "the labeler's position bias." })));
    if (r.principles) {
      card.append(h("section", {}, h("h4", { text: "Principles" }),
        h("table", { class: "principles-table" },
          h("tr", {}, ["principle", "debiased", "A first", "A second"].map((t) => h("th", { scope: "col", text: t }))),
          Object.entries(r.principles).map(([name, p]) => h("tr", {},
            h("th", { scope: "row", text: name }), h("td", { text: fixed(p.p_a) }),
            h("td", { text: fixed(p.orders.ab) }), h("td", { text: fixed(p.orders.ba) }))))));
    }
    setResults(box, "done", h("h2", { tabindex: "-1", text: `${answer.rubric} · labels ${answer.labels.join(" / ")}` }),
      card);
    box.querySelector("h2").focus();
  } catch (err) {
    failed(box, error, err);
  } finally {
    button.disabled = false;
  }
}

function labBody(withItems) {
  const body = { rubric_yaml: $("lab-yaml").value };
  if (withItems) {
    const prompt = readPrompt("lab");
    body.items = responses("lab-responses").map((response) => ({ prompt, response }));
  }
  return body;
}

function labSummary(answer) {
  const r = answer.rubric;
  return h("p", { class: "valid" },
    h("strong", { text: `Valid: rubric ${r.name}` }),
    ` · scale ${r.scale.min}–${r.scale.max} · ${answer.trusted_tokens} trusted tokens · pairwise form: ` +
    `${yesNo(r.compare)} · reasons first: ${yesNo(r.reasoning)} · judged in groups: ${yesNo(r.group_pairwise)}` +
    (r.principles ? ` · principles: ${Object.keys(r.principles).join(", ")}` : ""));
}

async function onLab(event, withItems) {
  event.preventDefault();
  const box = $("lab-results"), error = $("lab-error");
  clearError(error);
  let body;
  try {
    body = labBody(withItems);
  } catch (err) {
    showError(error, err);
    return;
  }
  const buttons = $("lab-form").querySelectorAll("button");
  buttons.forEach((b) => { b.disabled = true; });
  setResults(box, "busy", h("p", { class: "muted", text: withItems ? "Scoring under both rubrics…" : "Validating…" }));
  try {
    const preset = $("lab-preset").value;
    const [lab, base] = await Promise.all([
      call(LAB, body),
      withItems ? api("score", { items: body.items, rubric: preset || undefined }) : null,
    ]);
    if (!withItems) {
      setResults(box, "done", labSummary(lab));
      return;
    }
    const rows = lab.results.map((result, i) => {
      const before = base.results[i];
      const delta = result.reward - before.reward;
      return h("section", { class: "lab-row" },
        h("h3", { text: `Response ${i + 1}` }),
        responseText(body.items[i].response, result.judge_text),
        h("p", { class: "delta", text: `reward under ${lab.rubric.name} − under ${base.rubric}: ` +
          (delta >= 0 ? "+" : "") + fixed(delta) }),
        h("div", { class: "pair" },
          scoreCard(`${base.rubric} (preset)`, body.items[i].response, before, base.scale, rubricInfo(base.rubric),
            { showResponse: false }),
          scoreCard(`${lab.rubric.name} (lab)`, body.items[i].response, result, lab.rubric.scale, lab.rubric,
            { showResponse: false })));
    });
    setResults(box, "done", labSummary(lab), h("h2", { tabindex: "-1", text: `${base.rubric} beside ${lab.rubric.name}` }),
      ...rows);
    box.querySelector("h2").focus();
  } catch (err) {
    failed(box, error, err);
  } finally {
    buttons.forEach((b) => { b.disabled = false; });
  }
}

// -------------------------------------------------------------------------------------- start

function setUpKey() {
  const input = $("api-key");
  input.value = apiKey();
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const key = input.value.trim();
    if (key) sessionStorage.setItem(KEY_STORE, key);
    else sessionStorage.removeItem(KEY_STORE);
    loadInfo();
  });
  $("forget-key").addEventListener("click", () => {
    sessionStorage.removeItem(KEY_STORE);
    input.value = "";
    loadInfo();
  });
}

function start() {
  setUpTabs();
  setUpKey();
  document.querySelectorAll(".prompt-field").forEach(setUpPromptField);
  document.querySelectorAll(".responses").forEach(setUpResponseList);
  $("score-form").addEventListener("submit", onScore);
  $("compare-form").addEventListener("submit", onCompare);
  $("lab-form").addEventListener("submit", (event) => onLab(event, true));
  $("lab-validate").addEventListener("click", (event) => onLab(event, false));
  $("score-rubric").addEventListener("change", describeRubric);
  // Ctrl+Enter (Cmd+Enter) in a text field submits its form.
  document.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey) && event.target.form) {
      event.preventDefault();
      event.target.form.requestSubmit();
    }
  });
  for (const id of ["score-results", "compare-results", "lab-results"]) setResults($(id), "empty");
  loadInfo();
}

start();

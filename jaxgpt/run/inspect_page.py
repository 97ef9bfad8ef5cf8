"""The self-contained HTML page of `python -m jaxgpt.inspect`: one file, its data and script inline, nothing
fetched, so it opens offline from disk in any browser.

It shows the text shaded by each token's loss; for a clicked token its model's top-k next tokens and the
attention of every layer and head over the tokens before it (the text shaded for the chosen head, and a
layer × head grid of how much each head gave the most-attended token); a per-head summary (how far back each
head looks, how spread its weights are); and, for two models, the second one's tokens shaded by their loss and
each character's loss difference (per byte, so a character model and a BPE model compare over the same bytes).
"""

from __future__ import annotations

import base64
import html
import json
import os

import numpy as np

from jaxgpt.run.inspection import Inspection
from jaxgpt.system.files import write_text_atomically


def _attention_blob(inspection: Inspection) -> str:
    """The attention weights as base64 of uint8 (weight * 255, rounded): for each token i, layer and head, its
    weights over its window's keys up to itself (i % window + 1 of them; those after it are 0 and not stored,
    which halves the page of a long text)."""
    N, L, H, T = inspection.attention.shape
    kept = np.arange(T)[None, :] <= (np.arange(N) % T)[:, None]  # (N, T): the keys before query i, and i
    weights = np.round(inspection.attention * 255).astype(np.uint8)  # (N, L, H, T)
    return base64.b64encode(weights[np.broadcast_to(kept[:, None, None, :], weights.shape)].tobytes()).decode("ascii")


def char_bits(inspection: Inspection, text: str) -> np.ndarray:
    """(len(text),) bits per character: each token's bits spread evenly over its UTF-8 bytes, a character's
    bytes summed; NaN where the first token (read, not predicted) covers it."""
    per_byte = np.repeat(inspection.bits / np.maximum(inspection.token_bytes, 1), inspection.token_bytes)
    char_of_byte = np.repeat(np.arange(len(text)), [len(c.encode("utf-8")) for c in text])
    if len(per_byte) != len(char_of_byte):
        raise ValueError("the tokens do not spell the text byte for byte")
    out = np.zeros(len(text))
    np.add.at(out, char_of_byte, per_byte)
    return out


def _model_data(inspection: Inspection) -> dict:
    distance, entropy = inspection.head_summary()
    N, L, H, T = inspection.attention.shape
    return {
        "source": inspection.source, "loss": round(inspection.loss, 4), "bpb": round(inspection.bits_per_byte, 4),
        "pieces": inspection.pieces, "bits": [None if np.isnan(b) else round(float(b), 3) for b in inspection.bits],
        "top": [[[inspection.vocab[int(i)], round(float(p), 4)] for i, p in zip(ids, probs, strict=True)]
                for ids, probs in zip(inspection.top_ids, inspection.top_probs, strict=True)],
        "layers": L, "heads": H, "window": T, "attention": _attention_blob(inspection),
        "distance": np.round(distance.astype(float), 2).tolist(),
        "entropy": np.round(entropy.astype(float), 2).tolist(),
    }


def render(text: str, inspections: list[Inspection]) -> str:
    """The page for one model, or two (`inspections[1]` compared with `inspections[0]`) over the same text."""
    data = {"text": text, "models": [_model_data(i) for i in inspections]}
    if len(inspections) == 2:
        a, b = (char_bits(i, text) for i in inspections)
        data["char_diff"] = [None if np.isnan(d) else round(float(d), 3) for d in a - b]
        data["chars"] = list(text)
    payload = json.dumps(data, ensure_ascii=True).replace("</", "<\\/")  # safe inside <script>
    title = " vs ".join(html.escape(i.source) for i in inspections)
    return _PAGE.replace("__TITLE__", title).replace("__DATA__", payload)


def write_page(out: str | os.PathLike, text: str, inspections: list[Inspection]) -> None:
    """`render`'s page written whole or not at all."""
    write_text_atomically(out, render(text, inspections))


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>jaxgpt inspect: __TITLE__</title>
<style>
body { font: 14px system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.3em; } h2 { font-size: 1.1em; margin-top: 1.2em; }
.text { font-family: ui-monospace, monospace; white-space: pre-wrap; line-height: 1.6; border: 1px solid #ddd;
        padding: .6em; max-height: 26em; overflow-y: auto; }
.tok { cursor: pointer; border-radius: 2px; }
.tok.sel { outline: 2px solid #1a5fb4; }
#panel { display: flex; gap: 2em; flex-wrap: wrap; margin-top: 1em; }
table { border-collapse: collapse; } td, th { padding: 2px 6px; border: 1px solid #ddd; text-align: right; }
.grid td { width: 2.6em; height: 1.6em; cursor: pointer; font-size: 11px; }
.grid td.chosen { outline: 2px solid #1a5fb4; }
.note { color: #666; }
</style></head><body>
<h1>jaxgpt inspect: __TITLE__</h1>
<div id="summary"></div>
<h2>The text, shaded by each token's loss <span class="note">(click a token)</span></h2>
<div id="text" class="text"></div>
<div id="panel">
  <div><h2>Next-token predictions</h2><div id="topk" class="note">click a token</div></div>
  <div><h2>Attention: layer × head <span class="note">(click a head)</span></h2><div id="grid" class="note">click a
    token</div><h2>Attention of the chosen head over the text</h2><div id="attn" class="text"></div></div>
</div>
<h2>Heads: how far back each looks (tokens) and how spread its weights are (entropy, bits)</h2>
<div id="heads"></div>
<div id="compare"></div>
<script id="data" type="application/json">__DATA__</script>
<script>
"use strict";
const DATA = JSON.parse(document.getElementById("data").textContent);
const M = DATA.models[0];
const ATT = Uint8Array.from(atob(M.attention), c => c.charCodeAt(0));
let selected = null, layer = 0, head = 0;
const shade = (bits) => bits === null ? "transparent" : `rgba(220, 40, 40, ${Math.min(bits / 8, 1).toFixed(3)})`;
const show = (piece) => piece.replace(/\\n/g, "\\u21b5\\n");

const OFFSET = [];  // where token i's weights start: each token before keeps (its place in its window + 1) per head
for (let i = 0, at = 0; i < M.pieces.length; i++) { OFFSET.push(at); at += M.layers * M.heads * (i % M.window + 1); }

function weights(i, l, h) {  // query i's weights over its window's keys, 0 after i
  const n = i % M.window + 1, at = OFFSET[i] + (l * M.heads + h) * n;
  const w = new Array(M.window).fill(0);
  ATT.subarray(at, at + n).forEach((v, k) => { w[k] = v / 255; });
  return w;
}

function summary() {
  const lines = DATA.models.map(m => `<b>${escapeHtml(m.source)}</b>: loss ${m.loss} (nats/token), ` +
    `${m.bpb} bits per byte, ${m.pieces.length} tokens`);
  document.getElementById("summary").innerHTML = lines.join("<br>");
}

function escapeHtml(s) {
  return s.replace(/[&<>"]/g, c => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}[c]));
}

function drawText() {
  const box = document.getElementById("text");
  M.pieces.forEach((piece, i) => {
    const span = document.createElement("span");
    span.className = "tok"; span.textContent = show(piece); span.dataset.i = i;
    span.style.background = shade(M.bits[i]);
    span.title = M.bits[i] === null ? "first token: read, not predicted" : `${M.bits[i]} bits`;
    span.addEventListener("click", () => choose(i));
    box.appendChild(span);
  });
}

function choose(i) {
  selected = i;
  document.querySelectorAll("#text .tok.sel").forEach(s => s.classList.remove("sel"));
  document.querySelector(`#text .tok[data-i="${i}"]`).classList.add("sel");
  const rows = M.top[i].map(([piece, p]) => `<tr><td style="text-align:left">${escapeHtml(show(piece))}</td>` +
    `<td>${(100 * p).toFixed(1)}%</td></tr>`);
  document.getElementById("topk").innerHTML = `<table id="topk-table">${rows.join("")}</table>`;
  drawGrid(); drawAttention();
}

function drawGrid() {
  const i = selected, start = i - (i % M.window);
  let out = "<table class='grid'><tr><th></th>";
  for (let h = 0; h < M.heads; h++) out += `<th>h${h}</th>`;
  out += "</tr>";
  for (let l = 0; l < M.layers; l++) {
    out += `<tr><th>layer ${l}</th>`;
    for (let h = 0; h < M.heads; h++) {
      const w = weights(i, l, h).slice(0, i - start + 1);
      const top = w.indexOf(Math.max(...w));
      const cls = l === layer && h === head ? "chosen" : "";
      out += `<td class="${cls}" data-l="${l}" data-h="${h}" title="most to token ${start + top} ` +
        `(${(100 * w[top]).toFixed(0)}%)" style="background: rgba(26, 95, 180, ${w[top].toFixed(3)})">` +
        `${i - start - top}</td>`;
    }
    out += "</tr>";
  }
  document.getElementById("grid").innerHTML = out + "</table><div class='note'>each cell: how many tokens back " +
    "its head looks most, shaded by that weight</div>";
  document.querySelectorAll("#grid td").forEach(td => td.addEventListener("click", () => {
    layer = +td.dataset.l; head = +td.dataset.h; drawGrid(); drawAttention();
  }));
}

function drawAttention() {
  const i = selected, start = i - (i % M.window), w = weights(i, layer, head);
  const box = document.getElementById("attn");
  box.innerHTML = "";
  for (let j = start; j <= i; j++) {
    const span = document.createElement("span");
    span.className = "tok"; span.textContent = show(M.pieces[j]);
    span.style.background = `rgba(26, 95, 180, ${w[j - start].toFixed(3)})`;
    span.title = `${(100 * w[j - start]).toFixed(1)}%`;
    box.appendChild(span);
  }
}

function drawHeads() {
  let out = "<table><tr><th></th>";
  for (let h = 0; h < M.heads; h++) out += `<th>h${h}</th>`;
  out += "</tr>";
  for (let l = 0; l < M.layers; l++) {
    out += `<tr><th>layer ${l}</th>` + M.distance[l].map((d, h) =>
      `<td title="entropy ${M.entropy[l][h]} bits">${d} / ${M.entropy[l][h]}</td>`).join("") + "</tr>";
  }
  document.getElementById("heads").innerHTML = out + "</table><div class='note'>mean tokens back / entropy: " +
    "near 1 / low: the previous token; low entropy: sharp; high: spread over the context</div>";
}

function drawCompare() {
  if (DATA.models.length < 2) return;
  const B = DATA.models[1];
  let wins = 0, counted = 0;
  const spans = DATA.chars.map((c, i) => {
    const d = DATA.char_diff[i];
    if (d !== null) { counted++; if (d < 0) wins++; }
    const color = d === null ? "transparent" : d < 0 ? `rgba(30, 160, 60, ${Math.min(-d / 4, 1).toFixed(3)})`
                                                     : `rgba(150, 60, 200, ${Math.min(d / 4, 1).toFixed(3)})`;
    return `<span style="background:${color}" title="${d === null ? "" : d + " bits"}">` +
      `${escapeHtml(c === "\\n" ? "\\u21b5\\n" : c)}</span>`;
  });
  const theirs = B.pieces.map((piece, i) => `<span class="tok" style="background:${shade(B.bits[i])}" ` +
    `title="${B.bits[i] === null ? "" : B.bits[i] + " bits"}">${escapeHtml(show(piece))}</span>`);
  document.getElementById("compare").innerHTML = `<h2>${escapeHtml(B.source)}: its tokens, shaded by loss</h2>` +
    `<div id="second" class="text">${theirs.join("")}</div><h2>${escapeHtml(M.source)} against ` +
    `${escapeHtml(B.source)}, per character</h2><div class="note">green: ${escapeHtml(M.source)} spends fewer ` +
    `bits on the character; purple: ${escapeHtml(B.source)} does. ${escapeHtml(M.source)} wins on ` +
    `<span id="wins">${(100 * wins / Math.max(counted, 1)).toFixed(1)}</span>% of the characters.</div>` +
    `<div class="text">${spans.join("")}</div>`;
}

summary(); drawText(); drawHeads(); drawCompare();
</script></body></html>
"""

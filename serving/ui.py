"""A web page for people: ``/ui`` (search, every stage's positions, cosine and calibrated relevance as
bars with the threshold, the primary and a shadow side by side) and ``/ui/ab`` (the A/B test's state from
the event log: per-arm CTR with an interval and the sample-ratio check, interleaving, latency).

Server-rendered HTML (no front-end build step, no JS library): a few lines of inline JS only highlight a
document in both columns on hover. The page reads; it never writes to the event log.
"""

from __future__ import annotations

import asyncio
import html
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Query
from fastapi.responses import HTMLResponse

from retrieval.errors import SiftrankError

if TYPE_CHECKING:
    from retrieval.hits import Hit
    from serving.experiment import ExperimentConfig
    from serving.variants import Variant, VariantPool

STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222} a{color:#2a6fb0}
form{margin-bottom:1em} input[name=q]{width:32em;padding:.3em} .cols{display:flex;gap:2em;align-items:flex-start}
section{flex:1;min-width:0} ol{padding-left:1.4em} li{margin:.5em 0;padding:.2em;border-radius:4px}
li.same{background:#fff4c2} .id{font-family:monospace;font-weight:bold} .pos{color:#666;font-size:12px}
.bar{position:relative;height:9px;background:#eee;width:16em;margin:2px 0;border-radius:2px}
.bar>span{position:absolute;left:0;top:0;bottom:0;border-radius:2px} .cos>span{background:#8aa9cf}
.rel>span{background:#2a6fb0} .thr{position:absolute;top:-3px;bottom:-3px;width:2px;background:#c0392b}
.text{color:#444;font-size:12px} .meta{color:#2c6e9b;font-size:11px} table{border-collapse:collapse;margin:.5em 0 1.5em} td,th{border:1px solid #ccc;padding:.2em .6em;text-align:right}
th:first-child,td:first-child{text-align:left} .flag{color:#c0392b;font-weight:bold} .ok{color:#27ae60}
"""
HOVER = """
document.querySelectorAll('li[data-doc]').forEach(li => {
  const same = () => document.querySelectorAll(`li[data-doc="${li.dataset.doc}"]`);
  li.addEventListener('mouseenter', () => same().forEach(x => x.classList.add('same')));
  li.addEventListener('mouseleave', () => same().forEach(x => x.classList.remove('same')));
});
"""


def page(title: str, body: str) -> HTMLResponse:
    nav = '<p><a href="/ui">search</a> · <a href="/ui/ab">A/B test</a> · <a href="/docs">API</a></p>'
    return HTMLResponse(f"<!doctype html><html><head><meta charset=utf-8><title>{html.escape(title)}</title>"
                        f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>{nav}{body}"
                        f"<script>{HOVER}</script></body></html>")


def bar(kind: str, value: float | None, threshold: float | None = None) -> str:
    if value is None:
        return ""
    width = max(0.0, min(1.0, value)) * 100
    line = f'<i class="thr" style="left:{threshold * 100:.1f}%" title="threshold {threshold:.3f}"></i>' if threshold is not None else ""
    return f'<div class="bar {kind}" title="{kind} {value:.3f}"><span style="width:{width:.1f}%"></span>{line}</div>'


def metadata(fields: dict[str, object] | None) -> str:
    """A hit's metadata as one line of ``field: value`` pairs (nothing when it has none)."""
    if not fields:
        return ""
    shown = " · ".join(f"{k}: {', '.join(map(str, v)) if isinstance(v, list) else v}" for k, v in fields.items())
    return f'<div class="meta">{html.escape(shown)}</div>'


def hit_items(hits: list[Hit], positions: dict[str, dict[str, int]], threshold: float | None) -> str:
    """One <li> per hit: id, its position in each stage, cosine and relevance bars, text, metadata."""
    items = []
    for h in hits:
        where = " → ".join(f"{stage} #{ranks[h.id]}" if h.id in ranks else f"{stage} –" for stage, ranks in positions.items())
        relevance = f" relevance {h.relevance:.3f}" if h.relevance is not None else ""
        cosine = f"cosine {h.cosine:.3f}" if h.cosine is not None else f"score {h.score:.3f}"
        items.append(f'<li data-doc="{html.escape(h.id)}"><span class="id">{html.escape(h.id)}</span> '
                     f'<span class="pos">{html.escape(where)} · {cosine}{relevance}</span>'
                     f'{bar("cos", h.cosine)}{bar("rel", h.relevance, threshold)}'
                     f'<div class="text">{html.escape((h.text or "")[:220])}</div>{metadata(h.metadata)}</li>')
    return "<ol>" + "".join(items) + "</ol>"


def table(rows: dict[str, dict[str, Any]], label: str) -> str:
    if not rows:
        return "<p>(none in the log yet)</p>"
    columns = list(dict.fromkeys(k for row in rows.values() for k in row))

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.4g}"
        if value == "MISMATCH":
            return '<span class="flag">MISMATCH</span>'
        return '<span class="ok">ok</span>' if value == "ok" else html.escape(str(value))

    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(f"<tr><td>{html.escape(name)}</td>" + "".join(f"<td>{cell(row.get(c, ''))}</td>" for c in columns) + "</tr>"
                   for name, row in rows.items())
    return f"<table><tr><th>{html.escape(label)}</th>{head}</tr>{body}</table>"


def router(current: Callable[[], tuple[VariantPool | None, ExperimentConfig]]) -> APIRouter:
    """The /ui routes of one service: ``current`` gives the variant pool serving now (None while it loads)
    and the experiment config beside it (both are swapped together when the service reloads)."""
    ui = APIRouter(include_in_schema=False)

    async def shadow_hits(variant: Variant, query: str, k: int) -> list[Hit]:
        answer = await variant.batcher.search(query)
        return variant.finish(answer.hits, k, None)

    @ui.get("/ui", response_class=HTMLResponse)
    async def search_page(q: str = Query("", max_length=512), k: int = Query(10, ge=1, le=50)) -> HTMLResponse:
        pool = current()[0]
        form = (f'<form action="/ui"><input name="q" value="{html.escape(q)}" placeholder="search" autofocus> '
                f'<input name="k" type="number" min="1" max="50" value="{k}" style="width:4em"> <button>Search</button></form>')
        if pool is None:
            return page("siftrank", form + "<p>variants are still loading…</p>")
        experiment = pool.config.experiment
        primary = pool[experiment.primary]
        if not q.strip() or primary.pipeline is None:
            return page("siftrank", form)
        result = await asyncio.to_thread(primary.pipeline.run, {"q": q})
        final = primary.pipeline.finish(result.hits["q"], k, with_text=True)
        positions = {stage: {h.id: h.rank for h in hits["q"]} for stage, hits in result.stages.items()}
        threshold = getattr(primary.pipeline.filter, "threshold", None)
        left = (f"<section><h2>primary: {html.escape(primary.name)}</h2><p class=pos>stages: "
                f"{html.escape(' → '.join(result.stages))}" + (f"; threshold {threshold:.3f} (red line)" if threshold is not None else "")
                + f"</p>{hit_items(final, positions, threshold)}</section>")
        right = ""
        shadows = [s.variant for s in experiment.shadows if s.variant in pool.variants] or \
                  [n for n in pool.variants if n != experiment.primary]
        if shadows:
            other = pool[shadows[0]]
            hits = await shadow_hits(other, q, k)
            shared = len({h.id for h in hits} & {h.id for h in final})
            right = (f"<section><h2>shadow: {html.escape(other.name)}</h2><p class=pos>overlap@{k} with the primary: "
                     f"<b id=overlap>{shared}/{k}</b></p>{hit_items(hits, {}, None)}</section>")
        return page("siftrank", form + f'<div class="cols">{left}{right}</div>')

    @ui.get("/ui/ab", response_class=HTMLResponse)
    async def ab_page() -> HTMLResponse:
        from eval.abreport import ABReport

        config = current()[1]
        experiment = config.experiment
        try:
            report = await asyncio.to_thread(ABReport, config.service.event_log)
        except SiftrankError as exc:
            return page(f"A/B: {experiment.name}", f"<p>{html.escape(str(exc))}</p>")
        arms = await asyncio.to_thread(report.arms, experiment.ab or None)
        wins, latency = report.interleaving(), report.latency()
        split = ", ".join(f"{n} {w:g}" for n, w in experiment.ab.items()) or "none"
        body = (f"<p>experiment <b>{html.escape(experiment.name)}</b>, primary <b>{html.escape(experiment.primary)}</b>, "
                f"A/B split: {html.escape(split)}</p>"
                "<h2>Arms</h2><p class=pos>CTR: share of an arm's queries with a click, 95% Wilson interval; SRM: "
                "chi-square of users per arm against the split, flagged at p &lt; 0.001.</p>" + table(arms, "arm")
                + "<h2>Interleaving</h2><p class=pos>per query, the team with more clicks wins; two-sided binomial test "
                "on wins vs losses; decision: promote the pair's second variant only when it wins with p &lt; 0.05, else keep the "
                "first.</p>" + table(wins, "pair") + "<h2>Latency (ms)</h2>" + table(latency, "variant"))
        return page(f"A/B: {experiment.name}", body)

    return ui

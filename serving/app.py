"""The search service: FastAPI over the variants of an experiment, with shadows, A/B, interleaving and a log.

    POST /search      hits of the variant the request is assigned to (or an interleaved list)
    POST /feedback    impressions and clicks; interleaving credit is computed server-side
    GET  /ui, /ui/ab  web pages: a search with every stage shown, and the A/B test's state
    GET  /variants    what runs, and in which role
    GET  /healthz     the process is up;  GET /readyz: 503 until every variant is loaded and warmed
    GET  /metrics     Prometheus
    POST /documents, DELETE /documents/{id}   write the live corpus (with [service].documents_log; admin key)
    GET  /documents/{id}   one document as the primary variant holds it
    POST /admin/reload, /admin/promote, /admin/compact   behind the X-API-Key header (compared in constant time)

CPU work runs on each variant's worker thread (micro-batched), never on the event loop. Shadows run
after the response, through a bounded queue. Every request, result list, stage timing and feedback
event goes to the SQLite event log through a background writer.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import json
import logging
import os
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from fastapi import BackgroundTasks, FastAPI, Header, HTTPException, Request, Response
from fastapi.exception_handlers import http_exception_handler, request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from retrieval.errors import SiftrankError
from retrieval.hits import Hit
from serving.documents import DocumentWriter
from serving.eventlog import EventLog
from serving.experiment import ExperimentConfig, ServiceSection, bucket
from serving.interleave import TeamDraft
from serving.metrics import ServiceMetrics
from serving.schemas import (
    DocumentsRequest,
    DocumentsResponse,
    FeedbackRequest,
    FeedbackResponse,
    HitOut,
    PromoteRequest,
    SearchRequest,
    SearchResponse,
)
from serving.shadow import ShadowRunner
from serving.variants import Variant, VariantPool

log = logging.getLogger(__name__)
API_KEY_ENV = "SIFTRANK_API_KEY"
RETIRE_AFTER_S = 30.0  # a replaced pool is closed this long after the swap
FEEDBACK_COMMIT_S = 10.0  # longest /feedback waits for its commit before answering 503 (retry)
DRAFTS_KEPT = 100_000  # interleaved lists remembered for crediting feedback (oldest forgotten first)


class SearchService:
    """State behind the API: the variant pool (swapped atomically), log, shadows, metrics."""

    def __init__(self, config: ExperimentConfig, source: Path | None = None, pool: VariantPool | None = None) -> None:
        self.config, self.source = config, source
        self.pool: VariantPool | None = pool
        self.owned: list[VariantPool] = []  # pools this service built (and closes); a given one stays open
        self.metrics = ServiceMetrics()
        self.log = EventLog(config.service.event_log, config.service.event_batch, config.service.event_flush_ms)
        self.shadows = ShadowRunner(config.service.shadow_queue, config.service.shadow_workers,
                                    lambda v, reason: self.metrics.shadow_drops.labels(v, reason).inc())
        self.drafts: OrderedDict[str, TeamDraft] = OrderedDict()
        self.load_error: str | None = None
        service = config.service
        self.documents = DocumentWriter(service.documents_log, service.compact_after) if service.documents_log else None

    async def load(self) -> None:
        """Build and warm the pool off the event loop; /readyz turns 200 once it is in place."""
        if self.pool is not None:
            return
        try:
            self.pool = await asyncio.to_thread(VariantPool.build, self.config)
            self.owned.append(self.pool)
        except Exception as exc:  # noqa: BLE001 - reported by /readyz, the process stays up
            self.load_error = str(exc)
            log.error("variants failed to load: %s", exc)

    # ---- search: route, run, merge, record ------------------------------------------------------------
    async def search(self, request: SearchRequest, after: list[Callable[[], object]] | None = None) -> SearchResponse:
        """Answer one search. Shadow jobs are appended to ``after`` (run once the response is sent);
        without it they are offered right away."""
        start = time.perf_counter()
        pool = self.pool  # one snapshot for the whole request: a reload swaps the reference, never this
        if pool is None:
            raise HTTPException(503, "variants are still loading")
        self._validate(request, pool.config.service)
        query_id = uuid.uuid4().hex
        mode, names = self._route(request, pool, request.user_id or request.session_id or query_id)
        # the corpus version the answering variants held (the older one of an interleaved pair)
        held = [pool[n].corpus_version for n in names]
        version = min(v for v in held if v is not None) if None not in held else None
        flags = ["rerank_unavailable"] if request.rerank and any("rerank" not in pool[n].stages for n in names) else []
        answers = await asyncio.gather(*(self._run(pool[n], request, query_id, "served") for n in names))
        served, shown = self._merge(mode, names, answers, request.k, query_id)
        swap = pool.config.swap_rank(query_id, len(shown)) if mode in ("primary", "ab") else None
        if swap is not None:  # an exploration search: the top hit and the hit at `swap` change places
            (top, team_top), (low, team_low) = shown[0], shown[swap - 1]
            shown[0], shown[swap - 1] = (replace(low, rank=1), team_low), (replace(top, rank=swap), team_top)
            flags.append(f"swap:{swap}")
        latency_ms = 1000 * (time.perf_counter() - start)
        self._record(pool, request, query_id, mode, served, shown, flags, latency_ms, names, after, version)
        return SearchResponse(query_id=query_id, variant=served, mode=mode, flags=flags, latency_ms=latency_ms,
                              hits=[HitOut(id=h.id, rank=h.rank, text=h.text, metadata=h.metadata, cosine=h.cosine, relevance=h.relevance,
                                           score=h.score, variant=team) for h, team in shown])

    @staticmethod
    def _validate(request: SearchRequest, service: ServiceSection) -> None:
        if len(request.query) > service.max_query_chars:
            raise HTTPException(422, f"query longer than {service.max_query_chars} characters")
        if request.k > service.max_k:
            raise HTTPException(422, f"k must be <= {service.max_k}")

    @staticmethod
    def _route(request: SearchRequest, pool: VariantPool, unit: str) -> tuple[str, list[str]]:
        """Which variants answer: the one asked for, an interleaved pair, an A/B arm, or the primary."""
        experiment = pool.config.experiment
        if request.variant is not None:
            if request.variant not in pool.variants:
                raise HTTPException(404, f"unknown variant '{request.variant}'; known: {', '.join(pool.variants)}")
            return "explicit", [request.variant]
        if pool.config.interleaves(unit):
            return "interleave", list(experiment.interleave)
        if experiment.ab:
            return "ab", [pool.config.assign(unit)]
        return "primary", [experiment.primary]

    def _merge(self, mode: str, names: list[str], answers: list[list[Hit]], k: int,
               query_id: str) -> tuple[str, list[tuple[Hit, str]]]:
        """The list shown (with each hit's team) and who served it; interleaved lists are remembered for credit."""
        if mode != "interleave":
            return names[0], [(h, names[0]) for h in answers[0]]
        (a, hits_a), (b, hits_b) = zip(names, answers)
        draft = TeamDraft.merge((a, [h.id for h in hits_a]), (b, [h.id for h in hits_b]), k, query_id)
        by_id = {h.id: h for h in hits_b} | {h.id: h for h in hits_a}
        self._remember(query_id, draft)
        return f"{a}+{b}", [(replace(by_id[d], rank=r), team) for r, (d, team) in enumerate(zip(draft.docs, draft.teams), 1)]

    def _record(self, pool: VariantPool, request: SearchRequest, query_id: str, mode: str, served: str,
                shown: list[tuple[Hit, str]], flags: list[str], latency_ms: float, names: list[str],
                after: list[Callable[[], object]] | None, version: int | None) -> None:
        """Log the query and what was shown, observe the latency, and offer the shadows their copy."""
        experiment = pool.config.experiment
        self.log.add("queries", query_id, time.time(), experiment.name, request.user_id, request.session_id,
                     request.query, mode, served, request.k, latency_ms, json.dumps(flags), version)
        rows = [(query_id, served, "shown", h.rank, h.id, h.score, h.cosine, h.relevance, team) for h, team in shown]
        if mode == "interleave":  # committed now: the click may reach another worker process
            self.log.write_now("results", rows)
        else:
            self.log.add_many("results", rows)
        self.metrics.request.labels(served, "served").observe(latency_ms / 1000)
        for shadow in experiment.shadows:
            if shadow.variant not in names and bucket(f"{query_id}:{shadow.variant}") < shadow.sample_rate:
                job = functools.partial(self._run, pool[shadow.variant], request, query_id, "shadow")
                offer = functools.partial(self.shadows.offer, shadow.variant, shadow.timeout_ms / 1000, job)
                if after is not None:
                    after.append(offer)
                else:
                    offer()
        self.metrics.queue.labels("shadow").set(self.shadows.depth)
        self.metrics.queue.labels("events").set(self.log.pending)

    async def _run(self, variant: Variant, request: SearchRequest, query_id: str, role: str) -> list[Hit]:
        """One variant's top-k (micro-batched), logged with its stage timings and threshold cut."""
        start = time.perf_counter()
        self.metrics.queue.labels(f"batch:{variant.name}").set(variant.batcher.depth)
        try:
            if request.filter is not None and variant.pipeline is not None:
                variant.pipeline.where(request.filter)  # a bad filter is refused before it joins a batch
            answer = await variant.batcher.search(request.query, request.filter)
        except SiftrankError as exc:
            raise HTTPException(422, f"variant '{variant.name}': {exc}") from None
        try:
            hits = variant.finish(answer.hits, request.k, request.min_relevance)
        except SiftrankError as exc:
            raise HTTPException(422, f"variant '{variant.name}': {exc}") from None
        for stage, ms in answer.stage_ms.items():
            self.metrics.stage.labels(variant.name, stage).observe(ms / 1000 / max(answer.batch, 1))
            self.log.add("stages", query_id, variant.name, role, stage, ms / max(answer.batch, 1),
                         answer.cut if stage == "filter" else None)
        self.metrics.batch.labels(variant.name).observe(answer.batch)
        if answer.cut:
            self.metrics.cut.labels(variant.name).inc(answer.cut)
        self.log.add_many("results", [(query_id, variant.name, role, h.rank, h.id, h.score, h.cosine, h.relevance, None)
                                      for h in hits])
        if role == "shadow":
            self.metrics.request.labels(variant.name, "shadow").observe(time.perf_counter() - start)
        return hits

    def _remember(self, query_id: str, draft: TeamDraft) -> None:
        self.drafts[query_id] = draft
        while len(self.drafts) > DRAFTS_KEPT:
            self.drafts.popitem(last=False)

    async def feedback(self, request: FeedbackRequest) -> FeedbackResponse:
        """Log impressions and clicks, answering only once they are committed (clicks are training data: an
        acknowledged click survives kill -9), and credit an interleaved list's teams."""
        now = time.time()
        committed = self.log.commit("feedback", [(now, request.query_id, request.user_id, e.doc_id, e.position, e.event)
                                                 for e in request.events])
        try:
            await asyncio.wait_for(asyncio.wrap_future(committed), FEEDBACK_COMMIT_S)
        except Exception as exc:  # noqa: BLE001 - the client must retry: nothing acknowledged was lost
            raise HTTPException(503, f"feedback not committed to the event log ({type(exc).__name__}): retry") from None
        draft = self.drafts.get(request.query_id)
        if draft is None:  # shown by another worker (or before a restart): the teams are in the event log
            shown = self.log.teams(request.query_id)
            draft = TeamDraft([d for d, _ in shown], [t for _, t in shown]) if shown else None
        credited = draft.credit([e.doc_id for e in request.events if e.event == "click"]) if draft else {}
        return FeedbackResponse(accepted=len(request.events), credited=credited)

    # ---- admin ----------------------------------------------------------------------------------------
    async def reload(self) -> dict[str, Any]:
        """Re-read the experiment file and swap in freshly built variants; on failure the old ones keep serving."""
        if self.source is None:
            raise HTTPException(409, "this service was not started from an experiment file: nothing to reload")
        try:
            config = ExperimentConfig.load(self.source)
            if self.documents is not None:
                async with self.documents.lock:  # no write lands between the new pool's replay and the swap
                    pool = await asyncio.to_thread(VariantPool.build, config)
            else:
                pool = await asyncio.to_thread(VariantPool.build, config)
        except Exception as exc:  # noqa: BLE001 - any failure leaves the serving pool untouched
            raise HTTPException(422, f"reload failed, the previous variants keep serving: {exc}") from None
        old, self.pool, self.config = self.pool, pool, config
        self.owned.append(pool)
        if old is not None and old in self.owned:  # requests still running on the old pool get to finish
            self.owned.remove(old)
            asyncio.get_running_loop().create_task(_close_later(old, RETIRE_AFTER_S))
        return {"reloaded": list(pool.variants)}

    # ---- documents --------------------------------------------------------------------------------------
    def _writer(self) -> tuple[DocumentWriter, VariantPool]:
        if self.documents is None:
            raise HTTPException(409, "this service has no live corpus: set [service].documents_log to write documents")
        if self.pool is None:
            raise HTTPException(503, "variants are still loading")
        return self.documents, self.pool

    async def upsert(self, request: DocumentsRequest) -> DocumentsResponse:
        writer, pool = self._writer()
        docs = [d.model_dump(exclude_none=True) for d in request.documents]
        version = await writer.write(pool, docs, [])
        self.metrics.documents.labels("upsert").inc(len(docs))
        return DocumentsResponse(version=version, upserted=len(docs))

    async def delete(self, doc_id: str) -> DocumentsResponse:
        writer, pool = self._writer()
        if writer.primary(pool).document(doc_id) is None:
            raise HTTPException(404, f"no document '{doc_id}'")
        version = await writer.write(pool, [], [doc_id])
        self.metrics.documents.labels("delete").inc()
        return DocumentsResponse(version=version, deleted=1)

    def document(self, doc_id: str) -> dict[str, Any]:
        writer, pool = self._writer()
        corpus = writer.primary(pool)
        found = corpus.document(doc_id)
        if found is None:
            raise HTTPException(404, f"no document '{doc_id}'")
        return {**found, "version": corpus.state.version}

    async def compact(self) -> dict[str, Any]:
        writer, pool = self._writer()
        version = await writer.compact(pool)
        return {"version": version, **writer.last_compaction}

    async def promote(self, name: str) -> dict[str, Any]:
        """Make a shadow the primary (it stops being a shadow); the swap is one assignment."""
        pool = self.pool
        if pool is None:
            raise HTTPException(503, "variants are still loading")
        experiment = pool.config.experiment
        if name not in {s.variant for s in experiment.shadows}:
            raise HTTPException(409, f"'{name}' is not a shadow variant")
        new_experiment = experiment.model_copy(update={
            "primary": name, "shadows": [s for s in experiment.shadows if s.variant != name]})
        config = pool.config.model_copy(update={"experiment": new_experiment})
        retired = pool[name].batcher
        self.pool = pool.promoted(config, name)
        self.config = config
        asyncio.get_running_loop().create_task(_close_batcher_later(retired, RETIRE_AFTER_S))
        return {"primary": name}


async def _close_later(pool: VariantPool, delay_s: float) -> None:
    await asyncio.sleep(delay_s)
    await pool.close()


async def _close_batcher_later(batcher, delay_s: float) -> None:
    await asyncio.sleep(delay_s)
    await batcher.close()


def create_app(config: ExperimentConfig, source: Path | None = None, pool: VariantPool | None = None) -> FastAPI:
    """The FastAPI app serving ``config`` (``source``: its file, for /admin/reload; ``pool``: prebuilt variants)."""
    service = SearchService(config, source, pool)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        service.shadows.start()
        loader = asyncio.get_running_loop().create_task(service.load())
        yield
        loader.cancel()
        await service.shadows.drain(2.0)
        await service.shadows.stop()
        for pool in service.owned:
            await pool.close()
        service.log.close()
        if service.documents is not None:
            service.documents.close()

    app = FastAPI(title="siftrank", version="0.1.0", lifespan=lifespan,
                  description="Dense retrieval with calibrated relevance, A/B tests, interleaving and shadow variants.")
    app.state.service = service
    app.add_middleware(BodyLimit, limit=config.service.max_body_bytes,
                       documents_limit=config.service.max_documents_bytes)
    app.add_middleware(WorkerHeader)
    from serving.ui import router as ui_router

    app.include_router(ui_router(lambda: (service.pool, service.config)))

    @app.exception_handler(SiftrankError)
    async def _siftrank_error(_: Request, exc: SiftrankError) -> JSONResponse:
        service.metrics.errors.labels("422").inc()
        return JSONResponse({"detail": str(exc)}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        service.metrics.errors.labels(str(exc.status_code)).inc()
        return await http_exception_handler(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        service.metrics.errors.labels("422").inc()
        return await request_validation_exception_handler(request, exc)

    @app.post("/search", response_model=SearchResponse, responses={404: {"description": "unknown variant"},
                                                                     422: {"description": "invalid request"},
                                                                     503: {"description": "not ready"}})
    async def search(request: SearchRequest, background: BackgroundTasks) -> SearchResponse:
        """Search with the variant this request is assigned to (A/B, interleaving, or the primary)."""
        after: list[Callable[[], object]] = []
        response = await service.search(request, after)
        for offer in after:  # shadows are queued only once the response has been sent
            background.add_task(offer)
        return response

    @app.post("/feedback", response_model=FeedbackResponse)
    async def feedback(request: FeedbackRequest) -> FeedbackResponse:
        """Impressions and clicks (with positions) on an earlier search's hits."""
        return await service.feedback(request)

    @app.get("/variants")
    async def variants() -> dict[str, Any]:
        """The experiment and every variant with its stages and role."""
        pool = service.pool
        experiment = service.config.experiment
        return {"experiment": experiment.name, "primary": experiment.primary,
                "variants": pool.describe() if pool is not None else []}

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", responses={503: {"description": "loading, or failed to load"}})
    async def readyz(response: Response) -> dict[str, Any]:
        if service.pool is None:
            response.status_code = 503
            return {"ready": False, "error": service.load_error}
        return {"ready": True, "variants": list(service.pool.variants)}

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(service.metrics.render(), media_type="text/plain; version=0.0.4")

    def authorise(key: str | None) -> None:
        expected = os.environ.get(API_KEY_ENV)
        if not expected:
            raise HTTPException(403, f"admin endpoints are disabled: set {API_KEY_ENV}")
        if key is None or not hmac.compare_digest(key.encode(), expected.encode()):
            raise HTTPException(401, "missing or wrong X-API-Key")

    @app.post("/admin/reload", responses={401: {}, 403: {}, 409: {}, 422: {}})
    async def reload(x_api_key: str | None = Header(None)) -> dict[str, Any]:
        """Rebuild the variants from the experiment file and swap them in atomically."""
        authorise(x_api_key)
        return await service.reload()

    @app.post("/documents", response_model=DocumentsResponse, responses={401: {}, 403: {}, 409: {}, 413: {}, 422: {}})
    async def upsert_documents(request: DocumentsRequest, x_api_key: str | None = Header(None)) -> DocumentsResponse:
        """Add or replace documents (by id). Answered once the batch is durable and searchable in every variant."""
        authorise(x_api_key)
        return await service.upsert(request)

    @app.delete("/documents/{doc_id}", response_model=DocumentsResponse, responses={401: {}, 403: {}, 404: {}, 409: {}})
    async def delete_document(doc_id: str, x_api_key: str | None = Header(None)) -> DocumentsResponse:
        """Delete a document: once answered, no search returns it again."""
        authorise(x_api_key)
        return await service.delete(doc_id)

    @app.get("/documents/{doc_id}", responses={404: {}, 409: {}})
    async def get_document(doc_id: str) -> dict[str, Any]:
        """A document as the primary variant serves it, with the corpus version."""
        return service.document(doc_id)

    @app.post("/admin/compact", responses={401: {}, 403: {}, 409: {}})
    async def compact(x_api_key: str | None = Header(None)) -> dict[str, Any]:
        """Fold the written documents into new snapshots now (searches go on; writes wait) and truncate the log."""
        authorise(x_api_key)
        return await service.compact()

    @app.post("/admin/promote", responses={401: {}, 403: {}, 409: {}})
    async def promote(request: PromoteRequest, x_api_key: str | None = Header(None)) -> dict[str, Any]:
        """Promote a shadow variant to primary."""
        authorise(x_api_key)
        return await service.promote(request.variant)

    return app


class WorkerHeader:
    """ASGI middleware: every response names the worker process that answered (``X-Siftrank-Worker``),
    for operators behind several workers (and the two-worker interleaving test)."""

    def __init__(self, app) -> None:
        self.app, self.header = app, (b"x-siftrank-worker", str(os.getpid()).encode())

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def named(message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), self.header]}
            await send(message)

        return await self.app(scope, receive, named)


class BodyLimit:
    """ASGI middleware: request bodies over ``limit`` bytes get 413 before any handler reads them.
    A declared Content-Length is checked up front; a body without one is read (up to the limit) first."""

    def __init__(self, app, limit: int, documents_limit: int | None = None) -> None:
        self.app, self.search_limit, self.documents_limit = app, limit, documents_limit or limit

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.documents_limit if scope.get("path", "").startswith("/documents") else self.search_limit
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                return await _reply(send, 400, "invalid Content-Length")
            if int(declared) > limit:
                return await _reply(send, 413, f"request body over {limit} bytes")
            return await self.app(scope, receive, send)
        if scope.get("method") not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return await self.app(scope, receive, send)  # disconnect: let the app see it
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > limit:
                return await _reply(send, 413, f"request body over {limit} bytes")
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


async def _reply(send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})

"""Request and response models of the search API (validated at the edge; examples for the OpenAPI docs)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

QUERY_LIMIT = 512  # characters; the service config can lower it


class SearchRequest(BaseModel):
    """A search: the query and how many hits; optional stricter relevance cut, variant, user and session."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"query": "causes of left ventricular hypertrophy", "k": 10, "user_id": "u-42"}]})

    query: str = Field(min_length=1, max_length=QUERY_LIMIT)
    k: int = Field(10, ge=1, le=1000)
    min_relevance: float | None = Field(None, ge=0.0, le=1.0)
    rerank: bool = Field(False, description="Expect LLM re-ranking: flagged rerank_unavailable when the serving "
                         "variant's pipeline has no [rerank] stage (the stage is configured per variant).")
    variant: str | None = Field(None, max_length=128)
    user_id: str | None = Field(None, max_length=256)
    session_id: str | None = Field(None, max_length=256)
    filter: dict[str, Any] | None = Field(None, description="Only documents whose metadata match: equality "
                                          '({"source": "pubmed"}), in ({"lang": {"in": ["en", "de"]}}), range '
                                          '({"year": {"gte": 2020}}); all conditions must hold.')

    @field_validator("query")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("the query is empty or whitespace")
        return value


MetadataValue = str | int | float | bool | list[str]
DOCUMENT_CHARS = 1_000_000  # one document's text; longer ones are refused (split them into passages)


class DocumentIn(BaseModel):
    """One document to index: its id, text, optional title and metadata (filterable fields)."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=256)
    text: str = Field(min_length=1, max_length=DOCUMENT_CHARS)
    title: str | None = Field(None, max_length=10_000)
    metadata: dict[str, MetadataValue] | None = None

    @field_validator("text")
    @classmethod
    def _text_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("the text is empty or whitespace")
        return value


class DocumentsRequest(BaseModel):
    """A batch of documents to add or replace (by id), applied together as one corpus version."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"documents": [{"id": "doc-1", "title": "Aspirin", "text": "Aspirin lowers the risk of ...",
                        "metadata": {"source": "pubmed", "year": 2021, "lang": "en"}}]}]})

    documents: list[DocumentIn] = Field(min_length=1, max_length=1000)

    @field_validator("documents")
    @classmethod
    def _unique_ids(cls, documents: list[DocumentIn]) -> list[DocumentIn]:
        seen: set[str] = set()
        for doc in documents:
            if doc.id in seen:
                raise ValueError(f"duplicate id '{doc.id}' in the batch")
            seen.add(doc.id)
        return documents


class DocumentsResponse(BaseModel):
    version: int  # the corpus version that holds the write (searches log the version that answered them)
    upserted: int = 0
    deleted: int = 0


class HitOut(BaseModel):
    id: str
    rank: int
    text: str | None = None
    metadata: dict[str, Any] | None = None
    cosine: float | None = None
    relevance: float | None = None
    score: float
    variant: str


class SearchResponse(BaseModel):
    """Hits in ranked order; ``variant`` says who answered (``a+b`` for an interleaved list); ``flags``
    name anything degraded (e.g. ``rerank_unavailable``)."""

    query_id: str
    variant: str
    mode: Literal["primary", "explicit", "ab", "interleave"]
    hits: list[HitOut]
    flags: list[str] = Field(default_factory=list)
    latency_ms: float


class FeedbackEvent(BaseModel):
    model_config = ConfigDict(extra="forbid")

    doc_id: str = Field(min_length=1, max_length=256)
    position: int = Field(ge=1, le=1000)
    event: Literal["impression", "click"]


class FeedbackRequest(BaseModel):
    """Impressions and clicks on the hits of one earlier search (its ``query_id``)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"query_id": "3f2a...", "user_id": "u-42", "events": [{"doc_id": "7067032", "position": 1, "event": "click"}]}]})

    query_id: str = Field(min_length=1, max_length=64)
    user_id: str | None = Field(None, max_length=256)
    events: list[FeedbackEvent] = Field(min_length=1, max_length=1000)


class FeedbackResponse(BaseModel):
    accepted: int
    credited: dict[str, int] = Field(default_factory=dict)  # interleaving: clicks per team for this query


class PromoteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    variant: str = Field(min_length=1, max_length=128)

"""``siftrank index build``: encode a corpus into a FAISS index directory (or a sharded one on Ray)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from retrieval.data import Dataset
from retrieval.errors import SiftrankError
from retrieval.stages.registry import FIRST_STAGES
from serving.cli.common import (
    ModelOpt,
    OverwriteOpt,
    PipelineOpt,
    Verbose,
    app,
    load_config,
    refuse_existing,
    refuse_stages,
    setup_logging,
)

index_app = typer.Typer(help="Build FAISS indexes over a corpus, and update them.", no_args_is_help=True)
app.add_typer(index_app, name="index")
IdFieldOpt = Annotated[Optional[str], typer.Option("--id-field", help="Column of document ids (default: the first of _id, id, docid, doc_id, pid).")]
TextFieldOpt = Annotated[Optional[str], typer.Option("--text-field", help="Column of document texts (default: the first of text, contents, body, passage).")]
TitleFieldOpt = Annotated[str, typer.Option("--title-field", help="Column of titles (optional in every row; '' for none).")]
OnErrorOpt = Annotated[str, typer.Option("--on-error", help="A bad row (no id or text, a duplicate id, a wrong type): fail (stop, nothing written) or skip (leave it out, list it).")]


def _read(corpus: Path, id_field: str | None, text_field: str | None, title_field: str, on_error: str) -> Dataset:
    """The corpus file read as the options say; skipped rows are listed on stderr."""
    from retrieval.corpus import CorpusReader
    from retrieval.data import Dataset

    if on_error not in ("fail", "skip"):
        raise SiftrankError(f"--on-error must be fail or skip, not '{on_error}'")
    dataset = Dataset.corpus_only(corpus, CorpusReader(id_field, text_field, title_field or None, on_error))  # type: ignore[arg-type]
    for line in dataset.corpus_skipped[:20]:
        typer.echo(f"skipped {line}", err=True)
    if dataset.corpus_skipped:
        typer.echo(f"skipped {len(dataset.corpus_skipped)} bad rows of {dataset.corpus_path}", err=True)
    return dataset


@index_app.command("build")
def index_build(
    corpus: Annotated[Path, typer.Option("--corpus", help="A corpus file (JSONL, CSV, TSV or Parquet, optionally .gz; BEIR corpus.jsonl and MS MARCO collection.tsv included) or a dataset directory holding one. Columns other than id, text and title are kept as metadata, for filters.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Index directory to write (written atomically).")],
    pipeline: PipelineOpt = None,
    model: ModelOpt = None,
    kind: Annotated[Optional[str], typer.Option(help="flat (exact), ivf (inverted lists) or hnsw (graph). Default: the config's (flat).")] = None,
    device: Annotated[Optional[str], typer.Option(help="Index device: auto (GPU when FAISS sees one), cpu or gpu.")] = None,
    precision: Annotated[Optional[str], typer.Option(help="Encoder precision: auto (fp16 on a GPU; on a CPU fp32 and bf16 are timed on this machine and the faster kept), fp32, bf16, fp16.")] = None,
    overwrite: OverwriteOpt = False,
    ray: Annotated[Optional[str], typer.Option("--ray", help="Build a sharded index on Ray: a cluster address (HOST:PORT, ray://HOST:PORT, auto) or 'local'. A failed build resumes when run again.")] = None,
    shards: Annotated[int, typer.Option(min=1, help="With --ray: number of FAISS shards (one search actor each).")] = 2,
    id_field: IdFieldOpt = None,
    text_field: TextFieldOpt = None,
    title_field: TitleFieldOpt = "title",
    on_error: OnErrorOpt = "fail",
    verbose: Verbose = False,
) -> None:
    """Encode a corpus and write a FAISS index directory (index.faiss, docs.parquet, manifest.json), or with
    --ray a sharded one (encoded by Ray Data actors, one FAISS shard per partition)."""
    from retrieval.indexer import Indexer

    setup_logging(verbose)
    config = load_config(pipeline, model=model, kind=kind, device=device, precision=precision)
    refuse_stages(config, "index build", first_stages=tuple(FIRST_STAGES))
    refuse_existing(out, overwrite)
    dataset = _read(corpus, id_field, text_field, title_field, on_error)
    if ray is not None:
        from retrieval.sharded import ShardedIndex

        start = time.perf_counter()
        sharded = ShardedIndex.build(dataset, config.encoder.model_dump(mode="json"), out, shards, config.index.kind,
                                     config.index.params, address=ray, overwrite=overwrite)
        typer.echo(f"wrote {out}: {len(sharded)} passages in {shards} {config.index.kind} shards "
                   f"({time.perf_counter() - start:.1f} s on Ray)")
        return
    index = Indexer(config.encoder.build(), config.index.kind, config.index.params, config.index.device).build(dataset)
    index.save(out, overwrite=overwrite)
    m = index.manifest.metrics
    typer.echo(f"wrote {out}: {len(index)} passages, {index.kind}, {m['passages_per_second']} passages/s "
               f"({m['encoder_precision']} on {m['encoder_device']})")




@index_app.command("update")
def index_update(
    index: Annotated[Path, typer.Option("--index", "-i", help="The index directory to update (replaced atomically when done).")],
    corpus: Annotated[Optional[Path], typer.Option("--corpus", help="Documents to add or replace (by id), in any format 'index build' reads.")] = None,
    delete: Annotated[Optional[Path], typer.Option("--delete", help="A file of document ids to delete, one per line.")] = None,
    id_field: IdFieldOpt = None,
    text_field: TextFieldOpt = None,
    title_field: TitleFieldOpt = "title",
    on_error: OnErrorOpt = "fail",
    verbose: Verbose = False,
) -> None:
    """Add, replace and delete documents of an index without re-encoding the rest: the new documents are encoded
    by the index's own encoder, and the index is rebuilt from its stored vectors (what the service's live corpus
    does online, through POST /documents)."""
    from retrieval.corpus import dtype_kind
    from retrieval.index import Index
    from retrieval.live import LiveCorpus
    from retrieval.live_index import LiveIndex

    setup_logging(verbose)
    if corpus is None and delete is None:
        raise SiftrankError("give --corpus (documents to add or replace), --delete (ids to delete), or both")
    base = Index.load(index, device="cpu")
    upserts = _read(corpus, id_field, text_field, title_field, on_error).corpus if corpus is not None else base.docs.clear()
    deletes = [line.strip() for line in delete.read_text(encoding="utf-8").splitlines() if line.strip()] if delete else []
    unknown = [d for d in deletes if d not in base.store]
    if unknown:
        raise SiftrankError(f"{delete}: {len(unknown)} ids are not in the index (first: {unknown[0]})")
    config = load_config(None, model=base.manifest.source_model)
    live = LiveCorpus(base.docs)
    dense = LiveIndex(base, live, config.encoder.build())
    for name, dtype in upserts.schema.items():
        held = base.docs.schema.get(name)
        if held is not None and (kinds := {dtype_kind(dtype), dtype_kind(held)}) and len(kinds) == 2 \
                and kinds != {"integer", "float"}:
            raise SiftrankError(f"{corpus}: column '{name}' holds {dtype_kind(dtype)} values, the index {dtype_kind(held)}")
    live.apply(1, upserts, deletes)
    live.compact()
    updated = dense.base
    added = len(set(upserts["id"].to_list()) - set(base.docs["id"].to_list())) if upserts.height else 0
    updated.manifest.data = {**base.manifest.data, "updated_from": str(corpus) if corpus else None}
    updated.save(index, overwrite=True)
    typer.echo(f"updated {index}: {added} added, {upserts.height - added} replaced, {len(deletes)} deleted; "
               f"{len(updated)} passages")

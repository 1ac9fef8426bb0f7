"""The `dramasearch` command: a thin layer over the library (build, update, search, info, evaluate)."""
from __future__ import annotations

import json
import sys
from dataclasses import asdict

import click

from .errors import DramaSearchError

DTYPES = ("auto", "fp32", "bf16", "fp16")  # encoder.DTYPES, named here so --help needs no torch import

DTYPE_OPTION = click.option(
    "--dtype", default="auto", show_default=True, type=click.Choice(DTYPES),
    help="Model precision; auto = bf16 on CUDA and on CPUs with native bf16, else fp32.",
)
MODEL_OVERRIDE = click.option(
    "--model", default=None,
    help="Load the index's encoder from here (e.g. after moving the index); its fingerprint must match.",
)
AGGREGATE_OPTION = click.option(
    "--aggregate", type=click.Choice(["maxp", "first", "sum"]), default=None,
    help="Chunk-mode indexes: document score from its chunks (default: maxp, or the build's choice).",
)


def _dtype(name: str):
    from .encoder import DTYPES as TORCH_DTYPES

    return TORCH_DTYPES[name]


def _int_list(value: str | None) -> tuple[int, ...]:
    if not value:
        return ()
    try:
        return tuple(int(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers like 256,768, got {value!r}")


def _shard(value: str | None) -> tuple[int, int] | None:
    if not value:
        return None
    try:
        index, count = (int(v) for v in value.split("/"))
    except ValueError:
        raise click.BadParameter(f"expected I/N like 0/4, got {value!r}")
    if not 0 <= index < count:
        raise click.BadParameter(f"need 0 <= I < N, got {value!r}")
    return index, count


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Encode a corpus with a DRAMA (or sentence-transformers) encoder, index it, search it."""


@cli.command("build-index")
@click.argument("corpus", type=click.Path(exists=True))
@click.option("-o", "--output", required=True, type=click.Path(), help="Index folder to create or resume.")
@click.option("--model", default="facebook/drama-base", show_default=True,
              help="Hub id, alias (drama-base, drama-large, drama-1b, minilm) or local folder.")
@click.option("--dims", default=None, help="Matryoshka dims to index, e.g. 256,768 (default: full dim).")
@click.option("--index", "index_kind", default="auto", show_default=True,
              type=click.Choice(["auto", "flat", "hnsw", "ivf", "ivfpq", "sq8"]))
@click.option("--max-length", type=int, default=None, help="Max tokens per document (default: the model's).")
@click.option("--store-text", is_flag=True, help="Keep titles and texts so hits can show them.")
@click.option("--shard", default=None, help="Encode only slice I/N of the shards (several machines); "
              "a run without --shard assembles the index.")
@click.option("--shard-size", type=int, default=10_000, show_default=True, help="Documents per shard file.")
@click.option("--batch-tokens", type=int, default=None, help="Token budget per batch (default: 8192 CPU, 65536 GPU).")
@click.option("--devices", default=None, help="Comma-separated devices, one worker each, e.g. cuda:0,cuda:1.")
@DTYPE_OPTION
@click.option("--compile", "compile_model", is_flag=True,
              help="torch.compile the model: ~20% faster encoding after a warm-up of tens of seconds.")
@click.option("--long-doc", type=click.Choice(["full", "chunk"]), default="full", show_default=True,
              help="full: one vector per document (cut at max length); chunk: token windows, aggregated per document.")
@click.option("--chunk-tokens", type=int, default=None, help="Chunk mode: tokens per window (default: min(512, what fits)).")
@click.option("--stride", type=int, default=64, show_default=True, help="Chunk mode: tokens shared by consecutive windows.")
@AGGREGATE_OPTION
@click.option("--id-field", default=None)
@click.option("--title-field", default=None)
@click.option("--text-field", default=None)
def build_index_cmd(corpus, output, model, dims, index_kind, max_length, store_text, shard, shard_size,
                    batch_tokens, devices, dtype, compile_model, long_doc, chunk_tokens, stride, aggregate, id_field, title_field,
                    text_field) -> None:
    """Encode CORPUS (BEIR folder, .jsonl[.gz], .tsv, .parquet, or a folder of .txt/.md) into an index."""
    from .index.build import BuildSettings, build_index

    settings = BuildSettings(
        corpus=corpus, output=output, model=model, dims=_int_list(dims), index_kind=index_kind,
        max_length=max_length, store_text=store_text, shard=_shard(shard), shard_size=shard_size,
        batch_tokens=batch_tokens, devices=tuple(devices.split(",")) if devices else (), dtype=dtype,
        compile=compile_model,
        long_doc=long_doc, chunk_tokens=chunk_tokens, stride=stride, aggregate=aggregate or "maxp",
        id_field=id_field, title_field=title_field, text_field=text_field,
    )
    click.echo(build_index(settings).summary())


@cli.command("add-dim")
@click.argument("index_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--dims", required=True, help="Dims to add, e.g. 128,256.")
@click.option("--index", "index_kind", default="auto", show_default=True,
              type=click.Choice(["auto", "flat", "hnsw", "ivf", "ivfpq", "sq8"]))
def add_dim_cmd(index_dir, dims, index_kind) -> None:
    """Build FAISS indexes at more Matryoshka dims from the stored vectors (no re-encoding)."""
    from .index.updates import add_dims

    for ix in add_dims(index_dir, _int_list(dims), index_kind):
        click.echo(f"dim {ix['dim']} {ix['kind']}: {ix['bytes']:,} bytes")


@cli.command()
@click.argument("index_dir", type=click.Path(exists=True, file_okay=False))
@click.argument("query")
@click.option("-k", default=10, show_default=True, help="Number of hits.")
@click.option("--dim", type=int, default=None, help="Which index dim to search (default: the largest built).")
@click.option("--rerank-dim", type=int, default=None, help="Re-score candidates with stored vectors at this dim.")
@click.option("--device", default=None)
@MODEL_OVERRIDE
@click.option("--generation", type=int, default=None, help="Search this generation instead of the newest.")
@DTYPE_OPTION
@AGGREGATE_OPTION
@click.option("--json", "as_json", is_flag=True, help="One JSON object per hit.")
def search(index_dir, query, k, dim, rerank_dim, device, model, generation, dtype, aggregate, as_json) -> None:
    """Top-k documents for QUERY."""
    from .searcher import Searcher

    with Searcher(index_dir, dim=dim, device=device, model=model, dtype=_dtype(dtype), generation=generation) as searcher:
        hits = searcher.search(query, k, rerank_dim=rerank_dim, aggregate=aggregate)
    for hit in hits:
        if as_json:
            click.echo(json.dumps(asdict(hit), ensure_ascii=False))
        else:
            snippet = " ".join(f"{hit.title} {hit.text}".split())[:100]
            click.echo(f"{hit.rank:>3}  {hit.score:.4f}  {hit.docid}  {snippet}".rstrip())


@cli.command()
@click.argument("index_dir", type=click.Path(exists=True, file_okay=False))
def info(index_dir) -> None:
    """What an index holds: generation, encoder, segments, live rows, tombstones, FAISS indexes."""
    from .index.generation import IndexDir
    from .index.segment import read_segment_info
    from .index.writer import index_key

    idx = IndexDir(index_dir)
    g = idx.read()
    e = g.encoder
    click.echo(f"generation: {g.generation} ({g.operation}, {g.created})")
    click.echo(f"encoder: {e['name'] or '(none: imported vectors)'} ({e['family']}, dim {e['dim']}, max length "
               f"{e['max_length']}, pooling {e['pooling']}, normalize {e['normalize']}, query prefix "
               f"{e['query_prefix']!r}, fingerprint {e['fingerprint']})")
    live_docs, live_rows = g.documents, g.rows
    deleted = sum(s["deleted"] for s in g.segments)
    click.echo(f"documents: {live_docs} live, {deleted} deleted (tombstones); rows: {live_rows} live "
               f"in {len(g.segments)} segments")
    for s in g.segments:
        sealed = read_segment_info(idx.segments / s["name"])
        click.echo(f"segment: {s['name']} keys {s['base']}..{s['base'] + s['rows'] - 1}: {s['documents']} documents "
                   f"({sealed.empty} empty, {sealed.truncated} truncated), {s['rows']} rows, {s['deleted']} deleted")
    for ix in g.indexes:
        size = sum(s["faiss"][index_key(ix)]["bytes"] for s in g.segments)
        click.echo(f"index: dim {ix['dim']} {ix['kind']} ({size:,} bytes)")


@cli.command()
@click.argument("index_dir", type=click.Path(exists=True, file_okay=False))
@click.argument("corpus", type=click.Path(exists=True))
@click.option("--upsert", is_flag=True, help="Replace documents whose ids are already in the index.")
@MODEL_OVERRIDE
@click.option("--shard-size", type=int, default=10_000, show_default=True, help="Documents per shard file.")
@DTYPE_OPTION
@click.option("--id-field", default=None)
@click.option("--title-field", default=None)
@click.option("--text-field", default=None)
def add(index_dir, corpus, upsert, model, shard_size, dtype, id_field, title_field, text_field) -> None:
    """Add the documents of CORPUS as a new segment (one commit; rerun to resume after a crash)."""
    from .index.updates import add_documents

    click.echo(add_documents(index_dir, corpus, upsert=upsert, model=model, shard_size=shard_size, dtype=dtype,
                             id_field=id_field, title_field=title_field, text_field=text_field).summary())


@cli.command()
@click.argument("index_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--ids", default=None, help="Comma-separated document ids.")
@click.option("--ids-file", type=click.Path(exists=True, dir_okay=False), default=None, help="One id per line.")
def delete(index_dir, ids, ids_file) -> None:
    """Delete documents by id (tombstones: gone from searches of the new generation at once)."""
    from .index.updates import delete_documents

    docids = [d for d in (ids or "").split(",") if d]
    if ids_file:
        docids += [line.rstrip("\r\n") for line in open(ids_file, encoding="utf-8") if line.strip()]
    if not docids:
        raise click.UsageError("give the ids to delete with --ids a,b or --ids-file FILE")
    click.echo(delete_documents(index_dir, docids).summary())


@cli.command()
@click.argument("index_dir", type=click.Path(exists=True, file_okay=False))
def compact(index_dir) -> None:
    """Rewrite the live rows into one segment without tombstones and rebuild FAISS."""
    from .index.updates import compact as run

    click.echo(run(index_dir).summary())


@cli.command()
@click.argument("index_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--model", required=True, help="The new encoder: alias, hub id or local folder.")
@click.option("--corpus", type=click.Path(exists=True), default=None,
              help="Where the documents' text is, for indexes built without --store-text.")
@click.option("--max-length", type=int, default=None)
@click.option("--batch-tokens", type=int, default=None)
@DTYPE_OPTION
def refresh(index_dir, model, corpus, max_length, batch_tokens, dtype) -> None:
    """Re-encode every live document with a new encoder and commit it as one new generation."""
    from .index.refresh import refresh as run

    click.echo(run(index_dir, model, corpus=corpus, dtype=dtype, max_length=max_length,
                   batch_tokens=batch_tokens).summary())


@cli.command("import-vectors")
@click.argument("vectors", type=click.Path(exists=True, dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(), help="New index folder.")
@click.option("--ids", "ids_path", type=click.Path(exists=True, dir_okay=False), default=None,
              help=".npy input: document ids, one per line (default: row numbers).")
@click.option("--id-column", default="id", show_default=True)
@click.option("--vector-column", default="vector", show_default=True)
@click.option("--model", default=None, help="The encoder that made the vectors, for text search.")
@click.option("--metric", type=click.Choice(["cosine", "dot"]), default="cosine", show_default=True)
@click.option("--dims", default=None, help="Matryoshka dims to index (default: full dim).")
@click.option("--index", "index_kind", default="auto", show_default=True,
              type=click.Choice(["auto", "flat", "hnsw", "ivf", "ivfpq", "sq8"]))
def import_vectors_cmd(vectors, output, ids_path, id_column, vector_column, model, metric, dims, index_kind) -> None:
    """Index existing embeddings (.npy + ids, or .parquet with id and vector columns)."""
    from .index.vectors import import_vectors

    report = import_vectors(vectors, output, ids=ids_path, id_column=id_column, vector_column=vector_column,
                            model=model, metric=metric, dims=_int_list(dims), index_kind=index_kind)
    click.echo(f"{output}: {report.documents} vectors in {report.shards_total} shards "
               f"({len(report.shards_encoded)} written, {report.shards_reused} reused); committed generation 1")


@cli.command()
@click.argument("index_dir", type=click.Path(exists=True, file_okay=False))
@click.argument("docid")
def get(index_dir, docid) -> None:
    """Print the stored document DOCID as JSON."""
    from .errors import InputError
    from .index.snapshot import Snapshot

    snap = Snapshot(index_dir)
    try:
        doc = snap.document(docid)
    finally:
        snap.close()
    if doc is None:
        raise InputError(index_dir, None, "docid", f"no live document with id {docid!r}")
    click.echo(json.dumps(asdict(doc), ensure_ascii=False))


@cli.command()
@click.argument("index_dir", type=click.Path(exists=True, file_okay=False))
def verify(index_dir) -> None:
    """Check every file of the newest generation against its recorded checksum."""
    from .index.snapshot import Snapshot

    snap = Snapshot(index_dir)
    try:
        damaged = snap.verify()
    finally:
        snap.close()
    if damaged:
        raise DramaSearchError("damaged files:\n  " + "\n  ".join(damaged) +
                               "\nrerun the command that wrote them (build-index resumes and rewrites damaged shards)")
    click.echo(f"{index_dir}: generation {snap.number}: all files match their checksums")


@cli.command()
@click.argument("index_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--queries", required=True, type=click.Path(exists=True), help="queries.jsonl / .tsv / BEIR folder.")
@click.option("--qrels", default=None, type=click.Path(exists=True),
              help="qrels (BEIR tsv or TREC); default: the BEIR folder's qrels/test.tsv.")
@click.option("--dim", type=int, default=None)
@click.option("--rerank-dim", type=int, default=None)
@click.option("-k", default=100, show_default=True, help="Hits retrieved per query.")
@click.option("--run", "run_path", type=click.Path(dir_okay=False), default=None, help="Write a TREC run file.")
@click.option("--device", default=None)
@MODEL_OVERRIDE
@DTYPE_OPTION
@AGGREGATE_OPTION
def evaluate(index_dir, queries, qrels, dim, rerank_dim, k, run_path, device, model, dtype, aggregate) -> None:
    """nDCG@10, Recall@100 and MRR@10 of an index on queries + qrels (trec_eval semantics)."""
    from .evaluate import evaluate_run, format_metrics, retrieve, write_trec_run
    from .searcher import Searcher
    from .topics import read_qrels, read_queries

    judged = read_qrels(qrels or queries)
    with Searcher(index_dir, dim=dim, device=device, model=model, dtype=_dtype(dtype)) as searcher:
        run = retrieve(searcher, read_queries(queries), k, rerank_dim=rerank_dim, aggregate=aggregate)
    if run_path:
        write_trec_run(run_path, run)
    click.echo(format_metrics(evaluate_run(run, judged)))


@cli.command()
@click.argument("index_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8000, show_default=True)
@click.option("--dim", type=int, default=None, help="Default index dim (requests may ask for another built dim).")
@click.option("--device", default=None)
@MODEL_OVERRIDE
@DTYPE_OPTION
@click.option("--batch-tokens", type=int, default=None, help="Padded tokens per encoder batch (default: 8192 CPU, 65536 GPU).")
@click.option("--max-batch", type=int, default=64, show_default=True, help="Queries per encoder batch.")
@click.option("--max-wait-ms", type=float, default=2.0, show_default=True,
              help="How long a query waits for others to share its batch.")
@click.option("--queue-size", type=int, default=256, show_default=True,
              help="Queries waiting at most; beyond it requests get 503 with Retry-After.")
@click.option("--faiss-threads", type=int, default=1, show_default=True, help="OpenMP threads per FAISS search.")
@click.option("--torch-threads", type=int, default=None, help="Encoder threads (default: torch's).")
@click.option("--follow-interval", type=float, default=0.5, show_default=True,
              help="Seconds between checks for a new generation of the index.")
@click.option("--shutdown-timeout", type=float, default=30.0, show_default=True,
              help="On SIGTERM, seconds requests in flight may take to finish.")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["critical", "error", "warning", "info", "debug"]))
def serve(index_dir, host, port, dim, device, model, dtype, batch_tokens, max_batch, max_wait_ms, queue_size,
          faiss_threads, torch_threads, follow_interval, shutdown_timeout, log_level) -> None:
    """Serve INDEX over HTTP (JSON API, OpenAPI schema at /docs); follows new generations; stops on SIGTERM."""
    from .serve.server import serve as run
    from .serve.service import ServeSettings

    run(ServeSettings(index=index_dir, dim=dim, model=model, device=device, dtype=dtype, batch_tokens=batch_tokens,
                      max_batch=max_batch, max_wait_ms=max_wait_ms, queue_size=queue_size, faiss_threads=faiss_threads,
                      torch_threads=torch_threads, follow_interval=follow_interval, shutdown_timeout=shutdown_timeout),
        host=host, port=port, log_level=log_level)


PLUGIN_GROUP = "dramasearch.commands"


def add_plugin_commands(group: click.Group) -> None:
    """Commands other packages register (the trainer's train / prune), found through entry points,
    so dramasearch itself never imports them."""
    from importlib.metadata import entry_points

    for entry in entry_points(group=PLUGIN_GROUP):
        for command in entry.load():
            group.add_command(command)


def main() -> None:
    add_plugin_commands(cli)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # per-tensor "Loading weights" bars drown the CLI's own output
    try:
        cli(standalone_mode=False)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except (DramaSearchError, ValueError, OSError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()

"""The `dramasearch` command: a thin layer over the library (build, update, search, info, evaluate)."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from dataclasses import asdict

import click

from .errors import EXIT_BUG, EXIT_INTERRUPTED, EXIT_SYSTEM, EXIT_USAGE, DramaSearchError

DTYPES = ("auto", "fp32", "bf16", "fp16")  # encoder.DTYPES, named here so --help needs no torch import

# faiss_index.ALL_KINDS, spelled out so the CLI starts without importing FAISS (a test checks they agree).
INDEX_CHOICES = ["auto", "flat", "hnsw", "ivf", "ivfpq", "sq8", "ivf-disk", "ivfpq-disk"]

DTYPE_OPTION = click.option(
    "--dtype", default="auto", show_default=True, type=click.Choice(DTYPES),
    help="Model precision; auto = bf16 on CUDA and on CPUs with native bf16, else fp32.",
)
MODEL_OVERRIDE = click.option(
    "--model", default=None,
    help="Load the index's encoder from here (e.g. after moving the index); its fingerprint must match.",
)
CHECKS_OPTION = click.option(
    "--checks", type=click.Choice(["full", "cheap"]), default="full", show_default=True,
    help="full: verify every index file's checksum before searching; cheap: sizes, headers and counts only "
         "(for indexes too big to hash on every start; `dramasearch verify` still checks everything).",
)
AGGREGATE_OPTION = click.option(
    "--aggregate", type=click.Choice(["maxp", "first", "sum"]), default=None,
    help="Chunk-mode indexes: document score from its chunks (default: maxp, or the build's choice).",
)


def hybrid_options(command):
    """--- hybrid: --hybrid and its knobs (dramasearch/hybrid.py), shared by search and evaluate."""
    for option in reversed([
        click.option("--hybrid", type=click.Choice(["rrf", "linear", "bm25"]), default=None,
                     help="Fuse dense and BM25 per document (index built with --bm25); bm25 = lexical only."),
        click.option("--hybrid-weight", type=float, default=0.5, show_default=True,
                     help="linear: dense share of the fused score (min-max normalized scores)."),
        click.option("--rrf-k", type=float, default=60.0, show_default=True, help="rrf: 1 / (rrf_k + rank)."),
        click.option("--hybrid-depth", type=int, default=100, show_default=True,
                     help="Candidates taken from each ranking before fusing."),
    ]):
        command = option(command)
    return command


def _fusion(hybrid, weight, rrf_k, depth):
    if hybrid is None:
        return None
    from .hybrid import Fusion

    return Fusion(method=hybrid, rrf_k=rrf_k, weight=weight, depth=depth)


def _dtype(name: str):
    from .encoder import DTYPES as TORCH_DTYPES

    return TORCH_DTYPES[name]


class IntList(click.ParamType):
    """Comma-separated integers (--dims 256,768); click names the option in its error."""

    name = "ints"

    def convert(self, value, param, ctx) -> tuple[int, ...]:
        if isinstance(value, tuple):
            return value
        try:
            return tuple(int(v) for v in value.split(","))
        except ValueError:
            self.fail(f"expected comma-separated integers like 256,768, got {value!r}", param, ctx)


class ShardSlice(click.ParamType):
    """I/N: this run encodes shards j with j % N == I."""

    name = "I/N"

    def convert(self, value, param, ctx) -> tuple[int, int]:
        if isinstance(value, tuple):
            return value
        try:
            index, count = (int(v) for v in value.split("/"))
        except ValueError:
            self.fail(f"expected I/N like 0/4, got {value!r}", param, ctx)
        if not 0 <= index < count:
            self.fail(f"need 0 <= I < N, got {value!r}", param, ctx)
        return index, count


INTS = IntList()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show the traceback of an internal error (exit code 70).")
def cli(debug: bool) -> None:
    """Encode a corpus with a DRAMA (or sentence-transformers) encoder, index it, search it.

    Exit codes: 0 ok, 1 failed (e.g. index busy), 2 usage, 3 bad input data or model,
    4 index missing/other format/damaged, 5 system (permissions, disk), 70 internal bug, 130 interrupted.
    """


@cli.command("build-index")
@click.argument("corpus", type=click.Path(exists=True))
@click.option("-o", "--output", required=True, type=click.Path(), help="Index folder to create or resume.")
@click.option("--model", default="facebook/drama-base", show_default=True,
              help="Hub id, alias (drama-base, drama-large, drama-1b, minilm) or local folder.")
@click.option("--dims", type=INTS, default=None, help="Matryoshka dims to index, e.g. 256,768 (default: full dim).")
@click.option("--index", "index_kind", default="auto", show_default=True,
              type=click.Choice(INDEX_CHOICES))
@click.option("--memory-budget", default=None,
              help="RAM the index may use when searched, e.g. 4G: --index auto picks the most accurate kind that "
              "fits (default: half the available RAM).")
@click.option("--no-gpu", is_flag=True, help="Never use a GPU for FAISS (also DRAMASEARCH_NO_GPU=1).")
@click.option("--max-length", type=int, default=None, help="Max tokens per document (default: the model's).")
@click.option("--store-text", is_flag=True, help="Keep titles and texts so hits can show them.")
@click.option("--shard", type=ShardSlice(), default=None, help="Encode only slice I/N of the shards (several machines); "
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
@click.option("--bm25", is_flag=True, help="Also keep a BM25 index (bm25s tokenizer) for --hybrid search.")
@click.option("--bm25-stemmer", default="english", show_default=True,
              help="Snowball stemmer language for BM25 (PyStemmer), or 'none'.")
@click.option("--id-field", default=None)
@click.option("--title-field", default=None)
@click.option("--text-field", default=None)
# --- ray backend options (dramasearch/index/ray_backend.py)
@click.option("--backend", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="ray: encode on a Ray cluster (Ray Data actor pool); the index is the same as a local build's.")
@click.option("--address", default=None, help="Ray cluster address (ray.init): auto, local, host:6379, "
              "ray://host:10001 (default: RAY_ADDRESS, else a new local cluster).")
@click.option("--ray-actors", type=int, default=None, help="Encoder actors (default: cluster GPUs / --ray-gpus, "
              "or CPUs / --ray-cpus).")
@click.option("--ray-cpus", type=float, default=1.0, show_default=True, help="CPUs per actor (its torch threads on CPU).")
@click.option("--ray-gpus", type=float, default=0.0, show_default=True, help="GPUs per actor; > 0 encodes on CUDA.")
# --- end ray backend options
def build_index_cmd(corpus, output, model, dims, index_kind, memory_budget, no_gpu, max_length, store_text, shard,
                    shard_size, batch_tokens, devices, dtype, compile_model, long_doc, chunk_tokens, stride, aggregate,
                    bm25, bm25_stemmer, id_field, title_field, text_field, backend, address, ray_actors, ray_cpus,
                    ray_gpus) -> None:
    """Encode CORPUS (BEIR folder, .jsonl[.gz], .tsv, .parquet, or a folder of .txt/.md) into an index."""
    from .index.budget import parse_size
    from .index.build import BuildSettings, build_index
    from .index.ray_backend import RayOptions

    settings = BuildSettings(
        corpus=corpus, output=output, model=model, dims=dims or (), index_kind=index_kind,
        max_length=max_length, store_text=store_text, shard=shard, shard_size=shard_size,
        batch_tokens=batch_tokens, devices=tuple(devices.split(",")) if devices else (), dtype=dtype,
        compile=compile_model,
        long_doc=long_doc, chunk_tokens=chunk_tokens, stride=stride, aggregate=aggregate or "maxp", bm25=bm25,
        bm25_stemmer=None if bm25_stemmer.lower() == "none" else bm25_stemmer,
        id_field=id_field, title_field=title_field, text_field=text_field,
        memory_budget=parse_size(memory_budget) if memory_budget else None, use_gpu=False if no_gpu else None,
        backend=backend, ray=RayOptions(address=address, actors=ray_actors, cpus=ray_cpus, gpus=ray_gpus),
    )
    click.echo(build_index(settings).summary())


@cli.command()
@click.argument("index_dir", type=click.Path(exists=True, file_okay=False))
def merge(index_dir) -> None:
    """Assemble the shards written by `build-index --shard I/N` runs (no encoding); lists any missing."""
    from .index.merge import merge_index

    click.echo(merge_index(index_dir).summary())


@cli.command("add-dim")
@click.argument("index_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--dims", type=INTS, required=True, help="Dims to add, e.g. 128,256.")
@click.option("--index", "index_kind", default="auto", show_default=True,
              type=click.Choice(INDEX_CHOICES))
def add_dim_cmd(index_dir, dims, index_kind) -> None:
    """Build FAISS indexes at more Matryoshka dims from the stored vectors (no re-encoding)."""
    from .index.updates import add_dims

    for ix in add_dims(index_dir, dims, index_kind):
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
@hybrid_options
@CHECKS_OPTION
def search(index_dir, query, k, dim, rerank_dim, device, model, generation, dtype, aggregate, as_json, hybrid,
           hybrid_weight, rrf_k, hybrid_depth, checks) -> None:
    """Top-k documents for QUERY."""
    from . import validate
    from .searcher import Searcher

    validate.query(query)
    validate.k(k)
    fusion = _fusion(hybrid, hybrid_weight, rrf_k, hybrid_depth)
    with Searcher(index_dir, dim=dim, device=device, model=model, dtype=_dtype(dtype), generation=generation,
                  checks=checks) as searcher:
        hits = searcher.search(query, k, rerank_dim=rerank_dim, aggregate=aggregate, hybrid=fusion)
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
    from .index.generation import entry_files
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
        size = sum(f["bytes"] for s in g.segments for f in entry_files(s["faiss"][index_key(ix)]))  # + .ivfdata
        click.echo(f"index: dim {ix['dim']} {ix['kind']} ({size:,} bytes)")
    if g.settings.get("bm25") is not None:  # --- hybrid
        click.echo(f"bm25: per-segment postings, {g.settings['bm25']}")


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

    from .corpus import iter_lines

    docids = [d for d in (ids or "").split(",") if d]
    if ids_file:
        docids += [line for _, line in iter_lines(Path(ids_file)) if line.strip()]
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
@click.option("--dims", type=INTS, default=None, help="Matryoshka dims to index (default: full dim).")
@click.option("--index", "index_kind", default="auto", show_default=True,
              type=click.Choice(INDEX_CHOICES))
def import_vectors_cmd(vectors, output, ids_path, id_column, vector_column, model, metric, dims, index_kind) -> None:
    """Index existing embeddings (.npy + ids, or .parquet with id and vector columns)."""
    from .index.vectors import import_vectors

    report = import_vectors(vectors, output, ids=ids_path, id_column=id_column, vector_column=vector_column,
                            model=model, metric=metric, dims=dims or (), index_kind=index_kind)
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
    from .errors import IndexDamagedError
    from .index.snapshot import verify_index

    number, damaged = verify_index(index_dir)
    if damaged:
        raise IndexDamagedError(f"{index_dir}: generation {number}: {len(damaged)} damaged:\n  " + "\n  ".join(damaged),
                                files=damaged)
    click.echo(f"{index_dir}: generation {number}: all files match their checksums")


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
@hybrid_options
@CHECKS_OPTION
def evaluate(index_dir, queries, qrels, dim, rerank_dim, k, run_path, device, model, dtype, aggregate, hybrid,
             hybrid_weight, rrf_k, hybrid_depth, checks) -> None:
    """nDCG@10, Recall@100 and MRR@10 of an index on queries + qrels (trec_eval semantics)."""
    from .evaluate import evaluate_run, format_metrics, retrieve, write_trec_run
    from .searcher import Searcher
    from .topics import read_qrels, read_queries

    judged = read_qrels(qrels or queries)
    with Searcher(index_dir, dim=dim, device=device, model=model, dtype=_dtype(dtype), checks=checks) as searcher:
        run = retrieve(searcher, read_queries(queries), k, rerank_dim=rerank_dim, aggregate=aggregate,
                       hybrid=_fusion(hybrid, hybrid_weight, rrf_k, hybrid_depth))
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


def main(argv: list[str] | None = None) -> None:
    """Run the CLI: errors become one message and a documented exit code (README "Errors"), never
    a traceback, unless --debug asks for one."""
    args = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in args
    if debug:
        args.remove("--debug")
    try:
        add_plugin_commands(cli)
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # per-tensor "Loading weights" bars drown the CLI's own output
        cli(args, prog_name="dramasearch", standalone_mode=False)
    except (click.exceptions.Abort, KeyboardInterrupt):
        click.echo("interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except click.ClickException as exc:
        exc.show()
        sys.exit(EXIT_USAGE if isinstance(exc, click.UsageError) else exc.exit_code)
    except DramaSearchError as exc:
        _fail(exc, exc.exit_code, debug)
    except OSError as exc:  # the system refused: the message names the path (permissions, disk full)
        _fail(exc, EXIT_SYSTEM, debug)
    except Exception as exc:  # noqa: BLE001 - the last line of defence: a bug, reported as one
        if debug:
            raise
        click.echo(f"internal error: {type(exc).__name__}: {exc}\nThis is a bug in dramasearch. Rerun with "
                   "--debug for the traceback and report it with the command you ran.", err=True)
        sys.exit(EXIT_BUG)


def _fail(exc: Exception, code: int, debug: bool) -> None:
    if debug:
        import traceback

        traceback.print_exception(exc)
    click.echo(f"error: {exc}", err=True)
    sys.exit(code)


if __name__ == "__main__":
    main()

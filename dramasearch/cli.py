"""The `dramasearch` command: a thin layer over the library (build, search, info, evaluate)."""
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
    from .build import BuildSettings, build_index

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
    from .build import add_dims

    for ix in add_dims(index_dir, _int_list(dims), index_kind):
        click.echo(f"dim {ix['dim']} {ix['kind']}: {ix['file']} ({ix['bytes']:,} bytes)")


@cli.command()
@click.argument("index_dir", type=click.Path(exists=True, file_okay=False))
@click.argument("query")
@click.option("-k", default=10, show_default=True, help="Number of hits.")
@click.option("--dim", type=int, default=None, help="Which index dim to search (default: the largest built).")
@click.option("--rerank-dim", type=int, default=None, help="Re-score candidates with stored vectors at this dim.")
@click.option("--device", default=None)
@DTYPE_OPTION
@AGGREGATE_OPTION
@click.option("--json", "as_json", is_flag=True, help="One JSON object per hit.")
def search(index_dir, query, k, dim, rerank_dim, device, dtype, aggregate, as_json) -> None:
    """Top-k documents for QUERY."""
    from .searcher import Searcher

    hits = Searcher(index_dir, dim=dim, device=device, dtype=_dtype(dtype)).search(query, k, rerank_dim=rerank_dim, aggregate=aggregate)
    for hit in hits:
        if as_json:
            click.echo(json.dumps(asdict(hit), ensure_ascii=False))
        else:
            snippet = " ".join(f"{hit.title} {hit.text}".split())[:100]
            click.echo(f"{hit.rank:>3}  {hit.score:.4f}  {hit.docid}  {snippet}".rstrip())


@cli.command()
@click.argument("index_dir", type=click.Path(exists=True, file_okay=False))
def info(index_dir) -> None:
    """What an index holds: encoder, documents, shards, FAISS indexes."""
    from .store import IndexFolder

    m = IndexFolder(index_dir).read_manifest()
    e = m.encoder
    click.echo(f"encoder: {e['name']} ({e['family']}, dim {e['dim']}, max length {e['max_length']}, "
               f"pooling {e['pooling']}, query prefix {e['query_prefix']!r}, fingerprint {e['fingerprint']})")
    click.echo(f"corpus: {m.build.get('corpus')}: {m.documents} documents ({m.empty} empty, {m.truncated} truncated) "
               f"in {len(m.shards)} shards")
    for ix in m.indexes:
        click.echo(f"index: dim {ix['dim']} {ix['kind']} {ix['params']} {ix['file']} ({ix['bytes']:,} bytes)")


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
@DTYPE_OPTION
@AGGREGATE_OPTION
def evaluate(index_dir, queries, qrels, dim, rerank_dim, k, run_path, device, dtype, aggregate) -> None:
    """nDCG@10, Recall@100 and MRR@10 of an index on queries + qrels (trec_eval semantics)."""
    from .evaluate import evaluate_run, format_metrics, retrieve, write_trec_run
    from .searcher import Searcher
    from .topics import read_qrels, read_queries

    judged = read_qrels(qrels or queries)
    searcher = Searcher(index_dir, dim=dim, device=device, dtype=_dtype(dtype))
    run = retrieve(searcher, read_queries(queries), k, rerank_dim=rerank_dim, aggregate=aggregate)
    if run_path:
        write_trec_run(run_path, run)
    click.echo(format_metrics(evaluate_run(run, judged)))


def main() -> None:
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

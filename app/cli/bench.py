"""``pagelens bench``: the performance benchmark (bench/bench.py) from the CLI."""

from __future__ import annotations

import typer

from app.cli.common import options, run_guarded, say
from app.cli.root import cli
from indexer.settings import ModelSettings


def bench_args(settings: ModelSettings, given: list[str]) -> list[str]:
    """The bench flags that carry the global model settings (unless given explicitly):
    ``--model``, ``--dtype``, ``--device`` and ``--image-tokens`` (as the one budget
    measured)."""
    extra: list[str] = []
    if settings.model and "--model" not in given:
        extra += ["--model", settings.model]
    if settings.dtype and "--dtype" not in given:
        extra += ["--dtype", settings.dtype]
    if settings.device and settings.device != "auto" and "--device" not in given:
        extra += ["--device", settings.device]
    if settings.image_tokens and "--budgets" not in given:
        extra += ["--budgets", str(settings.image_tokens)]
    return extra


@cli.command(
    "bench",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)
def bench_cmd(ctx: typer.Context) -> None:
    """Benchmark rendering, page embedding, queries and vector search; writes a JSON report.

    Options are those of ``python -m bench.bench`` (``--pages``, ``--budgets``, ``--vectors``,
    ``--skip-baseline``, ``--size tiny`` ...; see ``pagelens bench --help-bench``). The
    global ``--model``, ``--dtype``, ``--device`` and ``--image-tokens`` (the budget
    measured) apply (``--device cuda``: pages/s and query p50 per budget on the GPU, bf16
    with SDPA, against the recipe on the same card);
    without a model it benchmarks the full-size GME-2B architecture with random weights.
    """
    import importlib.util
    import sys
    from pathlib import Path

    if importlib.util.find_spec("bench") is None:  # bench/ sits beside app/ in a checkout
        root = Path(__file__).resolve().parent.parent
        if (root / "bench" / "bench.py").is_file():
            sys.path.insert(0, str(root))
    try:
        from bench.bench import main as bench_main
    except ImportError:
        from app.cli.common import fail

        fail("the benchmark lives in bench/ of a PageLens checkout; run it from there")

    opts = options(ctx)
    args = list(ctx.args)
    if "--help-bench" in args:
        args = ["--help"]
    args += bench_args(opts.settings, args)
    say("benchmarking (this takes long on CPU with the full-size model) ...")

    def body() -> None:
        try:
            code = bench_main(args)
        except SystemExit as exc:  # argparse --help / usage errors
            code = exc.code if isinstance(exc.code, int) else 2
        if code:
            raise typer.Exit(code)

    run_guarded(body)

"""A real indexing process for the crash, concurrency and fuzz tests (run as a subprocess).

    python tests/support/crash_worker.py index COLLECTION LOG \
        [--pause-at POINT:N] [--slow S] FILES...
    python tests/support/crash_worker.py fuzz FILES...
    python tests/support/crash_worker.py sync COLLECTION LOG [--prune] [--pause-at POINT:N] \
        FOLDERS...

``index`` indexes FILES with the fake embedder (small pages, so it is quick), appending one
JSON line per committed vector batch to LOG (``{"vectors": [page ids]}``) and per embedder
call (``{"embedded": n}``). With ``--pause-at POINT:N`` it prints ``PAUSED POINT`` and sleeps
when it reaches the N-th occurrence of POINT, so that the test can SIGKILL it exactly there
(or let it go on with SIGUSR1):

``render``      a page was rendered, and is not committed yet
``image-write`` a page image file was written, its row not committed yet
``embed``       the model returned vectors, not committed yet
``faiss-save``  the FAISS file was written to its temporary name, not yet moved into place

``--slow S`` sleeps S seconds per rendered page and per embedder call (for timed kills).

``fuzz`` indexes each file into a fresh collection in this process and prints one JSON line
per file (``{"file", "status", "reason"}``): a hard crash (a segfault in MuPDF) shows as the
process dying instead of finishing.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from indexer.model import FakeEmbedder  # noqa: E402
from indexer.pages import RenderSettings  # noqa: E402
from indexer.pipeline import Indexer  # noqa: E402
from indexer.pipeline import job as pipeline  # noqa: E402
from indexer.store import Collection  # noqa: E402
from indexer.stores import open_collection  # noqa: E402
from indexer.stores.local import collection as store_mod  # noqa: E402
from indexer.stores.local import vector_index as vectors  # noqa: E402
from tests.support.peak_rss import own_peak_mb  # noqa: E402

#: Small pages (16 visual tokens) keep the subprocess tests fast; the logic is the same.
SETTINGS = RenderSettings(max_pixels=16 * 28 * 28)

_counts: dict[str, int] = {}


def _reached(point: str, pause_at: tuple[str, int] | None) -> None:
    _counts[point] = _counts.get(point, 0) + 1
    if pause_at and pause_at[0] == point and pause_at[1] == _counts[point]:
        # Wait for SIGKILL (crash tests) or SIGUSR1 (go on: concurrency tests).
        resume = []
        signal.signal(signal.SIGUSR1, lambda *_: resume.append(True))
        print(f"PAUSED {point}", flush=True)
        deadline = time.monotonic() + 120
        while not resume and time.monotonic() < deadline:
            time.sleep(0.02)


def _instrument(collection: Collection, log_path: Path, pause_at, slow: float) -> FakeEmbedder:
    log = open(log_path, "a", buffering=1)  # noqa: SIM115 - lives as long as the process

    real_render = pipeline.render_pages

    def render_pages(*args, **kwargs):
        for page in real_render(*args, **kwargs):
            if slow:
                time.sleep(slow)
            _reached("render", pause_at)
            yield page

    pipeline.render_pages = render_pages

    real_write = store_mod.atomic_write_bytes

    def atomic_write_bytes(path, data):
        real_write(path, data)
        if Path(path).suffix == ".png":
            _reached("image-write", pause_at)

    store_mod.atomic_write_bytes = atomic_write_bytes

    real_faiss_write = vectors.faiss.write_index

    def write_index(index, path):
        real_faiss_write(index, path)
        _reached("faiss-save", pause_at)

    vectors.faiss.write_index = write_index

    embedder = FakeEmbedder()
    real_embed = embedder.embed_images

    def embed_images(images, **kwargs):
        out = real_embed(images, **kwargs)
        log.write(json.dumps({"embedded": len(images)}) + "\n")
        if slow:
            time.sleep(slow)
        _reached("embed", pause_at)
        return out

    embedder.embed_images = embed_images

    real_set = collection.set_vectors

    def set_vectors(page_ids, vecs):
        real_set(page_ids, vecs)
        log.write(json.dumps({"vectors": [int(i) for i in page_ids]}) + "\n")

    collection.set_vectors = set_vectors
    return embedder


def cmd_index(args: argparse.Namespace) -> int:
    pause_at = None
    if args.pause_at:
        point, n = args.pause_at.split(":")
        pause_at = (point, int(n))
    collection = open_collection(args.collection)  # a folder or a milvus:// address
    embedder = _instrument(collection, Path(args.log), pause_at, args.slow)
    indexer = Indexer(collection, embedder, settings=SETTINGS, batch_size=2, commit_every=4)
    print("STARTED", flush=True)
    report = indexer.add(args.files, on_wait=lambda msg: print(f"WAITING {msg}", flush=True))
    maxrss_mb = own_peak_mb()
    print(json.dumps({"report": report.as_dict(), "maxrss_mb": maxrss_mb}), flush=True)
    collection.close()
    return 0


def cmd_sync(args: argparse.Namespace) -> int:
    """``sync COLLECTION LOG [--prune] [--pause-at POINT:N] FOLDERS...``: ``sync_folders``
    with the instrumented fake embedder; one more pause point, ``replace`` (a changed file's
    new version published and the old one hidden, the old not removed yet)."""
    from indexer.sync import sync_folders

    pause_at = None
    if args.pause_at:
        point, n = args.pause_at.split(":")
        pause_at = (point, int(n))
    collection = open_collection(args.collection)
    embedder = _instrument(collection, Path(args.log), pause_at, args.slow)
    real_replace = collection.replace_document

    def replace_document(old_id, new_id):
        real_replace(old_id, new_id)
        _reached("replace", pause_at)

    collection.replace_document = replace_document
    print("STARTED", flush=True)
    report = sync_folders(collection, embedder, args.folders, prune=args.prune, settings=SETTINGS)
    print(json.dumps({"report": report.as_dict()}), flush=True)
    collection.close()
    return 0


def cmd_fuzz(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        for number, file in enumerate(args.files):
            collection = Collection(Path(tmp) / f"c{number}")
            try:
                report = Indexer(collection, FakeEmbedder(), settings=SETTINGS).add([file])
                result = report.files[0]
                print(
                    json.dumps({"file": file, "status": result.status, "reason": result.reason}),
                    flush=True,
                )
            finally:
                collection.close()
    print("DONE", flush=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("index")
    p.add_argument("collection")
    p.add_argument("log")
    p.add_argument("files", nargs="+")
    p.add_argument("--pause-at")
    p.add_argument("--slow", type=float, default=0.0)
    f = sub.add_parser("fuzz")
    f.add_argument("files", nargs="+")
    s = sub.add_parser("sync")
    s.add_argument("collection")
    s.add_argument("log")
    s.add_argument("folders", nargs="+")
    s.add_argument("--prune", action="store_true")
    s.add_argument("--pause-at")
    s.add_argument("--slow", type=float, default=0.0)
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    commands = {"index": cmd_index, "fuzz": cmd_fuzz, "sync": cmd_sync}
    return commands[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())

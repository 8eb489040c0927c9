"""Page images of a Milvus collection in an S3-compatible bucket (``s3://bucket/prefix``).

Real servers on loopback: milvus-lite's gRPC server (conftest) and moto's standalone S3
server (tests/support/s3_server.py), reached as a user reaches MinIO/Ceph/R2: ``AWS_ENDPOINT_URL``
and an access key pair in the environment, the bucket in the collection address
(``?images=s3://bucket/prefix``).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from app.cli import cli
from indexer.errors import CollectionError
from indexer.model import FakeEmbedder
from indexer.pages import RenderSettings
from indexer.pipeline import Indexer
from indexer.stores import open_collection
from tests.support.pdfs import TOPICS, make_text_pdf
from tests.support.s3_server import SECRET

pytest.importorskip("pymilvus", reason="the milvus extra is not installed")
pytest.importorskip("s3fs", reason="the milvus extra is not installed")

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]
SMALL = RenderSettings(max_pixels=16 * 28 * 28)  # 16 visual tokens per page

#: Page images and word boxes live under their own prefixes of the bucket.
IMAGES = "team/pages/pages/"
WORDS = "team/pages/words/"


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory):
    from tests.support.s3_server import S3Server, moto_command

    if moto_command() is None:
        pytest.skip("moto is not installed (the dev extra)")
    server = S3Server(tmp_path_factory.mktemp("s3") / "moto.log").start()
    yield server
    server.stop()


@pytest.fixture
def bucket(s3, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh bucket, and the environment a user sets for an S3-compatible server."""
    for key, value in s3.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("PAGELENS_MILVUS_IMAGES", raising=False)
    name = f"pagelens-{uuid.uuid4().hex[:10]}"
    s3.client().create_bucket(Bucket=name)
    return name


@pytest.fixture
def spec(milvus_server, bucket: str):
    """A fresh Milvus collection whose images go to ``s3://BUCKET/team/pages``."""
    address = f"milvus://{milvus_server.address}/t_{uuid.uuid4().hex[:12]}"
    yield f"{address}?images=s3://{bucket}/team/pages"
    try:
        store = open_collection(address, create=False)
    except Exception:
        return
    store.drop()
    store.close()


def _cli(*args: str):
    return runner.invoke(cli, [str(a) for a in args])


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _index_fake(spec: str, files: list[Path]) -> None:
    store = open_collection(spec)
    Indexer(store, FakeEmbedder(), settings=SMALL).add(files)
    store.close()


def test_index_search_remove_with_images_in_s3(
    spec, bucket, s3, tmp_path, tiny_model_dir, monkeypatch, reuse_loaded_models
):
    monkeypatch.setenv("PAGELENS_MODEL", str(tiny_model_dir))
    a = make_text_pdf(tmp_path / "a.pdf", TOPICS[:3])
    b = make_text_pdf(tmp_path / "b.pdf", TOPICS[3:5])
    base = ["--collection", spec, "--image-tokens", "16"]
    result = _cli(*base, "index", a, b)
    assert result.exit_code == 0, result.output
    keys = s3.keys(bucket, IMAGES)
    assert len(keys) == 5 and all(k.startswith("team/pages/pages/") for k in keys), keys
    words = s3.keys(bucket, WORDS)  # each page's word boxes, an object beside its image
    assert len(words) == 5 and all(k.endswith(".words") for k in words), words
    home = Path(os.environ["PAGELENS_HOME"])
    assert not list(home.rglob("*.png")), "images went to a local folder, not to S3"

    result = _cli(*base, "search", "sourdough starter wild yeast", "--mode", "text", "--json")
    assert result.exit_code == 0, result.output
    hits = json.loads(result.stdout)["hits"]
    assert (hits[0]["document"], hits[0]["page"]) == ("b.pdf", 1)

    result = _cli(*base, "search", "anything", "-k", "10", "--json")
    hits = json.loads(result.stdout)["hits"]
    assert sorted((h["document"], h["page"]) for h in hits) == [
        ("a.pdf", 1), ("a.pdf", 2), ("a.pdf", 3), ("b.pdf", 1), ("b.pdf", 2),
    ]  # fmt: skip
    store = open_collection(spec, create=False)
    objects = s3.client()
    for hit in hits:  # each hit's image came from the bucket, byte for byte
        page = store.page(hit["page_id"])
        stored = objects.get_object(Bucket=bucket, Key=f"team/pages/{page.image}")["Body"].read()
        assert _sha(Path(hit["image"]).read_bytes()) == _sha(stored) == page.image_sha256
        assert store.load_image(page).size == (page.width, page.height)

    result = _cli(*base, "remove", "a.pdf")
    assert result.exit_code == 0, result.output
    left = s3.keys(bucket, IMAGES)
    assert len(left) == 2 and all(store.images.exists(p.image) for p in store.pages())
    assert len(s3.keys(bucket, WORDS)) == 2  # the removed document's words went with it
    assert {p.document_id for p in store.pages()} == {store.document("b.pdf").id}
    store.close()


def test_check_sees_a_missing_image_object_and_repair_then_index_restores_it(
    spec, bucket, s3, tmp_path
):
    pdf = make_text_pdf(tmp_path / "a.pdf", TOPICS[:3])
    _index_fake(spec, [pdf])
    result = _cli("--collection", spec, "check", "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["ok"], result.output

    store = open_collection(spec, create=False)
    gone = store.pages()[1]
    s3.client().delete_object(Bucket=bucket, Key=f"team/pages/{gone.image}")
    store.clear_vectors([gone.id])  # its vector must be made again, from the lost image
    with pytest.raises(CollectionError, match=r"is missing from s3://.*check --repair"):
        _index_fake(spec, [pdf])
    result = _cli("--collection", spec, "check", "--json")
    assert result.exit_code == 4, result.output
    report = json.loads(result.stdout)
    problem = {p["kind"]: p for p in report["problems"]}["image-missing"]
    assert problem["count"] == 1 and problem["pages"] == [f"a.pdf p.{gone.number}"]
    assert f"s3://{bucket}/team/pages" in problem["detail"]

    result = _cli("--collection", spec, "check", "--repair", "--json")
    repaired = {r["kind"]: r for r in json.loads(result.stdout)["repaired"]}
    assert "rendered 1 page(s) again" in repaired["image-missing"]["detail"]  # from a.pdf
    # Its vector needs the collection's model, which this CLI cannot load (the fake one):
    # said, exit 4, as for a folder; indexing with the model embeds it.
    assert result.exit_code == 4 and "no model could embed" in repaired["not-repaired"]["detail"]
    _index_fake(spec, [pdf])
    result = _cli("--collection", spec, "check", "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["ok"], result.output
    assert len(s3.keys(bucket, IMAGES)) == 3 and store.stats().embedded == 3
    assert store.image_bytes(store.page(gone.id))  # back in the bucket
    store.close()


SECOND_MACHINE = """
import hashlib, json, sys
import numpy as np
from indexer.model import FakeEmbedder
from indexer.errors import CollectionError
from indexer.stores import open_collection
from retriever.search import Retriever
store = open_collection(sys.argv[1], create=False)
hits = Retriever(FakeEmbedder(), store).search("anything", 10)
pages = store.pages_by_id(h.page_id for h in hits)
print(json.dumps({
    "images": store.images.url,
    "pages": [
        [h.page_id, hashlib.sha256(open(h.image, "rb").read()).hexdigest(),
         pages[h.page_id].image_sha256]
        for h in hits
    ],
}))
"""


def test_a_second_machine_reads_the_images_from_the_bucket(
    spec, bucket, s3, tmp_path, milvus_server
):
    _index_fake(spec, [make_text_pdf(tmp_path / "a.pdf", TOPICS[:3])])
    plain = spec.split("?", 1)[0]  # the other machine names no image location: it is recorded
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "PAGELENS_HOME": str(tmp_path / "other-machine"),  # its own, empty, image cache
    }
    env.pop("PAGELENS_MILVUS_IMAGES", None)
    out = subprocess.run(
        [sys.executable, "-c", SECOND_MACHINE, plain],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["images"] == f"s3://{bucket}/team/pages"
    assert len(seen["pages"]) == 3
    for _, got, recorded in seen["pages"]:
        assert got == recorded  # the bytes this machine stored, read by the other one

    # ... and migrating the collection to a local folder takes its images out of the bucket
    local = tmp_path / "local-copy"
    result = _cli("migrate", plain, local, "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["ok"], result.output
    copy = open_collection(local, create=False)
    assert sorted(_sha(copy.image_bytes(p)) for p in copy.pages()) == sorted(
        recorded for _, _, recorded in seen["pages"]
    )
    copy.close()


def _nothing_half_stored(store) -> None:
    """Every stored page has its image; visual search finds only pages with a vector."""
    for page in store.pages(with_text=False):
        assert store.images.exists(page.image)
    for pid, _ in store.search(np.ones(store.dim, np.float32), 50):
        assert store.page(pid).embedded
    for pid, _ in store.search_text("the", 50):
        assert store.images.exists(store.page(pid).image)


def _complete_once(store, bucket: str, s3, n: int) -> None:
    pages = store.pages(with_text=False)
    assert len(pages) == n == len({(p.document_id, p.number) for p in pages})
    assert store.stats().pending == 0
    assert all(d.status == "ready" for d in store.documents())
    assert len(s3.keys(bucket, IMAGES)) == n


def test_s3_failing_while_pages_are_stored_is_one_line_and_rerun_completes(
    spec, bucket, s3, tmp_path, tiny_model_dir, monkeypatch, reuse_loaded_models
):
    """The endpoint dies at the 4th upload: the CLI says so in one line, nothing searchable
    lacks its image or vector, and the same command afterwards completes, no duplicates."""
    monkeypatch.setenv("PAGELENS_MODEL", str(tiny_model_dir))
    monkeypatch.setenv("PAGELENS_MILVUS_TIMEOUT", "3")
    files = [
        make_text_pdf(tmp_path / "a.pdf", TOPICS[:5]),
        make_text_pdf(tmp_path / "b.pdf", TOPICS[5:9]),
    ]
    cmd = ["--collection", spec, "--image-tokens", "16", "index", *files]
    s3.proxy.fail_at(b"PUT /", 4)
    try:
        result = _cli(*cmd)
    finally:
        s3.proxy.disarm()  # if it never fired
    assert result.exit_code == 1, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
    assert f"Image store s3://{bucket}/team/pages failed while writing" in errors[0]
    assert SECRET not in result.output

    s3.proxy.resume()  # the server is back, with what it had stored
    store = open_collection(spec, create=False)
    assert store.stats().pages < 9  # stopped while storing pages
    _nothing_half_stored(store)
    result = _cli(*cmd)
    assert result.exit_code == 0, result.output
    _complete_once(store, bucket, s3, 9)
    result = _cli("--collection", spec, "check", "--json")
    assert result.exit_code == 0, result.output
    store.close()


def test_s3_failing_while_pages_are_embedded_leaves_them_pending(spec, bucket, s3, tmp_path):
    """The endpoint dies at the 3rd image download (the embedding phase reads the images
    back): the pages stay pending, never visually searchable, and a re-run embeds them."""
    files = [
        make_text_pdf(tmp_path / "a.pdf", TOPICS[:5]),
        make_text_pdf(tmp_path / "b.pdf", TOPICS[5:9]),
    ]
    store = open_collection(spec)
    indexer = Indexer(store, FakeEmbedder(), settings=SMALL, batch_size=2)
    s3.proxy.fail_at(b"GET /", 3)
    try:
        with pytest.raises(CollectionError, match="failed while reading"):
            indexer.add(files)
    finally:
        s3.proxy.disarm()
    result = _cli("--collection", spec, "search", "the", "--mode", "text")  # store still down
    assert result.exit_code == 1, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "failed while reading" in errors[0], result.output
    s3.proxy.resume()
    stats = store.stats()
    assert stats.pages == 9 and 0 < stats.pending < 9  # stored, partly embedded
    _nothing_half_stored(store)
    Indexer(store, FakeEmbedder(), settings=SMALL).add(files)
    _complete_once(store, bucket, s3, 9)
    store.close()


def test_a_missing_bucket_is_one_clear_line(milvus_server, bucket, tmp_path, monkeypatch):
    """A typo in the bucket name: one error line naming the location, nothing stored."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    spec = f"milvus://{milvus_server.address}/{name}?images=s3://{bucket}-typo/pages"
    monkeypatch.setenv("PAGELENS_MILVUS_TIMEOUT", "3")
    store = open_collection(spec)
    try:
        indexer = Indexer(store, FakeEmbedder(), settings=SMALL)
        with pytest.raises(CollectionError) as err:
            indexer.add([make_text_pdf(tmp_path / "a.pdf", TOPICS[:2])])
        message = str(err.value)
        assert "\n" not in message
        assert f"Image store s3://{bucket}-typo/pages failed while writing" in message
        assert "bucket does not exist" in message
        assert store.stats().pages == 0
    finally:
        store.drop()
        store.close()


def test_repair_spares_young_images_another_machine_may_be_storing(
    spec, bucket, s3, tmp_path, monkeypatch
):
    """An image without a row is an interrupted job's leftover, or another machine's page
    whose row is a moment away (nothing locks a Milvus collection): repair deletes it only
    once it is older than PAGELENS_MILVUS_ORPHAN_GRACE."""
    _index_fake(spec, [make_text_pdf(tmp_path / "a.pdf", TOPICS[:2])])
    store = open_collection(spec, create=False)
    store.images.put("pages/77/00001.png", b"an image whose row is on its way")
    result = _cli("--collection", spec, "check", "--repair", "--json")
    assert result.exit_code == 4, result.output  # reported, not deleted: it may be in flight
    repaired = {r["kind"]: r for r in json.loads(result.stdout)["repaired"]}
    assert repaired["orphan-files"]["count"] == 0 and "kept 1" in repaired["orphan-files"]["detail"]
    assert "team/pages/pages/77/00001.png" in s3.keys(bucket, IMAGES)

    monkeypatch.setenv("PAGELENS_MILVUS_ORPHAN_GRACE", "0")  # an hour later, say
    result = _cli("--collection", spec, "check", "--repair", "--json")
    assert result.exit_code == 0, result.output
    assert "team/pages/pages/77/00001.png" not in s3.keys(bucket, IMAGES)
    assert len(s3.keys(bucket, IMAGES)) == 2 and store.stats().pages == 2
    store.close()


def test_two_machines_index_into_one_s3_backed_collection_at_once(spec, bucket, s3, tmp_path):
    """Two indexing processes (each its own PAGELENS_HOME, as two machines) share one
    collection and one bucket, both with the same file among theirs: every page is stored
    once, every image once, and check is clean."""
    worker = Path(__file__).parent / "support" / "crash_worker.py"
    shared = make_text_pdf(tmp_path / "shared.pdf", TOPICS[:3])
    mine = make_text_pdf(tmp_path / "mine.pdf", TOPICS[3:5])
    theirs = make_text_pdf(tmp_path / "theirs.pdf", TOPICS[5:7])
    open_collection(spec).close()  # created once, with its image location recorded
    plain = spec.split("?", 1)[0]
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(worker),
                "index",
                plain,
                str(tmp_path / f"log{n}"),
                "--slow",
                "0.02",
                *map(str, files),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT), "PAGELENS_HOME": str(tmp_path / f"m{n}")},
        )  # fmt: skip
        for n, files in enumerate(([mine, shared], [shared, theirs]))
    ]
    for proc in procs:
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, out
    store = open_collection(plain, create=False)
    pages = store.pages(with_text=False)
    assert len(pages) == 7 == len({(p.document_id, p.number) for p in pages})
    assert store.stats().documents == 3 and store.stats().pending == 0
    assert len(s3.keys(bucket, IMAGES)) == 7
    result = _cli("--collection", plain, "check", "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["ok"], result.output
    store.close()


def test_serve_page_image_with_the_store_down_is_503_without_its_location(
    spec, bucket, s3, tmp_path
):
    """``GET /v1/pages/{id}/image`` of a bucket-backed collection whose store does not
    answer: 503 ``collection_unavailable`` (the client may retry), not a 500 crash, and the
    body names neither the bucket nor the Milvus server."""
    from fastapi.testclient import TestClient

    from app.server import create_app
    from app.server.named_collections import make_resolver

    _index_fake(spec, [make_text_pdf(tmp_path / "a.pdf", TOPICS[:1])])
    store = open_collection(spec, create=False)
    (page_id,) = store.page_ids()
    store.close()
    app = create_app(FakeEmbedder(), collection_resolver=make_resolver(spec))
    with TestClient(app, base_url="http://127.0.0.1") as client:
        s3.proxy.fail()
        try:
            response = client.get(f"/v1/pages/{page_id}/image")
        finally:
            s3.proxy.resume()
        assert response.status_code == 503, response.text
        error = response.json()["error"]
        assert error["code"] == "collection_unavailable"
        assert "failed while reading" in error["message"]
        assert bucket not in error["message"] and "127.0.0.1" not in error["message"]
        assert error["message"].startswith("The collection's image store failed while reading")
        again = client.get(f"/v1/pages/{page_id}/image")  # the store is back
        assert again.status_code == 200 and again.content.startswith(b"\x89PNG")

"""indexer.model.runtime.cpu_heap: freed large buffers are reused, not mapped and zeroed again."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from indexer.model.runtime import cpu_heap

ROOT = Path(__file__).resolve().parent.parent
GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"

# Allocate, touch and free a 64 MiB tensor 12 times; count the minor page faults, before and
# after keep_freed_memory(), in a fresh process (the setting is process-wide).
_PROBE = """
import json, resource, sys, torch
from indexer.model.runtime import cpu_heap

def faults():
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(12):
        torch.empty(16 * 2**20).fill_(1.0)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0

faults()  # warm-up: torch's own first allocations
before = faults()
on = cpu_heap.keep_freed_memory()
faults()  # the heap grows once
after = faults()
print(json.dumps({"on": on, "before": before, "after": after}))
"""


def _probe(**env: str) -> dict:
    full = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    full.pop("GLIBC_TUNABLES", None)
    full.update(env, PYTHONPATH=str(ROOT))
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], env=full, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not GLIBC, reason="glibc's allocator only")
def test_freed_buffers_are_reused_not_faulted_in_again():
    got = _probe()
    assert got["on"] is True
    # 12 x 64 MiB of 4 KiB pages faulted in without it (~196k); almost none with it
    assert got["before"] > 12 * 16 * 2**20 * 4 // 4096 // 2, got
    assert got["after"] < got["before"] // 20, got


@pytest.mark.skipif(not GLIBC, reason="glibc's allocator only")
def test_user_tuning_of_malloc_is_left_alone():
    got = _probe(MALLOC_ARENA_MAX="2")
    assert got["on"] is False
    assert got["after"] > got["before"] // 2, got  # still the default behaviour


def test_what_counts_as_user_tuning():
    assert cpu_heap._user_tunes({"GLIBC_TUNABLES": "glibc.malloc.mmap_max=0"})
    assert cpu_heap._user_tunes({"MALLOC_TRIM_THRESHOLD_": "0"})
    assert not cpu_heap._user_tunes({"GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX2"})
    assert not cpu_heap._user_tunes({"MALLOC_ARENA_MAX": ""})


def test_the_cli_turns_it_on_loading_an_embedder_does_not(tiny_model_dir, tmp_path):
    """A process-wide allocator setting is the choice of the program that owns the process:
    the CLI (and the app, Ray actors, the bench) make it; loading an embedder from Python
    leaves the user's process as it was, and ``heap_reuse`` reports what is in effect."""
    code = (
        "import json\n"
        "from typer.testing import CliRunner\n"
        "from indexer import load_embedder\n"
        "from indexer.model.runtime import cpu_heap\n"
        f"emb = load_embedder({str(tiny_model_dir)!r}, device='cpu')\n"
        "lib = [cpu_heap.in_effect(), emb.heap_reuse]\n"
        "from app.cli import cli\n"
        f"r = CliRunner().invoke(cli, ['-c', {str(tmp_path / 'c')!r}, 'docs'])\n"
        "emb2 = load_embedder(" + repr(str(tiny_model_dir)) + ", device='cpu')\n"
        "print(json.dumps(lib + [cpu_heap.in_effect(), emb2.heap_reuse, r.exit_code]))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env.pop("GLIBC_TUNABLES", None)
    env.update(PYTHONPATH=str(ROOT), PAGELENS_HOME=str(tmp_path / "home"))
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    lib_on, lib_emb, cli_on, cli_emb, exit_code = json.loads(out.stdout.strip().splitlines()[-1])
    assert (lib_on, lib_emb) == (False, False)
    assert (cli_on, cli_emb) == (GLIBC, GLIBC)
    assert exit_code in (0, 1), out.stdout  # 'docs' of a new collection: the root ran

"""Indexing: files -> pages -> vectors, into a store (:class:`~indexer.stores.base.Store`).

Two phases, so that a person can search at once and nothing is lost on interruption:

1. *Pages*: every file is inspected (bad files are refused by name with a reason, the others
   go on), its pages rendered, their text layer extracted, and both committed in small
   batches. Text search works as soon as this phase ends, in seconds.
2. *Vectors*: pages without a vector are embedded in batches and committed batch by batch.
   A page whose image is byte-identical to one already embedded (blank pages, repeated
   slides) reuses that vector instead of running the model.

Re-running the same command after a crash finishes the job: files whose content hash is
already complete are skipped, a half-stored file resumes at its first missing page, and
pending pages are embedded. The whole job holds the collection's write lock.

Modules: :mod:`~indexer.pipeline.job` (:class:`Indexer`), :mod:`~indexer.pipeline.plan`
(which files to store: :func:`plan_files`), :mod:`~indexer.pipeline.results` (what a job
reports: :class:`FileResult`, :class:`IndexReport`, :class:`Progress`, :class:`Meter`).
The Ray indexer (:mod:`indexer.ray`) shares the plan and the results.

May import: :mod:`indexer.pages`, :mod:`indexer.stores` (the ``Store`` protocol and its
value types, never an engine), :mod:`indexer.errors`, the model's ``Embedder`` protocol and
memory helpers; never :mod:`indexer.ray` or anything above :mod:`indexer`.
"""

from __future__ import annotations

from indexer.pipeline.job import Indexer
from indexer.pipeline.plan import FilePlan, add_file_document, collection_settings, plan_files
from indexer.pipeline.results import (
    FileResult,
    IndexReport,
    Meter,
    Progress,
    ProgressFn,
    format_duration,
    partial_result,
)

__all__ = [
    "FilePlan",
    "FileResult",
    "IndexReport",
    "Indexer",
    "Meter",
    "Progress",
    "ProgressFn",
    "add_file_document",
    "collection_settings",
    "format_duration",
    "partial_result",
    "plan_files",
]

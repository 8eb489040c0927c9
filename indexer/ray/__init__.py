"""Bulk indexing on a Ray cluster: ``pagelens index --ray ADDRESS PATH...``.

The same job as :class:`indexer.pipeline.Indexer` (whose file planning, results and
progress meter it shares), spread over Ray:

* :mod:`indexer.ray.cluster`: the ``--ray`` address, connecting or starting a local
  instance, sizing the actor pool (:class:`RayOptions`, :func:`plan_resources`);
* :mod:`indexer.ray.tasks`: what runs on the workers (inspect and render tasks, the
  embedding actor, the vector writer for collections that take many writers); Ray finds
  these by module path;
* :mod:`indexer.ray.pool`: the embedding actors (:class:`EmbedPool`);
* :mod:`indexer.ray.driver`: the job's loop (:class:`RayIndexer`), its state in
  :mod:`indexer.ray.schedule`.

May import: :mod:`indexer.pipeline`, :mod:`indexer.pages`, :mod:`indexer.stores` (the
``Store`` protocol and ``open_collection``, never an engine), :mod:`indexer.errors`,
:mod:`indexer.identity`, and the model loader inside the actor. Ray itself is an optional
dependency (``pip install 'pagelens[ray]'``), imported only when a job runs
(:func:`indexer.ray.cluster.import_ray`); importing this package does not import it.
"""

from __future__ import annotations

from indexer.ray.cluster import RayOptions, Resources, check_address, connect, plan_resources
from indexer.ray.driver import RayIndexer
from indexer.ray.pool import EmbedPool

__all__ = [
    "EmbedPool",
    "RayIndexer",
    "RayOptions",
    "Resources",
    "check_address",
    "connect",
    "plan_resources",
]

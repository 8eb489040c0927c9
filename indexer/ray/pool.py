"""The pool of embedding actors: started once, checked to agree on the model, reused across
jobs, and a dead actor replaced by a fresh one (up to a limit)."""

from __future__ import annotations

import logging
from typing import Any

from indexer.errors import PageLensError
from indexer.identity import ModelIdentity
from indexer.ray.cluster import RayOptions, Resources, cause_of, import_ray, plan_resources
from indexer.ray.tasks import EmbedActor

log = logging.getLogger(__name__)


class EmbedPool:
    """The embedding actors, each loading the model once; reusable across jobs.

    ``model`` and ``load`` (``device``, ``dtype`` and :func:`indexer.load_embedder` options)
    say what each actor loads. An actor that dies is replaced by :meth:`replace` (up to
    ``options.max_actor_failures`` times, default three per actor and two more).
    """

    def __init__(
        self,
        model: str | None = None,
        load: dict[str, Any] | None = None,
        options: RayOptions | None = None,
    ) -> None:
        self.model = model
        self.load = dict(load or {})
        self.options = options or RayOptions()
        self.actors: list[Any] = []  # live actor handles (tests kill one)
        self.resources: Resources | None = None
        self.failures = 0
        self._identity: ModelIdentity | None = None

    def start(self) -> ModelIdentity:
        """Start the actors (once) and return the identity of the model they loaded.

        All actors must agree; a model that cannot load surfaces here as its own error.
        """
        ray = import_ray()
        if self.resources is None:
            self.resources = plan_resources(ray.cluster_resources(), self.options)
        if not self.actors:
            self.actors = [self._new_actor() for _ in range(self.resources.actors)]
            self._identity = None
        if self._identity is None:
            try:
                ids = ray.get([a.identity.remote() for a in self.actors])
            except ray.exceptions.RayTaskError as exc:
                self.close()
                raise cause_of(exc) from exc
            except ray.exceptions.RayActorError as exc:
                self.close()
                raise PageLensError(f"A Ray embedding actor could not start: {exc}") from exc
            failed = [i for i in ids if isinstance(i, PageLensError)]
            if failed:
                self.close()
                raise failed[0]
            if len({(i.name, i.dim, i.fingerprint) for i in ids}) != 1:
                self.close()
                raise PageLensError(
                    "Ray actors loaded different models (is the model folder the same on "
                    f"every node?): {sorted({i.display for i in ids})}"
                )
            self._identity = ids[0]
        return self._identity

    def _new_actor(self) -> Any:
        ray = import_ray()
        res = self.resources
        assert res is not None
        return (
            ray.remote(EmbedActor)
            .options(num_cpus=res.actor_cpus, num_gpus=res.actor_gpus, max_restarts=0)
            .remote(self.model, self.load, res.threads)
        )

    def replace(self, actor: Any, exc: BaseException) -> Any | None:
        """Swap a dead actor for a fresh one (which loads the model again); None when it was
        already replaced (its other batches fail too)."""
        if actor not in self.actors:
            return None
        self.failures += 1
        limit = self.options.max_actor_failures
        if limit is None:
            limit = 3 * max(1, len(self.actors)) + 2
        if self.failures > limit:
            raise PageLensError(
                f"Ray embedding actors died {self.failures} times; giving up (the last: "
                f"{exc}). What was committed is kept; run the same command to resume."
            )
        log.warning("a Ray embedding actor died (%s); starting a new one", exc)
        self.actors.remove(actor)
        fresh = self._new_actor()
        self.actors.append(fresh)
        return fresh

    def close(self) -> None:
        ray = import_ray()
        for actor in self.actors:
            if ray.is_initialized():
                ray.kill(actor)
        self.actors = []
        self._identity = None

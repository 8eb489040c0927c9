"""Where a Ray job runs: the ``--ray`` address, connecting (or starting a local instance),
and sizing the actor pool so that rendering keeps CPUs.

Sizing matters on small machines: render tasks take one CPU each and the actor pool takes
what :func:`plan_resources` leaves, so that neither stage can starve the other (an actor
pool holding every CPU would leave rendering none and the job would stall).

Ray is an optional dependency (``pip install 'pagelens[ray]'``), imported by
:func:`import_ray` only when a job runs.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from indexer.errors import PageLensError

log = logging.getLogger(__name__)

#: ``--ray`` spellings besides a cluster address (``host:port`` or ``ray://host:port``).
LOCAL = "local"
#: Starts of a fresh local instance before giving up (see :func:`connect`).
LOCAL_START_TRIES = 3
AUTO = "auto"
#: Ray's own switch for its usage statistics (set to "0" while Ray starts, see connect).
USAGE_STATS_VAR = "RAY_USAGE_STATS_ENABLED"
#: Ray's token authentication (Ray 2.52+): the mode, and the token itself (see connect).
AUTH_MODE_VAR = "RAY_AUTH_MODE"
AUTH_TOKEN_VAR = "RAY_AUTH_TOKEN"
#: Ray's switch that, off, gives a node the loopback address instead of the machine's LAN
#: address (its default on macOS and Windows), and so makes every Ray server listen there.
CLUSTER_VAR = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
#: Where a ``local`` instance's processes listen: loopback only.
LOOPBACK = "127.0.0.1"
_ADDRESS = re.compile(r"^(ray://)?[A-Za-z0-9_.\-\[\]:]+:\d{1,5}$")


@dataclass(frozen=True)
class RayOptions:
    """How a job uses the cluster.

    ``actors``: embedding actors (default: one per GPU, or 1 without GPUs). ``actor_cpus``:
    the CPU share of each actor (default: one with a GPU; without GPUs, what is left after
    keeping a quarter of the CPUs, at least one, for rendering, split between the actors).
    ``render_cpus``: CPUs per render task. ``pages_per_task``: pages rendered per task.
    ``object_store_mb`` and ``num_cpus`` size a ``local`` instance.
    """

    address: str = LOCAL
    actors: int | None = None
    actor_cpus: float | None = None
    actor_gpus: float | None = None
    render_cpus: float = 1.0
    pages_per_task: int = 8
    batches_per_actor: int = 2
    num_cpus: int | None = None
    object_store_mb: int | None = None
    max_actor_failures: int | None = None


@dataclass(frozen=True)
class Resources:
    """What each actor asks of Ray, and how many threads its model may use."""

    actors: int
    actor_cpus: float
    actor_gpus: float
    threads: int
    render_cpus: float


def check_address(address: str) -> str:
    """The ``--ray`` value, or a clear error for anything that is not one of its spellings."""
    text = (address or "").strip()
    if text in (LOCAL, AUTO) or _ADDRESS.match(text):
        return text
    raise PageLensError(
        f"--ray {address!r} is not a Ray address: use 'local' (start Ray on this machine), "
        "'auto' (the cluster this machine belongs to) or HOST:PORT / ray://HOST:PORT."
    )


def import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise PageLensError(
            "Ray is not installed: pip install 'pagelens[ray]' (or pip install ray)."
        ) from exc
    return ray


def connect(address: str, *, options: RayOptions | None = None) -> bool:
    """Connect to Ray (or start a local instance); True when this call started/joined it.

    A ``local`` instance is small and private: every process of it (GCS, raylet, workers,
    agents, this driver's own gRPC server) listens on loopback only, and each call to it
    needs a random token made for this process (Ray's token authentication, so another
    user of the machine cannot use it either); no dashboard, no usage statistics (nothing
    leaves the machine), a bounded object store, nothing written to ``~/.ray``. If Ray is
    already initialised in this process (tests, notebooks), that instance is used as it is
    and False is returned.
    """
    address = check_address(address)
    options = options or RayOptions(address=address)
    ray = import_ray()
    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {
        "include_dashboard": False,
        "log_to_driver": False,
        "logging_level": logging.WARNING,
        "configure_logging": False,
    }
    environment = {USAGE_STATS_VAR: "0"}
    if address == LOCAL:
        cpus = options.num_cpus or os.cpu_count() or 1
        store_mb = options.object_store_mb or _default_object_store_mb()
        kwargs.update(
            num_cpus=cpus,
            object_store_memory=store_mb * 1024 * 1024,
            _node_ip_address=LOOPBACK,
        )
        environment.update(local_environment())
        target = "local"
    else:
        target = address
        kwargs.pop("include_dashboard")
    tries = LOCAL_START_TRIES if address == LOCAL else 1
    for attempt in range(1, tries + 1):
        try:
            with _environment(environment), _local_driver(ray, address == LOCAL):
                ray.init(address=target, **kwargs)
            break
        except Exception as exc:  # Ray raises a bare Exception when its raylet is late
            if attempt == tries:
                raise PageLensError(f"Cannot connect to Ray at {address!r}: {exc}") from exc
            # Why more tries: a fresh local instance sometimes misses one of its own start-up
            # deadlines on a busy machine (the GCS server's port file; the raylet's
            # registration, which Ray waits for 30 s and then raises a bare Exception),
            # e.g. right after another instance shut down; the half-started processes are
            # stopped first.
            log.warning("starting a local Ray instance failed (%s); trying again", exc)
            ray.shutdown()
            time.sleep(2)
    return True


_TOKEN: list[str] = []


def local_environment() -> dict[str, str]:
    """The variables a ``local`` instance starts with (besides usage statistics off); a
    driver in another process joins the instance with them (the tests do).

    * ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``: the node's address is loopback in the
      processes Ray starts (see :func:`_local_driver` for this driver), and Ray's servers
      listen on the node's address when it is loopback, on every interface otherwise.
    * ``RAY_AUTH_MODE=token`` with ``RAY_AUTH_TOKEN``: every call to the instance must carry
      the token (Ray 2.52+). It is random, one per process (Ray's driver keeps the first
      token it reads, so a second local instance in the same process gets the same), kept
      in this process's memory and in the environment of the instance's processes: Ray
      would otherwise write one to ``~/.ray/auth_token`` (and Ray 2.60 sets
      ``RAY_AUTH_MODE`` in this process for good). A token already in ``RAY_AUTH_TOKEN`` is
      used as it is.
    """
    if not _TOKEN:
        _TOKEN.append(os.environ.get(AUTH_TOKEN_VAR) or secrets.token_hex(32))
    return {CLUSTER_VAR: "0", AUTH_MODE_VAR: "token", AUTH_TOKEN_VAR: _TOKEN[0]}


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """``values`` in the environment for one ``ray.init``, put back as they were after.

    Ray reads these only from its environment variables, in the driver while ``init`` runs
    and in the processes ``init`` starts (they inherit them then, and the workers the raylet
    starts later inherit the raylet's); the process around this call sees no change.
    """
    before = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def _local_driver(ray: Any, local: bool) -> Iterator[None]:
    """For a ``local`` start, this driver joins the instance as its processes do, for one
    ``ray.init`` (inside :func:`_environment`, whose variables it reads).

    * The node's address is loopback: Ray reads ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`` once,
      on import, into ``ray._private.ray_constants.ENABLE_RAY_CLUSTER``, and with it on
      replaces even an explicit ``127.0.0.1`` by the LAN address. Put back afterwards.
    * Token mode: Ray's C++ side reads ``RAY_AUTH_MODE`` into its configuration when that
      is loaded, which may have happened before the variable was set, so it is loaded again
      (as Ray itself does when it turns token mode on). This one stays as it is after the
      call: the driver's calls to the instance carry the token as long as it runs.
    """
    if not local:
        yield
        return
    config = getattr(getattr(ray, "_raylet", None), "Config", None)
    if config is not None:
        config.initialize("")
    constants: Any = getattr(getattr(ray, "_private", None), "ray_constants", None)
    if not hasattr(constants, "ENABLE_RAY_CLUSTER"):
        yield
        return
    before = constants.ENABLE_RAY_CLUSTER
    constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        constants.ENABLE_RAY_CLUSTER = before


def _default_object_store_mb() -> int:
    """A tenth of the RAM, between 128 MiB and 2 GiB: pages travel as PNG, a few at a time."""
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        ram = 8 * 1024**3
    return int(min(2048, max(128, ram // 10 // 1024**2)))


def plan_resources(cluster: dict[str, float], options: RayOptions) -> Resources:
    """Size the actor pool for the cluster so that rendering keeps CPUs.

    Raises :class:`PageLensError` when the asked pool cannot fit: more GPU actors than GPUs,
    or actors whose CPU shares leave less than one render task's worth of CPU (the job
    would stall waiting for a CPU that never frees).
    """
    cpus = float(cluster.get("CPU", 0))
    gpus = float(cluster.get("GPU", 0))
    if options.actor_gpus is not None:
        actor_gpus = float(options.actor_gpus)
    else:
        actor_gpus = 1.0 if gpus >= 1 else 0.0
    actors = options.actors or (int(gpus // actor_gpus) if actor_gpus else 1)
    if actors < 1:
        raise PageLensError("--ray-actors must be at least 1.")
    if actor_gpus and actors * actor_gpus > gpus + 1e-9:
        raise PageLensError(
            f"{actors} actor(s) x {actor_gpus:g} GPU need more GPUs than the Ray cluster has "
            f"({gpus:g}); lower --ray-actors."
        )
    if options.actor_cpus is not None:
        actor_cpus = float(options.actor_cpus)
    elif actor_gpus:
        actor_cpus = 1.0
    else:
        keep = max(options.render_cpus, math.floor(cpus / 4))
        actor_cpus = max(0.25, round((cpus - keep) / actors, 2))
    if actor_cpus <= 0:
        raise PageLensError("--ray-actor-cpus must be positive.")
    if actors * actor_cpus > cpus - options.render_cpus + 1e-9:
        raise PageLensError(
            f"{actors} actor(s) x {actor_cpus:g} CPU leave no CPU to render pages on this Ray "
            f"cluster ({cpus:g} CPUs): the job would stall. Lower --ray-actors or "
            "--ray-actor-cpus."
        )
    threads = max(1, int(actor_cpus))
    return Resources(actors, actor_cpus, actor_gpus, threads, options.render_cpus)


def cause_of(exc: BaseException) -> BaseException:
    """The user-facing error inside a Ray task error (a PageLensError stays one)."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, PageLensError):
        return cause
    return PageLensError(f"A Ray task failed: {cause or exc}")

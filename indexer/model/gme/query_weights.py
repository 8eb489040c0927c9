"""Which decoder weights text queries use: the policy GME's embedder holds, and the choice.

Why: a query is bound by reading the decoder's weights, so a smaller copy of them (fp16
weights with float32 activations today, see :mod:`indexer.model.runtime.lowp`) makes it ~2x
faster on CPUs without native bf16. A copy is used only when, measured on whole calibration
queries, it agrees with the exact path (cosine >= ``lowp.MIN_QUERY_COSINE`` on each) and is
faster, and when the memory available now holds it; else queries stay exact.

* :func:`plan_query_weights`: which candidates a model, setting and CPU allow (no measuring).
* :func:`choose`: measure them in order and keep the first that holds.
* :class:`QueryWeightsPolicy`: when to decide (not for a one-shot query), the lock, the
  counters, the decision kept on disk (:mod:`indexer.model.gme.query_weights_cache`) and the
  copy in use. :class:`~indexer.model.gme.embedder.GmeEmbedder` holds one.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from indexer.model.gme import query_weights_cache
from indexer.model.runtime import cpu_features, lowp
from indexer.model.runtime import device as runtime_device

if TYPE_CHECKING:
    from indexer.model.gme.embedder import GmeEmbedder

_log = logging.getLogger(__name__)

#: ``query_weights`` settings: "auto" (decide from the CPU and a self-check), "exact", or an
#: explicit candidate of :data:`indexer.model.runtime.lowp.CANDIDATES` ("int8" means
#: ``int8-bf16``).
QUERY_WEIGHTS = ("auto", "exact", "int8", *lowp.CANDIDATES)
#: What ``auto`` tries, fastest first as measured on an AVX2 CPU without native bf16 at a
#: query's ~15 tokens (see README, Performance); the first that agrees and beats the exact
#: path there is kept (trying them all would hold two extra weight copies at once).
#: Not tried: ``int8-bf16`` (cosine ~0.998 on the full-size model) and ``int8mix-bf16``
#: (cosine 0.9995 but one top-10 swap in 80 on the bench's check).
AUTO_ORDER = ("fp16", "int8+int4-bf16", "int8x2-bf16", "bf16")
#: Fixed queries of a few lengths for the self-check of :meth:`QueryWeightsPolicy.prepare`.
CALIBRATION_QUERIES = (
    "how do I declare an interface",
    "quarterly revenue by region, compared with the previous year",
    "table of contents",
    "a diagram that shows the network topology of the data centre and its firewalls",
)


@dataclass(frozen=True)
class QueryPlan:
    """Which query-path candidates to try, most promising first, and why."""

    candidates: tuple[str, ...]
    reason: str


def plan_query_weights(
    setting: str = "auto",
    *,
    device: str = "cpu",
    dtype: str = "float32",
    hidden: int = 0,
    min_hidden: int = 1024,
    flags: Iterable[str] | None = None,
    machine: str | None = None,
) -> QueryPlan:
    """The int8 query candidates for a model, from the setting and the CPU's features.

    ``auto`` tries ``int8-bf16`` only on a CPU device, for a float32 model of GME size
    (``hidden >= min_hidden``: small matrices are not bandwidth-bound), on an x86 CPU whose
    kernel is vectorised and which has **no** native bf16 (those run the whole model in bf16
    already). The caller keeps a candidate only if it passes the agreement self-check and
    beats the exact path's measured time.
    """
    if setting not in QUERY_WEIGHTS:
        raise ValueError(f"unknown query_weights {setting!r}; expected one of {QUERY_WEIGHTS}")
    if setting == "exact":
        return QueryPlan((), "query_weights='exact'")
    if torch.device(device).type != "cpu":
        if setting != "auto":
            raise ValueError("int8 query weights are for CPU inference (use bf16 on GPUs)")
        return QueryPlan((), f"device {device}: not a CPU")
    if setting != "auto":
        mode = "int8-bf16" if setting == "int8" else setting
        if not lowp.kernel_available(mode):
            raise ValueError(
                f"query_weights {mode!r} needs fbgemm, which this torch build lacks "
                "(x86 builds only); use 'auto' or 'exact'"
            )
        return QueryPlan((mode,), "asked for")
    if dtype != "float32":
        return QueryPlan((), f"model runs in {dtype}, not float32")
    if hidden < min_hidden:
        return QueryPlan((), f"model too small (hidden {hidden} < {min_hidden})")
    if cpu_features.has_native_bf16(flags):
        return QueryPlan((), "CPU has native bf16 (the model's auto dtype covers it)")
    if not cpu_features.int8_weight_kernel_vectorised(flags, machine):
        return QueryPlan((), "no AVX2/AVX-512: the int8 kernel is not vectorised here")
    return QueryPlan(
        tuple(c for c in AUTO_ORDER if lowp.kernel_available(c)), "x86 CPU without native bf16"
    )


def choose(
    plan: QueryPlan,
    *,
    run_exact: Callable[[], torch.Tensor],
    make: Callable[[str], lowp.QueryWeights],
    run_with: Callable[[lowp.QueryWeights], torch.Tensor],
    forced: bool = False,
    min_cosine: float | None = None,
) -> tuple[lowp.QueryChoice, lowp.QueryWeights | None]:
    """Measure the candidates, in order, on whole queries against the exact path; keep the
    first that agrees (cosine >= ``min_cosine`` on every query) and, unless ``forced``, is
    faster. Candidates come fewest weight bytes first, so the first that holds is also the
    one that can go fastest; stopping there keeps at most one extra copy in memory.

    ``run_exact``/``run_with`` embed a fixed set of calibration queries (unit rows); each
    runs twice and the second run is timed (the first pays one-off allocations).
    """
    if min_cosine is None:
        min_cosine = lowp.MIN_QUERY_COSINE
    choice = lowp.QueryChoice(reason=plan.reason)
    if not plan.candidates:
        return choice, None

    def timed(fn: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, float]:
        fn()
        t = time.perf_counter()
        out = fn()
        return out, time.perf_counter() - t

    exact, exact_s = timed(run_exact)
    choice.exact_s = round(exact_s, 4)
    best: tuple[float, str, lowp.QueryWeights] | None = None
    for name in plan.candidates:
        weights = make(name)

        def candidate(w: lowp.QueryWeights = weights) -> torch.Tensor:
            return run_with(w)

        vecs, secs = timed(candidate)
        cos = float((vecs * exact).sum(-1).min())
        holds = cos >= min_cosine
        faster = secs < exact_s
        choice.candidates[name] = {
            "cosine_min": round(cos, 6),
            "s": round(secs, 4),
            "holds": holds,
            "faster": faster,  # as measured: "s" and exact_s are rounded to 0.1 ms
        }
        if holds and (faster or forced):
            best = (secs, name, weights)
            break
        weights.remove()
    if best is None:
        choice.reason += "; no candidate held (agreement or speed): exact"
        return choice, None
    choice.mode = best[1]
    return choice, best[2]


def _nothing() -> Any:
    import contextlib

    return contextlib.nullcontext()


class QueryWeightsPolicy:
    """Which weights one embedder's text queries use, decided once per process.

    Held by :class:`~indexer.model.gme.embedder.GmeEmbedder` (``embedder.queries``), which
    keeps its public face (``prepare_queries``, ``set_query_weights``, ``query_choice``...)
    and hands text queries to :meth:`run`.
    """

    def __init__(self, embedder: GmeEmbedder, setting: str = "auto") -> None:
        if setting not in QUERY_WEIGHTS:
            raise ValueError(f"unknown query_weights {setting!r}; expected one of {QUERY_WEIGHTS}")
        self._embedder = embedder
        #: Text-query decoder weights: "auto" (a smaller copy where it is faster and agrees,
        #: see :meth:`prepare`), "exact", or a candidate of :mod:`indexer.model.runtime.lowp`.
        self.setting = setting
        #: What :meth:`prepare` decided (None until decided: in "auto", at the second
        #: text query of the process or an explicit :meth:`prepare`).
        self.choice: lowp.QueryChoice | None = None
        self._copy: lowp.QueryWeights | None = None
        #: Where decisions are kept between processes
        #: (:mod:`indexer.model.gme.query_weights_cache`); None: measure every time (the
        #: benchmark's choice).
        self.decision_cache: query_weights_cache.DecisionCache | None = (
            query_weights_cache.DecisionCache()
        )
        self._lock = threading.Lock()
        self.text_calls = 0
        #: Seconds this process has spent on text queries with the exact weights while the
        #: decision waited, against what building a cached copy costs (:meth:`_maybe_decide`).
        self.exact_text_s = 0.0
        #: CPU flags the auto decision reads (None: this machine's); tests inject others.
        self.cpu_flags: frozenset[str] | None = None

    def run(self, n_texts: int, embed: Callable[[], np.ndarray]) -> np.ndarray:
        """Count one text call of ``n_texts`` texts, decide if it is time, then ``embed``
        (timed while the decision waits, see :meth:`_maybe_decide`)."""
        self.text_calls += 1
        if self.choice is None:
            self._maybe_decide(n_texts)
        if self.choice is not None:
            return embed()
        t0 = time.perf_counter()
        try:
            return embed()
        finally:
            self.exact_text_s += time.perf_counter() - t0

    def active(self) -> Any:
        """Context in which text inputs use the chosen query weights (a no-op when exact)."""
        weights = self._copy  # one read: another thread may swap it
        return weights.active() if weights is not None else _nothing()

    def prepare(self) -> lowp.QueryChoice:
        """Decide, once, which decoder weights text queries use; returns the decision.

        Measuring takes tens of seconds on CPUs without native bf16 and building the copy
        ~2.6 GB and several seconds for GME-2B, so: the decision is kept on disk per model,
        CPU and torch (:mod:`indexer.model.gme.query_weights_cache`) and a later process
        only builds the copy; with ``query_weights="auto"`` the first text query of a
        process runs exact without deciding (a one-shot ``pagelens search`` never pays) and
        the second decides, except that a copy an earlier process chose is built only once
        this process's exact queries have taken as long as building it took there (a short
        run never pays it); long-lived processes (``pagelens serve``, ``pagelens mcp``, the
        app) call this at start-up so that their first query is fast already. Thread-safe:
        a text query in another thread meanwhile runs exact. Pages never use the copy.
        """
        choice = self.choice
        if choice is not None:
            return choice
        with self._lock:
            if self.choice is None:
                self._decide()
            assert self.choice is not None
            return self.choice

    def change(self, setting: str) -> lowp.QueryChoice:
        """Change the setting and decide again now (drops any copy)."""
        if setting not in QUERY_WEIGHTS:
            raise ValueError(f"unknown query_weights {setting!r}; expected one of {QUERY_WEIGHTS}")
        self.reset(setting)
        return self.prepare()

    def reset(self, setting: str) -> None:
        """Drop any copy and decision and take ``setting``, without deciding (int8
        quantisation replaces the linears the copy patched)."""
        with self._lock:
            if self._copy is not None:
                self._copy.remove()
            self._copy = None
            self.choice = None
            self.setting = setting

    def _maybe_decide(self, n_texts: int) -> None:
        """Decide now if this process has shown it runs more than one text query (or the
        setting names a copy); never waits for a decision another thread is making."""
        if (
            self.setting == "auto"
            and self.text_calls <= 1
            and n_texts <= 1
            and self._plan().candidates  # else deciding costs nothing: do it now
        ):
            _log.info(
                "text queries: exact for this first query; the query-weights decision waits "
                "for a second one (or prepare_queries())"
            )
            return
        cost = self._cached_copy_cost if self.setting == "auto" else None
        if cost is not None and self.exact_text_s < cost:
            # An earlier process measured that a copy holds and what building it costs:
            # build it once the exact queries of this process have taken that long (at most
            # twice the best possible time, whatever the number of queries to come), so a
            # short run of a few queries never pays ~10 s for a copy it would not use up.
            _log.info(
                "text queries: exact until they have taken %.1f s (building the faster copy "
                "costs that; %.1f s so far)",
                cost,
                self.exact_text_s,
            )
            return
        if self._lock.acquire(blocking=False):
            try:
                if self.choice is None:
                    self._decide()
            finally:
                self._lock.release()

    def _plan(self) -> QueryPlan:
        """The candidates this model, setting and CPU allow (no measuring)."""
        emb = self._embedder
        plan = plan_query_weights(
            self.setting,
            device=emb.device,
            dtype=emb.dtype,
            hidden=emb.dim,
            min_hidden=runtime_device.CPU_BF16_MIN_HIDDEN,
            flags=self.cpu_flags,
        )
        if plan.candidates and emb.compiled and self.setting == "auto":
            plan = QueryPlan((), "model is torch.compile'd")
        return plan

    def _decide(self) -> None:
        """The decision of :meth:`prepare` (caller holds the lock)."""
        plan = self._plan()
        weights: lowp.QueryWeights | None = None
        if not plan.candidates:
            choice = lowp.QueryChoice(reason=plan.reason, source="plan")
        else:
            choice, weights = self._decide_among(plan)
        self._copy, self.choice = weights, choice
        _log.info(
            "text queries: %s (%s)%s%s",
            choice.mode,
            choice.reason,
            f"; measured {choice.candidates}, exact {choice.exact_s} s"
            if choice.candidates
            else "",
            f"; decided by an earlier process, from {choice.cache_file}"
            if choice.source == "cache"
            else "",
        )

    def _decision_key(self, plan: QueryPlan) -> dict[str, Any]:
        """What the decision depends on (:func:`query_weights_cache.decision_key`)."""
        emb = self._embedder
        return query_weights_cache.decision_key(
            model_id=emb.model_id,
            fingerprint=emb.fingerprint,
            config=emb.model.config.to_json_string(use_diff=False),
            flags=cpu_features.cpu_flags() if self.cpu_flags is None else self.cpu_flags,
            device=emb.device,
            dtype=emb.dtype,
            candidates=plan.candidates,
            forced=self.setting != "auto",
            calibration=CALIBRATION_QUERIES,
        )

    @functools.cached_property
    def _cached_copy_cost(self) -> float | None:
        """Seconds building the copy took when an earlier process decided on one for this
        key (looked up once), or None: no such decision, or its cost was not recorded."""
        plan = self._plan()
        cache = self.decision_cache
        cached = cache.load(self._decision_key(plan)) if cache and plan.candidates else None
        if cached is None or cached.mode == "exact":
            return None
        cost = cached.timings.get("prepare_s_when_measured")
        return float(cost) if cost is not None else None

    def _decide_among(self, plan: QueryPlan) -> tuple[lowp.QueryChoice, lowp.QueryWeights | None]:
        """A cached decision for this key, else the calibration (saved for the next
        process); either way no copy that the free memory cannot hold."""
        t0 = time.perf_counter()
        key = self._decision_key(plan)
        cache = self.decision_cache
        cached = cache.load(key) if cache is not None else None
        text_model = self._embedder.text_model
        n_weights = sum(
            m.weight.numel() for m in text_model.modules() if isinstance(m, torch.nn.Linear)
        )
        if cached is not None:
            cached.timings["cached_decision_s"] = round(time.perf_counter() - t0, 4)
            if cached.mode == "exact":
                return cached, None
            short = query_weights_cache.memory_shortfall(cached.mode, n_weights)
            if short:
                cached.mode, cached.reason = "exact", f"{cached.reason}; {short}"
                return cached, None
            t1 = time.perf_counter()
            copy = lowp.QueryWeights(text_model, cached.mode)
            cached.timings["prepare_s"] = round(time.perf_counter() - t1, 3)
            return cached, copy
        fits = tuple(
            c for c in plan.candidates if not query_weights_cache.memory_shortfall(c, n_weights)
        )
        if not fits:
            reason = query_weights_cache.memory_shortfall(plan.candidates[0], n_weights)
            return lowp.QueryChoice(reason=f"{plan.reason}; {reason}", source="memory"), None
        choice, weights = self._calibrate(QueryPlan(fits, plan.reason))
        # a decision over fewer candidates (memory was short) is not the key's answer
        if cache is not None and fits == plan.candidates:
            saved = cache.store(key, choice)
            choice.cache_file = str(saved) if saved else None
        return choice, weights

    def _calibrate(self, plan: QueryPlan) -> tuple[lowp.QueryChoice, lowp.QueryWeights | None]:
        """:func:`choose` among ``plan``'s candidates on :data:`CALIBRATION_QUERIES`."""
        emb = self._embedder
        calib = list(CALIBRATION_QUERIES)
        built: dict[str, float] = {}

        def run() -> torch.Tensor:
            return torch.from_numpy(emb._embed_texts_now(calib))

        def run_with(weights: lowp.QueryWeights) -> torch.Tensor:
            with weights.active():
                return run()

        def make(name: str) -> lowp.QueryWeights:
            t = time.perf_counter()
            copy = lowp.QueryWeights(emb.text_model, name)
            built[name] = round(time.perf_counter() - t, 3)
            return copy

        t1 = time.perf_counter()
        choice, weights = choose(
            plan, run_exact=run, make=make, run_with=run_with, forced=self.setting != "auto"
        )
        choice.timings["calibration_s"] = round(time.perf_counter() - t1, 3)
        if weights is not None:
            choice.timings["prepare_s"] = built[choice.mode]
        return choice, weights


__all__ = [
    "AUTO_ORDER",
    "CALIBRATION_QUERIES",
    "QUERY_WEIGHTS",
    "QueryPlan",
    "QueryWeightsPolicy",
    "choose",
    "plan_query_weights",
]

"""The dispatcher behind ``specgraph.flatten`` / ``unflatten`` / ``update``.

flatten / update: look up ``type(root)``, try that type's compiled variants
(most recently hit first); a variant answers with a list of values, or with
the name of the guard that failed. When none answers, the reference walker does,
and the structure it returns is counted toward being specialized.

unflatten: keyed by the ``GraphDef`` (identity fast path through a scratch slot
on the GraphDef, then a dict keyed by its cached hash).
"""

from __future__ import annotations

import warnings
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from .. import _registry as reg
from .. import codegen
from .._ir import GraphDef
from .._resolve import resolve_all, resolve_partial
from .._statemap import StateMap
from .._weakstatic import cache_key, take_dead
from ..codegen import MISS
from ..generic._flatten import Walk, walk
from ..generic._unflatten import build
from ..generic._update import apply_update
from . import derived
from .cache import CONFIG, LOCK, StructureStats, TypeEntry, UnflattenEntry, Variant, WeakVariant

__all__ = [
    "flatten",
    "unflatten",
    "unflatten_states",
    "update",
    "specialization",
    "clear_cache",
    "cache_info",
    "configure",
]

_types: dict[type, TypeEntry] = {}
_Root = TypeVar("_Root")  # the root type a GraphDef carries (for type checkers)

# Every cache below holds a structure by its cache key (see _weakstatic.cache_key): the
# GraphDef itself, or a twin that holds weakly the statics that reach user data (a bound
# method, a closure over a node): the caches keep no user node alive.
_stats: dict[GraphDef, StructureStats] = {}
_retired = StructureStats()  # the counters of structures dropped when a static died
# Counters pushed out of _stats by its bound, oldest first: a variant or an unflatten entry
# may still count into them, so cache_info sums them until they too are pushed out (into
# _retired, as they are then). Totals never go down; past both bounds, a structure's later
# counts are lost.
_evicted: deque[StructureStats] = deque()
# GraphDef -> its compiled unflatten (with the plan, which knows where its statics sit in a
# GraphDef), or None when declined
_unflat: dict[GraphDef, codegen.Built | None] = {}
_unflat_seen: dict[GraphDef, int] = {}
_unflat_epoch = [-1]  # registry epoch _unflat was filled under
_totals = {"generic_flattens": 0, "generic_unflattens": 0, "generic_updates": 0, "compile_failures": 0,
           "declined": 0, "declined_too_large": 0, "megamorphic_types": 0, "generic_walks": 0,
           "unflatten_declined": 0}
_disabled_guards: frozenset[str] = frozenset()  # test-only: see _set_disabled_guards
_BOUND = 256  # entries kept in the bounded bookkeeping dicts

_make_sm = StateMap._make
_EPOCH = reg.epoch_cell()
_new_sm = object.__new__


# -- flatten ----------------------------------------------------------------------


def flatten(node: _Root) -> tuple[GraphDef[_Root], StateMap]:
    """Split a graph into its static ``GraphDef`` and its values as a ``StateMap``.

    Served by a specialized function when one matches the object's structure,
    else by the reference walker; both give equal results.
    """
    entry = _types.get(type(node)) if CONFIG.enabled else None
    if entry is not None:
        variants = entry.variants
        for var in variants:
            r = var.flatten(node)
            if type(r) is list:
                var.stats.hits += 1
                if var is not variants[0]:
                    _promote(entry, var)
                sm = _new_sm(StateMap)
                sm._table = var.table
                sm._values = r
                return var.graphdef, sm
            var.stats.misses[r] += 1
    return _generic_flatten(node, entry)


def _generic_flatten(node: Any, entry: TypeEntry | None) -> tuple[GraphDef, StateMap]:
    w = walk(node)
    gd = w.graphdef
    _totals["generic_flattens"] += 1
    if CONFIG.enabled:
        _observe(type(node), w, entry)
    return gd, _make_sm(gd.pathtable, w.values)


def _promote(entry: TypeEntry, var: Variant) -> None:
    with LOCK:
        entry.variants = (var, *(v for v in entry.variants if v is not var))


def _observe(t: type, w: Walk, entry: TypeEntry | None) -> None:
    """Count a structure seen by the reference walker; specialize it at the threshold.

    Never an error for the user: a static whose ``__hash__`` or ``__eq__`` raises (or
    returns something that is not a bool) cannot key a specialization, so the generic
    walker keeps serving that structure.
    """
    try:
        _observe_structure(t, w, entry)
    except Warning:  # a compile-failure warning turned into an error (-W error) is the user's
        raise
    except Exception:
        return


def _observe_structure(t: type, w: Walk, entry: TypeEntry | None) -> None:
    gd = w.graphdef
    _drop_dead()
    if entry is None:
        with LOCK:
            entry = _types.get(t)
            if entry is None:
                if len(_types) >= 4 * _BOUND:  # e.g. a new sg.jit per call: forget the oldest type
                    _forget_variants(_types.pop(next(iter(_types))).variants)
                entry = _types[t] = TypeEntry()
    if entry.megamorphic:
        return
    try:
        hash(gd)
    except TypeError:
        return  # an unhashable static: nothing to key a specialization on
    for var in entry.variants:
        if var.key == gd:  # equal structure, but a guard refused (e.g. a NaN static)
            # Compiled before a registration, or a class has since gained a hook the code
            # relied on it lacking or changed its graph_invisible_attrs: replace it.
            if var.plan.epoch != reg.registry_epoch() or not var.plan.facts.hold():
                with LOCK:
                    entry.variants = tuple(v for v in entry.variants if v is not var)
                _forget_variants((var,))
                break
            var.stats.fallbacks += 1
            return
    if gd in entry.declined:
        return
    key = cache_key(gd)
    if key is None:  # a static reaches user data and cannot be held weakly: never cached
        return
    with LOCK:
        if entry.megamorphic or any(v.key == gd for v in entry.variants):
            return  # another thread got here first: never compile one structure twice
        n = entry.seen.get(gd, 0) + 1
        if n < CONFIG.threshold:
            entry.seen[key] = n
            if len(entry.seen) > _BOUND:
                entry.seen.pop(next(iter(entry.seen)))
            return
        entry.seen.pop(gd, None)
        if len(entry.variants) >= CONFIG.max_variants:
            entry.megamorphic = True
            _forget_variants(entry.variants)
            entry.variants = ()
            entry.seen.clear()
            _totals["megamorphic_types"] += 1
            return
        new = _compile_variant(key, gd, entry, tuple(w.links))
        if new is not None:
            entry.variants = (new, *entry.variants)


def _compile_variant(key: GraphDef, gd: GraphDef, entry: TypeEntry, links: tuple) -> Variant | None:
    """Compile the structure ``gd`` from its cache ``key`` (the plan binds no static the
    key holds weakly)."""
    stats = _stats_for(gd, key)
    canon = stats.key
    if key is gd and type(canon) is GraphDef and canon is not gd and canon == gd:
        # Compiled before and dropped (a registration changed the epoch, a class gained a
        # hook): the new variant returns the very GraphDef the old one did, so what was
        # made from it (StateMaps and their tables, sg.jit's jax.jit cache keyed by it,
        # write-back plans) is met by identity, not compared whole on every call.
        key = gd = canon
    try:
        f = codegen.build("flatten", key, max_steps=CONFIG.max_steps, disabled=_disabled_guards,
                          outline_min=CONFIG.outline_min)
        u = codegen.build("update", key, max_steps=CONFIG.max_steps, plan=f.plan, disabled=_disabled_guards)
    except codegen.Declined as e:
        if e.reason.startswith("structure too large"):
            _totals["declined_too_large"] += 1
        _decline(entry, key, stats, e.reason)
        return None
    except Exception as e:  # a bug or a hostile object: never an error for the user
        _compile_failed(entry, key, stats, e)
        return None
    stats.compile_seconds += f.seconds + u.seconds
    assert isinstance(f.plan, codegen.FlattenPlan)
    cls = Variant if key is gd else WeakVariant
    return cls(key, gd, f.fn, u.fn, stats, {"flatten": f.source, "update": u.source}, f.plan, links)


def _decline(entry: TypeEntry, gd: GraphDef, stats: StructureStats, reason: str) -> None:
    stats.declined = reason
    _totals["declined"] += 1
    entry.declined[gd] = reason
    if len(entry.declined) > _BOUND:
        entry.declined.pop(next(iter(entry.declined)))


def _compile_failed(entry: TypeEntry, gd: GraphDef, stats: StructureStats, e: BaseException) -> None:
    _totals["compile_failures"] += 1
    warnings.warn(
        f"specgraph could not specialize a {gd.type.__qualname__} structure "
        f"({type(e).__name__}: {e}); the generic walker will serve it",
        RuntimeWarning,
        stacklevel=4,
    )
    _decline(entry, gd, stats, f"{type(e).__name__}: {e}")


def collect(node: Any) -> Walk:
    """Objects by index and values by slot (what states(), nodes() and iter_* need): from
    a specialized collect function when a variant matches, else the reference walker."""
    entry = _types.get(type(node)) if CONFIG.enabled else None
    if entry is not None:
        for var in entry.variants:
            f = var.collect
            if f is None:
                f = _compile_collect(var)
            r = f(node)
            if type(r) is tuple:
                var.stats.walk_hits += 1
                return Walk(var.graphdef, r[1], r[0], var.links, var.paths)
            var.stats.misses[r] += 1
    return walk_generic(node, entry)


def walk_generic(node: Any, entry: TypeEntry | None) -> Walk:
    """The reference walk of ``node``, counted toward specializing its structure (after
    no variant of ``entry``, its type's, matched it)."""
    w = walk(node)
    _totals["generic_walks"] += 1
    if CONFIG.enabled:
        _observe(type(node), w, entry)
    return w


def _refuse(root: Any) -> str:
    return "error"


def _compile_collect(var: Variant) -> Any:
    with LOCK:
        if var.collect is None:
            try:
                built = codegen.build("collect", var.key, max_steps=CONFIG.max_steps, plan=var.plan,
                                      disabled=_disabled_guards)
                var.collect = built.fn
                var.sources["collect"] = built.source
            except Exception as e:  # never an error for the user: the generic walker serves it
                _totals["compile_failures"] += 1
                warnings.warn(f"specgraph could not specialize a walk of {var.key.type.__qualname__} "
                              f"({type(e).__name__}: {e})", RuntimeWarning, stacklevel=4)
                var.collect = _refuse
        return var.collect


# -- unflatten --------------------------------------------------------------------


def unflatten(graphdef: GraphDef[_Root], state: Any) -> _Root:
    """Build a fresh graph from ``graphdef`` and its values.

    ``state``: a ``StateMap``, a mapping of path tuples to values, or a nested
    dict of that shape. Every path must be given, and no other.
    """
    # The common case first: the StateMap flatten returned with this GraphDef, whose
    # unflatten is already specialized.
    if type(graphdef) is GraphDef and type(state) is StateMap:
        rt = graphdef._rt
        if rt is not None and state._table is graphdef.pathtable and rt.epoch == _EPOCH[0] \
                and rt.fn is not None and CONFIG.enabled:
            out = rt.fn(state._values, rt.statics)
            if out is not MISS:
                rt.stats.unflatten_hits += 1
                return out
            return _unflatten_missed(graphdef, rt, state._values)
    return unflatten_states(graphdef, (state,))


def unflatten_states(graphdef: GraphDef[_Root], states: tuple[Any, ...]) -> _Root:
    if type(graphdef) is not GraphDef:
        raise TypeError(f"expected a GraphDef first, got {type(graphdef).__qualname__}")
    values = resolve_all(graphdef.pathtable, states)
    if CONFIG.enabled:
        rt = graphdef._rt
        if rt is None or rt.epoch != _EPOCH[0]:
            rt = _unflatten_fn(graphdef)
        if rt is not None and rt.fn is not None:
            out = rt.fn(values, rt.statics)
            if out is not MISS:
                rt.stats.unflatten_hits += 1
                return out
            return _unflatten_missed(graphdef, rt, values)
    _totals["generic_unflattens"] += 1
    return build(graphdef, values)


def _unflatten_missed(gd: GraphDef, rt: UnflattenEntry, values: list[Any]) -> Any:
    """A specialized unflatten whose class guard failed (a class gained a hook the code
    relies on it lacking): count it, drop it so the next calls compile again from the
    classes as they are now, and build with the reference walker."""
    rt.stats.misses["class"] += 1
    fn = rt.fn
    with LOCK:
        compiled = _unflat.get(gd)
        if compiled is not None and compiled.fn is fn:
            del _unflat[gd]
            codegen.forget(fn)
    object.__setattr__(gd, "_rt", None)
    _totals["generic_unflattens"] += 1
    return build(gd, values)


def _unflatten_fn(gd: GraphDef) -> UnflattenEntry | None:
    """The unflatten entry of ``gd`` (its ``_rt``) once decided.

    The function is shared by equal GraphDefs; the entry's ``statics`` are this
    GraphDef's own objects (equal GraphDefs may hold equal but distinct ones).

    ``None`` (the generic walker) when ``gd`` cannot key a cache: a static whose
    ``__hash__`` or ``__eq__`` raises.
    """
    try:
        return _unflatten_entry(gd)
    except Warning:
        raise
    except Exception:
        return None


def _unflatten_entry(gd: GraphDef) -> UnflattenEntry | None:
    hash(gd)
    epoch = reg.epoch_cell()[0]
    if _unflat_epoch[0] != epoch:  # a registration may change how nodes are rebuilt
        with LOCK:
            _unflat.clear()
            _unflat_epoch[0] = epoch
    if gd in _unflat:
        rt = _unflatten_rt(gd, epoch, _unflat[gd], _stats_for(gd))
        object.__setattr__(gd, "_rt", rt)
        return rt
    _drop_dead()
    key = unflatten_key(gd)
    if key is None:  # a static reaches user data and cannot be held weakly: never cached
        rt = UnflattenEntry(epoch, None, StructureStats(), ())
        object.__setattr__(gd, "_rt", rt)
        return rt
    with LOCK:
        n = _unflat_seen.get(gd, 0) + 1
        if n <= CONFIG.threshold:
            _unflat_seen[key] = n
            if len(_unflat_seen) > _BOUND:
                _unflat_seen.pop(next(iter(_unflat_seen)))
            return None
        _unflat_seen.pop(gd, None)
        stats = _stats_for(gd, key)
        compiled = None
        try:
            compiled = codegen.build("unflatten", key, max_steps=CONFIG.max_steps, disabled=_disabled_guards,
                                     outline_min=CONFIG.outline_min)
            stats.compile_seconds += compiled.seconds
        except codegen.Declined as e:
            stats.declined = e.reason
            _totals["unflatten_declined"] += 1
        except Exception as e:
            _totals["compile_failures"] += 1
            warnings.warn(
                f"specgraph could not specialize unflatten of a {gd.type.__qualname__} structure "
                f"({type(e).__name__}: {e}); the generic walker will serve it",
                RuntimeWarning,
                stacklevel=5,
            )
        _unflat[key] = compiled
        if len(_unflat) > 4 * _BOUND:
            dropped = _unflat.pop(next(iter(_unflat)))
            if dropped is not None:
                codegen.forget(dropped.fn)
        rt = _unflatten_rt(gd, epoch, compiled, stats)
        object.__setattr__(gd, "_rt", rt)
        return rt


def unflatten_key(gd: GraphDef) -> GraphDef | None:
    """``cache_key(gd)`` for the unflatten: ``gd`` itself when the structure's counters
    were made under this very GraphDef, whose cache key was then ``gd`` (no static reaching
    user data). The flatten that returned ``gd`` found so (a specialized flatten returns its
    variant's key): not asked again, as reaches_user_data of every static and metadata is
    most of a cache_key (NNX MLP-10 000: 94 ms of CPU, more than planning the unflatten)."""
    with LOCK:
        known = _stats.get(gd)
    return gd if known is not None and known.key is gd else cache_key(gd)


def _unflatten_rt(gd: GraphDef, epoch: int, compiled: codegen.Built | None,
                  stats: StructureStats) -> UnflattenEntry:
    if compiled is None:
        return UnflattenEntry(epoch, None, stats, ())
    assert isinstance(compiled.plan, codegen.UnflattenPlan)
    return UnflattenEntry(epoch, compiled.fn, stats, compiled.plan.statics.read(gd))


# -- update -----------------------------------------------------------------------


def update(node: Any, states: tuple[Any, ...]) -> None:
    entry = _types.get(type(node)) if CONFIG.enabled else None
    refused = False
    if entry is not None and len(states) == 1 and type(states[0]) is StateMap:
        sm = states[0]
        table = sm._table
        for var in entry.variants:
            if var.table is table or var.table == table:
                r = var.update(node, sm._values)
                if r is None:
                    var.stats.update_hits += 1
                    return
                var.stats.misses[r] += 1
                refused = True
    if entry is not None and not refused and states and all(type(s) is StateMap for s in states):
        # Parts of one structure's values (split, StateMap.split): by their slots, no path lookup.
        done = derived.update_parts(entry, node, states)
        if done:
            return
        refused = done is False
    if refused:  # the same guards would refuse a specialized walk: go to the reference
        w = walk(node)
        if CONFIG.enabled:
            _observe(type(node), w, entry)
    else:
        # A partial update (a split part, a dict, ...): the reference writes, on a walk that
        # is itself specialized when a variant matches (its path index is built once).
        w = collect(node)
    _totals["generic_updates"] += 1
    if states:
        apply_update(node, w, resolve_partial(w.graphdef.pathtable, states))


# -- control ----------------------------------------------------------------------


@contextmanager
def specialization(enabled: bool = True) -> Iterator[None]:
    """Turn the specializer on or off (process-wide) for the ``with`` block."""
    previous = CONFIG.enabled
    CONFIG.enabled = bool(enabled)
    try:
        yield
    finally:
        CONFIG.enabled = previous


def configure(*, threshold: int | None = None, max_variants: int | None = None,
              max_steps: int | None = None, enabled: bool | None = None,
              outline_min: int | None = None) -> None:
    """Set the specializer's knobs; ``clear_cache()`` applies them to known types.

    ``outline_min``: a repeated substructure (a ``Linear``, a block) met at least that many
    times in one structure is generated once, as a function called per occurrence; rarer
    ones are unrolled into straight-line code (0: unroll everything).
    """
    if threshold is not None:
        CONFIG.threshold = max(1, int(threshold))
    if max_variants is not None:
        CONFIG.max_variants = max(1, int(max_variants))
    if max_steps is not None:
        CONFIG.max_steps = int(max_steps)
    if enabled is not None:
        CONFIG.enabled = bool(enabled)
    if outline_min is not None:
        CONFIG.outline_min = max(0, int(outline_min))


def _forget_variants(variants: tuple[Variant, ...]) -> None:
    for var in variants:
        codegen.forget(var.flatten, var.update, var.collect, *(sel.fn for sel in var.derived.values()))


def _stats_for(gd: GraphDef, key: GraphDef | None = None) -> StructureStats:
    """The counters of structure ``gd``, created on first use under its cache ``key``
    (made here when not given; the table is bounded)."""
    with LOCK:  # cache_info iterates _stats under the lock
        st = _stats.get(gd)
        if st is None:
            key = cache_key(gd) if key is None else key
            if key is None:
                return StructureStats()  # never cached: counted nowhere
            if len(_stats) >= 4 * _BOUND:
                old = _stats.pop(next(iter(_stats)))
                old.key = None  # (kept for its counters, not its structure)
                _evicted.append(old)
                if len(_evicted) > 4 * _BOUND:
                    _retired.absorb(_evicted.popleft())
            st = _stats[key] = StructureStats(key=key)
        return st


def _drop_dead() -> None:
    """Drop from every cache the structures one of whose weakly held statics died: they
    can never match again (their counters go on counting in cache_info)."""
    dead = take_dead()
    if not dead:
        return
    with LOCK:
        for key in dead:
            for entry in _types.values():
                gone = tuple(v for v in entry.variants if v.key is key)
                if gone:
                    entry.variants = tuple(v for v in entry.variants if v.key is not key)
                    _forget_variants(gone)
                entry.seen.pop(key, None)
                entry.declined.pop(key, None)
            st = _stats.pop(key, None)
            if st is not None:
                _retired.absorb(st)
            compiled = _unflat.pop(key, None)
            if compiled is not None:
                codegen.forget(compiled.fn)
            _unflat_seen.pop(key, None)


def clear_cache() -> None:
    """Drop every specialization and counter (and invalidate by registry epoch)."""
    with LOCK:
        codegen.forget_all()
        _types.clear()
        _stats.clear()
        _unflat.clear()
        _unflat_seen.clear()
        take_dead()
        _retired.__init__()  # type: ignore[misc]
        _evicted.clear()
        for k in _totals:
            _totals[k] = 0
        reg.clear_classification_cache()


def cache_info() -> dict[str, Any]:
    """Counters: hits, guard misses by guard kind, fallbacks, compiled variants, ..."""
    _drop_dead()
    with LOCK:
        misses: dict[str, int] = {}
        hits = update_hits = unflatten_hits = walk_hits = fallbacks = 0
        compile_seconds = 0.0
        for st in (*_stats.values(), *_evicted, _retired):
            hits += st.hits
            update_hits += st.update_hits
            unflatten_hits += st.unflatten_hits
            walk_hits += st.walk_hits
            fallbacks += st.fallbacks
            compile_seconds += st.compile_seconds
            for k, v in st.misses.items():
                misses[k] = misses.get(k, 0) + v
        return {
            "enabled": CONFIG.enabled,
            "hits": hits,
            "update_hits": update_hits,
            "unflatten_hits": unflatten_hits,
            "walk_hits": walk_hits,
            "guard_misses": misses,
            "fallbacks": fallbacks,
            "compiled_variants": sum(len(e.variants) for e in _types.values()),
            "compiled_unflattens": sum(1 for c in _unflat.values() if c is not None),
            "compile_seconds": compile_seconds,
            "megamorphic_types": [t.__qualname__ for t, e in _types.items() if e.megamorphic],
            **{k: v for k, v in _totals.items() if k != "megamorphic_types"},
            **codegen.shared_info(),  # outlined units shared across structures
        }


def structure_stats(gd: GraphDef) -> StructureStats | None:
    """The counters of one structure (``None`` if unseen, or if it cannot be a cache key);
    past the bound of the table, those its compiled variant still counts into."""
    try:
        st = _stats.get(gd)
    except TypeError:  # an unhashable static: never cached, so no counters
        return None
    if st is None:
        var = variant_for(gd)
        st = var.stats if var is not None else None
    return st


def variant_for(gd: GraphDef) -> Variant | None:
    entry = _types.get(gd.type)
    if entry is None:
        return None
    for var in entry.variants:
        if var.key == gd:
            return var
    return None


def _set_disabled_guards(kinds: frozenset[str]) -> None:
    """Test-only: generate code without the given guard kinds (then clear caches)."""
    global _disabled_guards
    _disabled_guards = frozenset(kinds)
    clear_cache()

"""Benchmark shapes, built the same way for specgraph and for each peer.

Every shape exists once per *family* (one family per library):

* ``specgraph``  -- ``sg.Node`` subclasses holding ``sg.Param``
* ``brainstate`` -- ``brainstate.graph.Node`` subclasses holding ``brainstate.ParamState``
* ``nnx``        -- ``flax.nnx.Module`` subclasses holding ``nnx.Param``
* ``equinox``    -- ``eqx.Module`` dataclasses with ``jax.Array`` fields
* ``jax``        -- the equivalent nested dicts / lists of arrays (plain pytree)

Peers are optional: a family whose library does not import is simply absent from
:data:`FAMILIES`.  All families of one shape share the very same array objects
(``_array`` is memoized), so they differ only in their containers.

Notes on equivalence:

* Lists of sub-modules are plain Python lists everywhere (inline pytrees).  Flax NNX
  0.12 refuses a plain list of modules in a module attribute unless it is marked
  ``nnx.data(...)``; we use that (``nnx.List`` would add one more graph node per list).
* Tied weights: specgraph / BrainState / NNX share one state *object* (counted once).
  Pytrees have no identity, so the nested dict and the Equinox module hold the same
  array twice (one leaf more than the graph libraries have states).
* Static ``in_features`` / ``out_features`` are statics in the graph libraries and
  ``eqx.field(static=True)`` in Equinox; the nested dict carries arrays only.
* Deep chains are built bottom-up (no recursion) so 10 000 levels can be built.
"""

from __future__ import annotations

import functools
import zlib
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import specgraph as sg

__all__ = [
    "FAMILIES",
    "SHAPES",
    "build",
    "build_counted_mlp",
    "build_deepchain",
    "build_mlp",
    "build_tied",
    "build_tiny",
    "build_transformer",
    "build_widebag",
]


@functools.cache
def _array(shape: tuple[int, ...], key: Any) -> jax.Array:
    """A float32 array for ``(shape, key)``, the same object for every family."""
    seed = zlib.crc32(repr((shape, key)).encode())
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.standard_normal(shape, dtype=np.float32))


def _lin_arrays(i: int, o: int, key: Any) -> tuple[jax.Array, jax.Array]:
    return _array((i, o), (key, "w")), _array((o,), (key, "b"))


# --------------------------------------------------------------------------------------
# A family: how one library spells each building block.  Shapes are then written once.
# --------------------------------------------------------------------------------------


class Family:
    """Constructors of one library.  Subclasses fill in the building blocks."""

    name = "?"

    def linear(self, i: int, o: int, key: Any, w: Any = None) -> Any:
        raise NotImplementedError

    def mlp(self, layers: list[Any]) -> Any:
        raise NotImplementedError

    def widebag(self, arrays: dict[str, jax.Array]) -> Any:
        raise NotImplementedError

    def chain(self, p: jax.Array, child: Any) -> Any:
        raise NotImplementedError

    def tied(self, enc: Any, dec: Any) -> Any:
        raise NotImplementedError

    def layernorm(self, d: int, key: Any) -> Any:
        raise NotImplementedError

    def attention(self, q: Any, k: Any, v: Any, o: Any) -> Any:
        raise NotImplementedError

    def feedforward(self, fc1: Any, fc2: Any) -> Any:
        raise NotImplementedError

    def block(self, attn: Any, ff: Any, ln1: Any, ln2: Any) -> Any:
        raise NotImplementedError

    def transformer(self, embed: jax.Array, blocks: list[Any], ln_f: Any) -> Any:
        raise NotImplementedError

    def shared_weight(self, lin: Any) -> Any:
        """The weight handle of ``lin`` to pass as ``w=`` to tie another Linear."""
        raise NotImplementedError

    def counted_linear(self, i: int, o: int, key: Any) -> Any:
        """A ``Linear`` whose ``w`` and ``b`` are parameters and whose ``n`` is a non-parameter
        state (a running statistic): what a filtered split tells apart."""
        raise NotImplementedError


# ------------------------------------------------------------------ specgraph ---------


class SgLinear(sg.Node):
    def __init__(self, in_features: int, out_features: int, w: Any, b: Any) -> None:
        self.in_features = in_features
        self.out_features = out_features
        self.w = w if isinstance(w, sg.State) else sg.Param(w)
        self.b = sg.Param(b)


class SgCountedLinear(sg.Node):
    def __init__(self, in_features: int, out_features: int, w: Any, b: Any, n: Any) -> None:
        self.in_features = in_features
        self.out_features = out_features
        self.w = sg.Param(w)
        self.b = sg.Param(b)
        self.n = sg.State(n)


class SgMLP(sg.Node):
    def __init__(self, layers: list[SgLinear]) -> None:
        self.layers = layers


class SgWideBag(sg.Node):
    def __init__(self, arrays: dict[str, jax.Array]) -> None:
        for k, v in arrays.items():
            setattr(self, k, sg.Param(v))


class SgChain(sg.Node):
    def __init__(self, p: jax.Array, child: Any) -> None:
        self.p = sg.Param(p)
        self.child = child


class SgTied(sg.Node):
    def __init__(self, encoder: SgLinear, decoder: SgLinear) -> None:
        self.encoder = encoder
        self.decoder = decoder


class SgLayerNorm(sg.Node):
    def __init__(self, dim: int, scale: jax.Array, bias: jax.Array) -> None:
        self.dim = dim
        self.scale = sg.Param(scale)
        self.bias = sg.Param(bias)


class SgAttention(sg.Node):
    def __init__(self, q: SgLinear, k: SgLinear, v: SgLinear, o: SgLinear) -> None:
        self.q, self.k, self.v, self.o = q, k, v, o


class SgFeedForward(sg.Node):
    def __init__(self, fc1: SgLinear, fc2: SgLinear) -> None:
        self.fc1, self.fc2 = fc1, fc2


class SgBlock(sg.Node):
    def __init__(self, attn: Any, ff: Any, ln1: Any, ln2: Any) -> None:
        self.attn, self.ff, self.ln1, self.ln2 = attn, ff, ln1, ln2


class SgTransformer(sg.Node):
    def __init__(self, embed: jax.Array, blocks: list[Any], ln_f: Any) -> None:
        self.embed = sg.Param(embed)
        self.blocks = blocks
        self.ln_f = ln_f


class SpecgraphFamily(Family):
    name = "specgraph"

    def linear(self, i, o, key, w=None):
        aw, ab = _lin_arrays(i, o, key)
        return SgLinear(i, o, aw if w is None else w, ab)

    def counted_linear(self, i, o, key):
        aw, ab = _lin_arrays(i, o, key)
        return SgCountedLinear(i, o, aw, ab, _array((o,), (key, "n")))

    def shared_weight(self, lin):
        return lin.w

    def mlp(self, layers):
        return SgMLP(layers)

    def widebag(self, arrays):
        return SgWideBag(arrays)

    def chain(self, p, child):
        return SgChain(p, child)

    def tied(self, enc, dec):
        return SgTied(enc, dec)

    def layernorm(self, d, key):
        return SgLayerNorm(d, _array((d,), (key, "scale")), _array((d,), (key, "bias")))

    def attention(self, q, k, v, o):
        return SgAttention(q, k, v, o)

    def feedforward(self, fc1, fc2):
        return SgFeedForward(fc1, fc2)

    def block(self, attn, ff, ln1, ln2):
        return SgBlock(attn, ff, ln1, ln2)

    def transformer(self, embed, blocks, ln_f):
        return SgTransformer(embed, blocks, ln_f)


FAMILIES: dict[str, Family] = {"specgraph": SpecgraphFamily()}


# ------------------------------------------------------------------ jax.tree_util -----


class JaxFamily(Family):
    """Nested dicts / lists of arrays: what ``jax.tree_util`` flattens in C++."""

    name = "jax"

    def linear(self, i, o, key, w=None):
        aw, ab = _lin_arrays(i, o, key)
        return {"b": ab, "w": aw if w is None else w}

    def counted_linear(self, i, o, key):
        aw, ab = _lin_arrays(i, o, key)
        return {"b": ab, "n": _array((o,), (key, "n")), "w": aw}

    def shared_weight(self, lin):
        return lin["w"]

    def mlp(self, layers):
        return {"layers": layers}

    def widebag(self, arrays):
        return dict(arrays)

    def chain(self, p, child):
        return {"child": child, "p": p}

    def tied(self, enc, dec):
        return {"decoder": dec, "encoder": enc}

    def layernorm(self, d, key):
        return {"bias": _array((d,), (key, "bias")), "scale": _array((d,), (key, "scale"))}

    def attention(self, q, k, v, o):
        return {"k": k, "o": o, "q": q, "v": v}

    def feedforward(self, fc1, fc2):
        return {"fc1": fc1, "fc2": fc2}

    def block(self, attn, ff, ln1, ln2):
        return {"attn": attn, "ff": ff, "ln1": ln1, "ln2": ln2}

    def transformer(self, embed, blocks, ln_f):
        return {"blocks": blocks, "embed": embed, "ln_f": ln_f}


FAMILIES["jax"] = JaxFamily()


# ------------------------------------------------------------------ BrainState --------

try:
    import brainstate as _bst
except ImportError:  # pragma: no cover - optional peer
    _bst = None

if _bst is not None:
    _BNode = _bst.graph.Node
    _BParam = _bst.ParamState

    class BsLinear(_BNode):
        def __init__(self, in_features, out_features, w, b):
            self.in_features = in_features
            self.out_features = out_features
            self.w = w if isinstance(w, _bst.State) else _BParam(w)
            self.b = _BParam(b)

    class BsCountedLinear(_BNode):
        def __init__(self, in_features, out_features, w, b, n):
            self.in_features = in_features
            self.out_features = out_features
            self.w = _BParam(w)
            self.b = _BParam(b)
            self.n = _bst.State(n)

    class BsMLP(_BNode):
        def __init__(self, layers):
            self.layers = layers

    class BsWideBag(_BNode):
        def __init__(self, arrays):
            for k, v in arrays.items():
                setattr(self, k, _BParam(v))

    class BsChain(_BNode):
        def __init__(self, p, child):
            self.p = _BParam(p)
            self.child = child

    class BsTied(_BNode):
        def __init__(self, encoder, decoder):
            self.encoder = encoder
            self.decoder = decoder

    class BsLayerNorm(_BNode):
        def __init__(self, dim, scale, bias):
            self.dim = dim
            self.scale = _BParam(scale)
            self.bias = _BParam(bias)

    class BsAttention(_BNode):
        def __init__(self, q, k, v, o):
            self.q, self.k, self.v, self.o = q, k, v, o

    class BsFeedForward(_BNode):
        def __init__(self, fc1, fc2):
            self.fc1, self.fc2 = fc1, fc2

    class BsBlock(_BNode):
        def __init__(self, attn, ff, ln1, ln2):
            self.attn, self.ff, self.ln1, self.ln2 = attn, ff, ln1, ln2

    class BsTransformer(_BNode):
        def __init__(self, embed, blocks, ln_f):
            self.embed = _BParam(embed)
            self.blocks = blocks
            self.ln_f = ln_f

    class BrainStateFamily(Family):
        name = "brainstate"

        def linear(self, i, o, key, w=None):
            aw, ab = _lin_arrays(i, o, key)
            return BsLinear(i, o, aw if w is None else w, ab)

        def counted_linear(self, i, o, key):
            aw, ab = _lin_arrays(i, o, key)
            return BsCountedLinear(i, o, aw, ab, _array((o,), (key, "n")))

        def shared_weight(self, lin):
            return lin.w

        def mlp(self, layers):
            return BsMLP(layers)

        def widebag(self, arrays):
            return BsWideBag(arrays)

        def chain(self, p, child):
            return BsChain(p, child)

        def tied(self, enc, dec):
            return BsTied(enc, dec)

        def layernorm(self, d, key):
            return BsLayerNorm(d, _array((d,), (key, "scale")), _array((d,), (key, "bias")))

        def attention(self, q, k, v, o):
            return BsAttention(q, k, v, o)

        def feedforward(self, fc1, fc2):
            return BsFeedForward(fc1, fc2)

        def block(self, attn, ff, ln1, ln2):
            return BsBlock(attn, ff, ln1, ln2)

        def transformer(self, embed, blocks, ln_f):
            return BsTransformer(embed, blocks, ln_f)

    FAMILIES["brainstate"] = BrainStateFamily()


# ------------------------------------------------------------------ Flax NNX ----------

try:
    from flax import nnx as _nnx
except ImportError:  # pragma: no cover - optional peer
    _nnx = None

if _nnx is not None:
    _NParam = _nnx.Param
    # flax >= 0.12 wants lists of modules marked as data; older versions have no nnx.data.
    _ndata: Callable[[Any], Any] = getattr(_nnx, "data", lambda x: x)

    class NnxLinear(_nnx.Module):
        def __init__(self, in_features, out_features, w, b):
            self.in_features = in_features
            self.out_features = out_features
            self.w = w if isinstance(w, _nnx.Variable) else _NParam(w)
            self.b = _NParam(b)

    class NnxCountedLinear(_nnx.Module):
        def __init__(self, in_features, out_features, w, b, n):
            self.in_features = in_features
            self.out_features = out_features
            self.w = _NParam(w)
            self.b = _NParam(b)
            self.n = _nnx.BatchStat(n)

    class NnxMLP(_nnx.Module):
        def __init__(self, layers):
            self.layers = _ndata(layers)

    class NnxWideBag(_nnx.Module):
        def __init__(self, arrays):
            for k, v in arrays.items():
                setattr(self, k, _NParam(v))

    class NnxChain(_nnx.Module):
        def __init__(self, p, child):
            self.p = _NParam(p)
            self.child = child

    class NnxTied(_nnx.Module):
        def __init__(self, encoder, decoder):
            self.encoder = encoder
            self.decoder = decoder

    class NnxLayerNorm(_nnx.Module):
        def __init__(self, dim, scale, bias):
            self.dim = dim
            self.scale = _NParam(scale)
            self.bias = _NParam(bias)

    class NnxAttention(_nnx.Module):
        def __init__(self, q, k, v, o):
            self.q, self.k, self.v, self.o = q, k, v, o

    class NnxFeedForward(_nnx.Module):
        def __init__(self, fc1, fc2):
            self.fc1, self.fc2 = fc1, fc2

    class NnxBlock(_nnx.Module):
        def __init__(self, attn, ff, ln1, ln2):
            self.attn, self.ff, self.ln1, self.ln2 = attn, ff, ln1, ln2

    class NnxTransformer(_nnx.Module):
        def __init__(self, embed, blocks, ln_f):
            self.embed = _NParam(embed)
            self.blocks = _ndata(blocks)
            self.ln_f = ln_f

    class NnxFamily(Family):
        name = "nnx"

        def linear(self, i, o, key, w=None):
            aw, ab = _lin_arrays(i, o, key)
            return NnxLinear(i, o, aw if w is None else w, ab)

        def counted_linear(self, i, o, key):
            aw, ab = _lin_arrays(i, o, key)
            return NnxCountedLinear(i, o, aw, ab, _array((o,), (key, "n")))

        def shared_weight(self, lin):
            return lin.w

        def mlp(self, layers):
            return NnxMLP(layers)

        def widebag(self, arrays):
            return NnxWideBag(arrays)

        def chain(self, p, child):
            return NnxChain(p, child)

        def tied(self, enc, dec):
            return NnxTied(enc, dec)

        def layernorm(self, d, key):
            return NnxLayerNorm(d, _array((d,), (key, "scale")), _array((d,), (key, "bias")))

        def attention(self, q, k, v, o):
            return NnxAttention(q, k, v, o)

        def feedforward(self, fc1, fc2):
            return NnxFeedForward(fc1, fc2)

        def block(self, attn, ff, ln1, ln2):
            return NnxBlock(attn, ff, ln1, ln2)

        def transformer(self, embed, blocks, ln_f):
            return NnxTransformer(embed, blocks, ln_f)

    FAMILIES["nnx"] = NnxFamily()


# ------------------------------------------------------------------ Equinox -----------

try:
    import equinox as _eqx
except ImportError:  # pragma: no cover - optional peer
    _eqx = None

if _eqx is not None:

    class EqxLinear(_eqx.Module):
        w: jax.Array
        b: jax.Array
        in_features: int = _eqx.field(static=True)
        out_features: int = _eqx.field(static=True)

    class EqxCountedLinear(_eqx.Module):
        w: jax.Array
        b: jax.Array
        n: jax.Array
        in_features: int = _eqx.field(static=True)
        out_features: int = _eqx.field(static=True)

    class EqxMLP(_eqx.Module):
        layers: list

    class EqxChain(_eqx.Module):
        p: jax.Array
        child: Any

    class EqxTied(_eqx.Module):
        encoder: EqxLinear
        decoder: EqxLinear

    class EqxLayerNorm(_eqx.Module):
        scale: jax.Array
        bias: jax.Array
        dim: int = _eqx.field(static=True)

    class EqxAttention(_eqx.Module):
        q: EqxLinear
        k: EqxLinear
        v: EqxLinear
        o: EqxLinear

    class EqxFeedForward(_eqx.Module):
        fc1: EqxLinear
        fc2: EqxLinear

    class EqxBlock(_eqx.Module):
        attn: EqxAttention
        ff: EqxFeedForward
        ln1: EqxLayerNorm
        ln2: EqxLayerNorm

    class EqxTransformer(_eqx.Module):
        embed: jax.Array
        blocks: list
        ln_f: EqxLayerNorm

    @functools.cache
    def _eqx_widebag_cls(names: tuple[str, ...]) -> type:
        ns = {"__annotations__": dict.fromkeys(names, jax.Array), "__module__": __name__}
        return type(f"EqxWideBag{len(names)}", (_eqx.Module,), ns)

    class EquinoxFamily(Family):
        name = "equinox"

        def linear(self, i, o, key, w=None):
            aw, ab = _lin_arrays(i, o, key)
            return EqxLinear(aw if w is None else w, ab, i, o)

        def counted_linear(self, i, o, key):
            aw, ab = _lin_arrays(i, o, key)
            return EqxCountedLinear(aw, ab, _array((o,), (key, "n")), i, o)

        def shared_weight(self, lin):
            return lin.w

        def mlp(self, layers):
            return EqxMLP(layers)

        def widebag(self, arrays):
            return _eqx_widebag_cls(tuple(arrays))(**arrays)

        def chain(self, p, child):
            return EqxChain(p, child)

        def tied(self, enc, dec):
            return EqxTied(enc, dec)

        def layernorm(self, d, key):
            return EqxLayerNorm(_array((d,), (key, "scale")), _array((d,), (key, "bias")), d)

        def attention(self, q, k, v, o):
            return EqxAttention(q, k, v, o)

        def feedforward(self, fc1, fc2):
            return EqxFeedForward(fc1, fc2)

        def block(self, attn, ff, ln1, ln2):
            return EqxBlock(attn, ff, ln1, ln2)

        def transformer(self, embed, blocks, ln_f):
            return EqxTransformer(embed, blocks, ln_f)

    FAMILIES["equinox"] = EquinoxFamily()


# --------------------------------------------------------------------------------------
# Shapes, written once against the Family interface.
# --------------------------------------------------------------------------------------


def build_tiny(fam: Family, width: int = 64) -> Any:
    """One ``Linear``: 1 node, 2 states."""
    return fam.linear(width, width, "tiny")


def build_mlp(fam: Family, depth: int, width: int = 64) -> Any:
    """``MLP`` holding a list of ``depth`` ``Linear`` layers: depth+1 nodes, 2*depth states."""
    return fam.mlp([fam.linear(width, width, ("mlp", i)) for i in range(depth)])


def build_counted_mlp(fam: Family, depth: int, width: int = 64) -> Any:
    """``MLP`` of ``depth`` counted ``Linear`` layers (``w``, ``b`` parameters, ``n`` a
    non-parameter state): depth+1 nodes, 3*depth states; issue 15's filtered-operation model."""
    return fam.mlp([fam.counted_linear(width, width, ("cmlp", i)) for i in range(depth)])


def build_widebag(fam: Family, n: int = 128) -> Any:
    """One node with ``n`` Params as attributes ``p000``, ``p001``, ...: 1 node, n states."""
    digits = max(3, len(str(n - 1)))
    return fam.widebag({f"p{i:0{digits}d}": _array((4,), ("bag", i)) for i in range(n)})


def build_deepchain(fam: Family, n: int = 64) -> Any:
    """A chain of ``n`` nodes, each with a Param ``p`` and a ``child`` (None at the end)."""
    node: Any = None
    for i in reversed(range(n)):
        node = fam.chain(_array((4,), ("chain", i)), node)
    return node


def build_tied(fam: Family, width: int = 64) -> Any:
    """Encoder / decoder ``Linear`` sharing one weight: 3 nodes, 3 states (4 pytree leaves)."""
    enc = fam.linear(width, width, "tied-enc")
    dec = fam.linear(width, width, "tied-dec", w=fam.shared_weight(enc))
    return fam.tied(enc, dec)


def build_transformer(fam: Family, n_blocks: int = 12, d: int = 64, vocab: int = 128) -> Any:
    """Transformer-like stack: embed + n_blocks x (attn q,k,v,o; ff fc1,fc2; ln1, ln2) + ln_f.

    With 12 blocks: 1 + 12*16 + 2 = 195 states, 1 + 12*11 + 1 = 134 nodes.
    """
    blocks = []
    for i in range(n_blocks):
        attn = fam.attention(*(fam.linear(d, d, ("attn", i, n)) for n in "qkvo"))
        ff = fam.feedforward(fam.linear(d, 4 * d, ("fc1", i)), fam.linear(4 * d, d, ("fc2", i)))
        blocks.append(fam.block(attn, ff, fam.layernorm(d, ("ln1", i)), fam.layernorm(d, ("ln2", i))))
    return fam.transformer(_array((vocab, d), "embed"), blocks, fam.layernorm(d, "ln_f"))


#: The benchmark shapes of the performance protocol: name -> builder(family).
SHAPES: dict[str, Callable[[Family], Any]] = {
    "tiny": build_tiny,
    "mlp8": functools.partial(build_mlp, depth=8, width=64),
    "mlp32": functools.partial(build_mlp, depth=32, width=64),
    "mlp32n": functools.partial(build_counted_mlp, depth=32, width=64),
    "widebag128": functools.partial(build_widebag, n=128),
    "deepchain64": functools.partial(build_deepchain, n=64),
    "tied": build_tied,
    "transformer12": functools.partial(build_transformer, n_blocks=12, d=64),
}


def build(shape: str, family: str) -> Any:
    """Build ``shape`` (a key of :data:`SHAPES`) for ``family`` (a key of :data:`FAMILIES`)."""
    return SHAPES[shape](FAMILIES[family])

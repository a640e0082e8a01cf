"""A member's KV cache: gpt-fast's column layout, and the attention masks of sliding layers.

``MemberBatch`` (``sequences``) keeps each member's rows in one transformers ``DynamicCache``
whose layers are ``ColumnLayer``s: each layer's columns live in a buffer with room to spare, so
a step writes its new columns in place instead of concatenating them to a copy of the whole
cache, and a forward over some rows writes and reads those rows only. A member with sliding
layers gets its masks from ``AttentionLayout``, built from each column's position id, so hole
columns (rolled-back ids, left padding) never hide real tokens from a window.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

__all__ = [
    "SUPPORTED_LAYERS",
    "AttentionLayout",
    "attention_layout",
    "cache_layers",
    "column_layer",
    "keep_layer_rows",
    "new_cache",
    "pad_left",
    "pad_time",
    "row_run",
    "stack_layers",
    "subsettable",
    "unsupported_layers",
]


class AttentionLayout:
    """A member's attention layout when some of its layers slide: the window, and the layer types
    its model takes masks for (None: one 4-D mask serves every layer)."""

    def __init__(self, window: int, types: frozenset[str] | None) -> None:
        self.window, self.types = window, types

    def masks(
        self, live: torch.Tensor, keys: torch.Tensor, queries: torch.Tensor, dtype: torch.dtype
    ) -> torch.Tensor | dict[str, torch.Tensor]:
        """Additive masks [B, 1, m, T] from live columns [B, T], their position ids [B, T] and the
        queries' position ids [B, m]: causal by position (holes hidden), and, for sliding layers,
        no key ``window`` or more positions behind its query."""
        k, q = keys[:, None, :], queries[:, :, None]  # [B, 1, T], [B, m, 1]
        causal = live.bool()[:, None, :] & (k <= q)  # [B, m, T]
        sliding = causal & (k > q - self.window)
        low = torch.finfo(dtype).min

        def additive(allowed: torch.Tensor) -> torch.Tensor:
            zero = torch.zeros((), dtype=dtype, device=allowed.device)
            return torch.where(allowed, zero, low)[:, None]  # [B, 1, m, T]

        if self.types is None:
            return additive(sliding)
        by_type = {"full_attention": causal, "sliding_attention": sliding}
        return {t: additive(by_type[t]) for t in self.types}


def attention_layout(model: Any) -> AttentionLayout | None:
    """The member's sliding window and layer types, or None when no layer slides (or a layer type
    other than full and sliding attention is present: the model's own masks then apply)."""
    config = _text_config(model)
    if config is None:
        return None
    window = getattr(config, "sliding_window", None)
    types = getattr(config, "layer_types", None)
    if not isinstance(window, int) or window <= 0:
        return None
    if types is None:  # e.g. Mistral: every layer slides, the model builds one mask
        return AttentionLayout(window, None)
    kinds = frozenset(types)
    if "sliding_attention" not in kinds or not kinds <= {"full_attention", "sliding_attention"}:
        return None
    return AttentionLayout(window, kinds)


#: The layer kinds (``config.layer_types``) a member may have: the engine's masks and caches
#: batch these exactly.
SUPPORTED_LAYERS = frozenset({"full_attention", "sliding_attention"})


def unsupported_layers(model: Any) -> list[str]:
    """The model's layer kinds the engine cannot batch exactly (chunked or linear attention,
    state-space layers...): their caches count columns, so a ragged batch's left padding and a
    rollback's holes would shift what each row sees (a tiny Llama-4 member with chunked layers,
    tried: its logits left a fresh forward's by up to 0.17 after rows took different ids)."""
    config = _text_config(model)
    types = getattr(config, "layer_types", None) or []
    return sorted(set(types) - SUPPORTED_LAYERS)


def _text_config(model: Any) -> Any:
    """The model's (decoder) text config, or None for a model without one."""
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "get_text_config"):
        config = config.get_text_config(decoder=True)
    return config


def new_cache(model: Any, attention: AttentionLayout | None) -> Any:
    """A cache of ``ColumnLayer``s for the first forward, or None (the model builds its own) when
    some layer is of a kind the masks here do not handle (e.g. chunked attention): those keep the
    model's own layers, run whole-batch and pay a copy per step."""
    from transformers import DynamicCache

    if attention is None and _special_layers(model):
        return None
    cache = DynamicCache()
    cache.layer_class_to_replicate = column_layer()  # layers are made on first update
    return cache


def _special_layers(model: Any) -> bool:
    """Whether the model declares layers other than full attention (sliding ones included; a
    member whose sliding layers are handled here has ``attention`` set and never asks)."""
    config = _text_config(model)
    if config is None:
        return False
    types = getattr(config, "layer_types", None) or []
    window = getattr(config, "sliding_window", None)
    return any(t != "full_attention" for t in types) or (isinstance(window, int) and window > 0)


@functools.cache
def column_layer() -> type[Any]:
    """The ``ColumnLayer`` class (built on first use: transformers loads only when a model does)."""
    from transformers.cache_utils import DynamicLayer

    class ColumnLayer(DynamicLayer):  # type: ignore[misc]
        """A cache layer whose columns live in a buffer with room to spare (gpt-fast's layout).

        ``DynamicLayer`` concatenates each step's columns to the whole cache, a copy of every
        row's every column per step and layer; here a step writes its m new columns in place
        and the buffer grows by half when full. With ``rows`` set, only those rows run: their
        new columns are written, the other rows' stay holes (zeros, masked out), and attention
        reads a copy of those rows (an index tensor), or a view where they are consecutive (a
        ``slice``: e.g. rows decoding beside newer ones being prefilled; a copy of 10 rows of
        600 columns cost Gemma-3 a third of a decoding step on a CPU). ``keys``/``values``
        are the live view [B, H, n, D]; assigning them (rows joining or leaving) replaces the
        buffer."""

        rows: torch.Tensor | slice | None = None

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self._k: torch.Tensor | None = None  # [B, H, room, D], keys in the first n_k
            self._v: torch.Tensor | None = None
            self._n_k = self._n_v = 0
            super().__init__(*args, **kwargs)

        @property
        def keys(self) -> torch.Tensor | None:
            return None if self._k is None else self._k[:, :, : self._n_k]

        @keys.setter
        def keys(self, t: torch.Tensor | None) -> None:
            self._k, self._n_k = t, _width(t)

        @property
        def values(self) -> torch.Tensor | None:
            return None if self._v is None else self._v[:, :, : self._n_v]

        @values.setter
        def values(self, t: torch.Tensor | None) -> None:
            self._v, self._n_v = t, _width(t)

        def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
            self.device, self.dtype = key_states.device, key_states.dtype
            b, h = key_states.shape[:2]
            self.keys = key_states.new_zeros(b, h, 0, key_states.shape[-1])
            self.values = value_states.new_zeros(b, h, 0, value_states.shape[-1])
            self.is_initialized = True

        def update(
            self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
        ) -> tuple[torch.Tensor, torch.Tensor]:
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            assert self._k is not None and self._v is not None
            n, m = self._n_k, key_states.shape[-2]
            assert self._n_v == n, "keys and values of different widths"
            if n + m > self._k.shape[-2]:
                room = _room(n, m)
                self._k, self._v = _with_room(self._k, n, room), _with_room(self._v, n, room)
            self._n_k = self._n_v = n + m
            if self.rows is None:
                self._k[:, :, n : n + m] = key_states
                self._v[:, :, n : n + m] = value_states
                return self._k[:, :, : n + m], self._v[:, :, : n + m]
            if isinstance(self.rows, slice):  # consecutive rows: views, nothing copied
                self._k[self.rows, :, n : n + m] = key_states
                self._v[self.rows, :, n : n + m] = value_states
                return self._k[self.rows, :, : n + m], self._v[self.rows, :, : n + m]
            self._k.narrow(2, n, m).index_copy_(0, self.rows, key_states)
            self._v.narrow(2, n, m).index_copy_(0, self.rows, value_states)
            k = self._k[:, :, : n + m].index_select(0, self.rows)  # [B', H, n + m, D]
            return k, self._v[:, :, : n + m].index_select(0, self.rows)

    return ColumnLayer


def keep_layer_rows(layer: Any, rows: list[int], index: torch.Tensor, width: int) -> None:
    """Keep ``rows`` (``index``, in this order) of a cache layer and its last ``width`` columns
    (a sliding layer of a model's own holds only its last ones): views where the rows are
    consecutive and the layer a ``ColumnLayer`` (in order, the rows after the first that left
    moved up in place), else copies (a ``ColumnLayer``'s with its room, so that the next step
    does not copy them again to grow)."""
    if isinstance(layer, column_layer()):  # the buffer's room to grow is kept
        run, start = row_run(rows), layer._n_k - min(layer._n_k, width)
        if run is None and rows == sorted(rows):  # rows after the first that left move up
            first = next(p for p, r in enumerate(rows) if r != p)
            with torch.inference_mode():  # in place: a copy of those rows only
                for buf in (layer._k, layer._v):
                    buf[first : len(rows)] = buf.index_select(0, index[first:])
            run = slice(0, len(rows))
        for name in ("_k", "_v"):  # a run: a view (its memory goes when it grows), else a copy
            kept = getattr(layer, name)[:, :, start:]
            setattr(layer, name, kept[run] if run is not None else kept.index_select(0, index))
        layer._n_k = layer._n_v = layer._n_k - start
        return
    keys, values = layer.keys.index_select(0, index), layer.values.index_select(0, index)
    held = min(keys.shape[-2], width)
    layer.keys, layer.values = keys[..., -held:, :], values[..., -held:, :]
    if hasattr(layer, "cumulative_length"):
        layer.cumulative_length = width


def stack_layers(top: Any, bottom: Any, width: int, pad: tuple[Any, Any]) -> None:
    """``top``'s rows, then ``bottom``'s, into ``top``, each right-aligned in ``width`` columns:
    ``ColumnLayer``s in one copy into a buffer with room to grow (padding, concatenating and the
    next step's growth were three copies of the whole cache per admission), a model's own
    layers padded by ``pad`` (one function per layer: its rows' tensor, the layer) and joined."""
    if not (isinstance(top, column_layer()) and isinstance(bottom, column_layer())):
        top.keys = torch.cat([pad[0](top.keys, top), pad[1](bottom.keys, bottom)])
        top.values = torch.cat([pad[0](top.values, top), pad[1](bottom.values, bottom)])
        if hasattr(top, "cumulative_length"):
            top.cumulative_length = width
        return
    for name in ("keys", "values"):
        a, b = getattr(top, name), getattr(bottom, name)  # [B_a, H, w_a, D], [B_b, H, w_b, D]
        assert a.shape[-2] <= width and b.shape[-2] <= width
        out = a.new_zeros(len(a) + len(b), a.shape[1], _room(width), a.shape[-1])
        out[: len(a), :, width - a.shape[-2] : width] = a
        out[len(a) :, :, width - b.shape[-2] : width] = b
        setattr(top, "_k" if name == "keys" else "_v", out)
    top._n_k = top._n_v = width


def row_run(rows: list[int] | None) -> slice | None:
    """``rows`` as a slice where they are consecutive and ascending, else None."""
    if not rows or rows != list(range(rows[0], rows[0] + len(rows))):
        return None
    return slice(rows[0], rows[0] + len(rows))


def _width(t: torch.Tensor | None) -> int:
    """Columns of a [B, H, T, D] cache tensor (0 for none, or transformers' empty placeholder)."""
    return 0 if t is None or t.dim() < 4 else t.shape[-2]


def _room(n: int, m: int = 0) -> int:
    """Columns of a buffer holding ``n`` columns and ``m`` new ones: half as many again to grow."""
    return n + m + max(n // 2, 64)


def _with_room(t: torch.Tensor, n: int, room: int) -> torch.Tensor:
    """[B, H, *, D] -> [B, H, room, D]: the first n columns of ``t``, then zeros."""
    out = t.new_zeros(*t.shape[:2], room, t.shape[-1])
    out[:, :, :n] = t[:, :, :n]
    return out


def subsettable(cache: Any) -> bool:
    """Whether a forward pass may run on some rows of ``cache`` only: every layer a
    ``ColumnLayer`` (a model's own layers copy the cache anyway, and a layer that trims itself
    to a window would come back narrower than its rows' columns)."""
    layers: list[Any] = getattr(cache, "layers", None) or []
    return bool(layers) and all(isinstance(la, column_layer()) for la in layers)


def cache_layers(cache: Any) -> list[Any]:
    """The cache's per-layer key/value holders (transformers 5.x ``DynamicCache.layers``)."""
    layers = getattr(cache, "layers", None)
    if layers is None or any(not hasattr(la, "keys") for la in layers):
        raise NotImplementedError(
            f"continuous batching needs a transformers DynamicCache, got {type(cache).__name__}"
        )
    return list(layers)


def pad_left(mask: torch.Tensor, width: int) -> torch.Tensor:
    return torch.nn.functional.pad(mask, (width - mask.shape[1], 0))


def pad_time(t: torch.Tensor, length: int) -> torch.Tensor:
    """[B, H, T, D] -> [B, H, length, D]: zeros (hole columns) on the left, or the last columns."""
    if t.shape[-2] >= length:
        return t[..., t.shape[-2] - length :, :]
    return torch.nn.functional.pad(t, (0, 0, length - t.shape[-2], 0))

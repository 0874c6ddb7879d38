"""Left-padded key/value caches that rows can join and leave between decode steps.

Each row of the running batch owns a slice of a transformers DynamicCache ([batch, heads, time, dim] per layer)
and a 0/1 attention mask over the same time axis. A newly prefilled group joins by padding the shorter of the two
caches on the left and concatenating along the batch; finished rows leave by index selection; columns that are
padding for every remaining row are trimmed. Rotary positions are baked into the cached keys, so left padding
changes nothing for a row as long as its mask hides the pad columns and its position ids count only real tokens.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


def full_attention_layers(cache: DynamicCache) -> list[DynamicLayer]:
    layers: list[DynamicLayer] = []
    for layer in cache.layers:
        if type(layer) is not DynamicLayer or layer.keys is None or layer.values is None:
            raise TypeError(
                f"cache layer {type(layer).__name__} cannot be re-batched (sliding-window, linear or indexed "
                "attention); this engine serves models whose layers all use full attention"
            )
        layers.append(layer)
    return layers


def _kv(layer: DynamicLayer) -> tuple[torch.Tensor, torch.Tensor]:
    assert layer.keys is not None
    assert layer.values is not None
    return layer.keys, layer.values


def _pad_left(tensor: torch.Tensor, amount: int, dim: int) -> torch.Tensor:
    if amount == 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = amount
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


class KVBatch:
    """The running batch's cache and mask. Row order matches the loop's list of running sequences."""

    def __init__(self, cache: DynamicCache, mask: torch.Tensor) -> None:
        self.cache = cache
        self.layers = full_attention_layers(cache)
        self.mask = mask  # [batch, time], 1 for a real token, 0 for padding

    @property
    def length(self) -> int:
        return int(self.mask.shape[1])

    def merge(self, other: KVBatch) -> None:
        """Append other's rows after ours."""
        width = max(self.length, other.length)
        pad_self, pad_other = width - self.length, width - other.length
        for mine, theirs in zip(self.layers, other.layers, strict=True):
            (my_keys, my_values), (their_keys, their_values) = _kv(mine), _kv(theirs)
            mine.keys = torch.cat([_pad_left(my_keys, pad_self, -2), _pad_left(their_keys, pad_other, -2)], 0)
            mine.values = torch.cat([_pad_left(my_values, pad_self, -2), _pad_left(their_values, pad_other, -2)], 0)
        self.mask = torch.cat([_pad_left(self.mask, pad_self, 1), _pad_left(other.mask, pad_other, 1)], 0)

    def keep(self, rows: list[int]) -> None:
        """Keep only these rows (in this order), then drop columns that are padding for all of them."""
        index = torch.tensor(rows, dtype=torch.long, device=self.mask.device)
        self.mask = self.mask.index_select(0, index)
        lead = int((self.mask.cumsum(dim=1) == 0).sum(dim=1).min().item()) if rows else 0
        if lead:
            self.mask = self.mask[:, lead:]
        for layer in self.layers:
            keys, values = _kv(layer)
            layer.keys = keys.index_select(0, index)[:, :, lead:, :]
            layer.values = values.index_select(0, index)[:, :, lead:, :]

    def extend_mask(self) -> torch.Tensor:
        """The mask for one more decoded token per row; becomes the batch's mask after the step."""
        self.mask = torch.cat([self.mask, self.mask.new_ones((self.mask.shape[0], 1))], dim=1)
        return self.mask

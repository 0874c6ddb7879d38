"""Which fixed-size blocks of the KV pool each sequence holds, and which full blocks hold a known prefix.

Book-keeping only (no tensors): paged_attention.py owns the memory the block ids index. A sequence holds a list of
block ids, one per `block_size` tokens, so the memory held follows the tokens it really has. Blocks are reference
counted: several sequences may share the full blocks of a common prefix.

Prefix caching: once a block is full, it is registered under a hash of every token up to its end (the hash of the
block before it, chained with its own tokens), so the hash names the whole prefix and two sequences share a block
only if everything before it matches too. A block that no sequence holds any more keeps its contents and its hash
and waits, least recently used first, to be taken for new tokens; until then a prompt that starts with the same
tokens takes it back instead of recomputing them.

Block 0 is never handed out: padded attention reads point at it, and it stays zero (see paged_attention.py).
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict
from dataclasses import dataclass

PAD_BLOCK = 0


def block_hash(parent: bytes, tokens: list[int]) -> bytes:
    """The name of a full block: its tokens, chained to the name of the block before it (b"" for the first)."""
    return hashlib.blake2b(parent + array("q", tokens).tobytes(), digest_size=16).digest()


@dataclass
class BlockPool:
    num_blocks: int  # including the pad block
    block_size: int
    prefix_caching: bool = True

    def __post_init__(self) -> None:
        if self.num_blocks < 2:
            raise ValueError("the KV cache needs at least one block besides the pad block")
        self._free: list[int] = list(range(self.num_blocks - 1, PAD_BLOCK, -1))  # pop() hands out low ids first
        self._refs: dict[int, int] = {}
        self._hash_of: dict[int, bytes] = {}
        self._block_of: dict[bytes, int] = {}
        self._evictable: OrderedDict[int, None] = OrderedDict()  # cached, unheld blocks; oldest first

    @property
    def usable_blocks(self) -> int:
        return self.num_blocks - 1

    @property
    def used_blocks(self) -> int:
        """Blocks some sequence holds (cached blocks no one holds are free to take, so they do not count)."""
        return len(self._refs)

    @property
    def available(self) -> int:
        """Blocks a sequence could get now: free ones and cached ones no one holds."""
        return len(self._free) + len(self._evictable)

    @property
    def usage(self) -> float:
        return self.used_blocks / self.usable_blocks

    def blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.block_size)

    def allocate(self, count: int) -> list[int] | None:
        """`count` fresh blocks, taking the least recently used cached ones after the free ones; None if short."""
        if count > self.available:
            return None
        blocks: list[int] = []
        for _ in range(count):
            if self._free:
                block = self._free.pop()
            else:
                block, _ = self._evictable.popitem(last=False)
                del self._block_of[self._hash_of.pop(block)]
            self._refs[block] = 1
            blocks.append(block)
        return blocks

    def release(self, blocks: list[int]) -> None:
        """A sequence lets go of its blocks (it finished, was cancelled or preempted)."""
        for block in reversed(blocks):  # the tail is the least likely to be shared: it goes first when evicting
            refs = self._refs[block] - 1
            if refs:
                self._refs[block] = refs
                continue
            del self._refs[block]
            if block in self._hash_of:
                self._evictable[block] = None
            else:
                self._free.append(block)

    def cached_prefix(self, tokens: list[int]) -> list[tuple[int, bytes]]:
        """The cached blocks (and their names) that hold the longest known prefix of `tokens`, leaving at least
        its last token to compute (its logits give the next token). Takes nothing: see `share`."""
        if not self.prefix_caching:
            return []
        found: list[tuple[int, bytes]] = []
        parent = b""
        for index in range((len(tokens) - 1) // self.block_size):
            name = block_hash(parent, tokens[index * self.block_size : (index + 1) * self.block_size])
            block = self._block_of.get(name)
            if block is None:
                break
            found.append((block, name))
            parent = name
        return found

    def available_besides(self, blocks: list[int]) -> int:
        """Blocks a sequence could get after taking these cached ones (unheld cached blocks count as available)."""
        return self.available - sum(1 for block in blocks if block in self._evictable)

    def share(self, blocks: list[int]) -> None:
        """A sequence takes these cached blocks as the start of its own."""
        for block in blocks:
            self._evictable.pop(block, None)
            self._refs[block] = self._refs.get(block, 0) + 1

    def register(self, block: int, name: bytes) -> None:
        """A block has just been filled with the prefix `name` names: later prompts may share it."""
        if self.prefix_caching and name not in self._block_of and block not in self._hash_of:
            self._block_of[name] = block
            self._hash_of[block] = name

    def clear(self) -> None:
        """Forget every block and cached prefix (after a failed step left their contents unknown)."""
        self.__post_init__()

"""The KV block pool's book-keeping (app/engine/kv_blocks.py): allocation, sharing, prefix lookup, eviction."""

from __future__ import annotations

import pytest

from app.engine.kv_blocks import PAD_BLOCK, BlockPool, block_hash

SIZE = 4


def names(tokens: list[int]) -> list[bytes]:
    """The chained names of the full blocks of `tokens`."""
    out: list[bytes] = []
    for index in range(len(tokens) // SIZE):
        out.append(block_hash(out[-1] if out else b"", tokens[index * SIZE : (index + 1) * SIZE]))
    return out


def filled(pool: BlockPool, tokens: list[int]) -> list[int]:
    """Blocks for `tokens`, registered as a sequence's computed blocks are."""
    blocks = pool.allocate(pool.blocks_for(len(tokens)))
    assert blocks is not None
    for block, name in zip(blocks, names(tokens), strict=False):
        pool.register(block, name)
    return blocks


def test_the_pad_block_is_never_handed_out_and_allocation_stops_at_the_pool_size() -> None:
    pool = BlockPool(num_blocks=4, block_size=SIZE)
    blocks = pool.allocate(3)
    assert blocks is not None and PAD_BLOCK not in blocks and len(set(blocks)) == 3
    assert pool.allocate(1) is None  # short: nothing is taken
    assert (pool.used_blocks, pool.usage) == (3, 1.0)


def test_released_blocks_are_free_again() -> None:
    pool = BlockPool(num_blocks=3, block_size=SIZE)
    blocks = pool.allocate(2)
    assert blocks is not None
    pool.release(blocks)
    assert (pool.used_blocks, pool.available) == (0, 2)


def test_a_prompt_finds_the_full_blocks_of_a_known_prefix_but_leaves_its_last_token_to_compute() -> None:
    pool = BlockPool(num_blocks=8, block_size=SIZE)
    first = list(range(12))
    blocks = filled(pool, first)

    assert [b for b, _ in pool.cached_prefix([*first, 99])] == blocks  # three full blocks, then a token to compute
    assert [b for b, _ in pool.cached_prefix(first)] == blocks[:2]  # the last token must be computed
    assert [b for b, _ in pool.cached_prefix([*list(range(8)), 50, 51, 52, 53, 54])] == blocks[:2]
    assert pool.cached_prefix([1, *list(range(1, 12))]) == []  # the first block differs: nothing after it counts


def test_a_block_matches_only_if_everything_before_it_matches() -> None:
    pool = BlockPool(num_blocks=8, block_size=SIZE)
    filled(pool, [1, 2, 3, 4, 5, 6, 7, 8])
    assert pool.cached_prefix([9, 9, 9, 9, 5, 6, 7, 8, 0]) == []  # same second block, other first block


def test_shared_blocks_are_counted_once_and_freed_by_the_last_holder() -> None:
    pool = BlockPool(num_blocks=8, block_size=SIZE)
    tokens = list(range(8))
    blocks = filled(pool, tokens)
    found = [b for b, _ in pool.cached_prefix([*tokens, 8])]
    pool.share(found)
    assert pool.used_blocks == 2
    pool.release(blocks)
    assert pool.used_blocks == 2  # the second holder still has them
    pool.release(found)
    assert pool.used_blocks == 0


def test_unheld_cached_blocks_stay_findable_until_taken_least_recently_used_first() -> None:
    pool = BlockPool(num_blocks=3, block_size=SIZE)  # two usable blocks
    old, new = [1, 2, 3, 4], [5, 6, 7, 8]
    pool.release(filled(pool, old))
    pool.release(filled(pool, new))
    assert pool.available == 2 and pool.used_blocks == 0
    assert len(pool.cached_prefix([*old, 0])) == 1 and len(pool.cached_prefix([*new, 0])) == 1

    taken = pool.allocate(1)  # no free block left: the least recently released cached one is evicted
    assert taken is not None
    assert pool.cached_prefix([*old, 0]) == []
    assert len(pool.cached_prefix([*new, 0])) == 1


def test_taking_a_cached_block_back_protects_it_from_eviction() -> None:
    pool = BlockPool(num_blocks=3, block_size=SIZE)
    tokens = [1, 2, 3, 4]
    pool.release(filled(pool, tokens))
    found = [b for b, _ in pool.cached_prefix([*tokens, 0])]
    assert pool.available_besides(found) == 1
    pool.share(found)
    assert pool.allocate(2) is None  # the shared block is held again
    assert pool.allocate(1) is not None


def test_with_prefix_caching_off_nothing_is_found() -> None:
    pool = BlockPool(num_blocks=8, block_size=SIZE, prefix_caching=False)
    tokens = list(range(8))
    filled(pool, tokens)
    assert pool.cached_prefix([*tokens, 8]) == []


def test_clear_forgets_blocks_and_prefixes() -> None:
    pool = BlockPool(num_blocks=4, block_size=SIZE)
    filled(pool, list(range(8)))
    pool.clear()
    assert (pool.used_blocks, pool.available, pool.cached_prefix(list(range(9)))) == (0, 3, [])


def test_a_pool_without_a_usable_block_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one block"):
        BlockPool(num_blocks=1, block_size=SIZE)

"""IncrementalText (app/engine/text.py): token ids to text one token at a time, with the real DeepSeek tokenizer."""

from __future__ import annotations

import random
from typing import Any

import pytest

from app.engine.text import IncrementalText

REPLACEMENT = "\ufffd"


def stream(tokenizer: Any, ids: list[int], stop: tuple[str, ...] = ()) -> tuple[list[str], str, IncrementalText]:
    """Push every id; return the piece each push gave, what flush gave, and the decoder."""
    text = IncrementalText(tokenizer, stop)
    pieces = [text.push(token) for token in ids]
    return pieces, text.flush(), text


def emitted_prefixes(pieces: list[str]) -> list[str]:
    """What a streaming client has seen after each push."""
    seen, shown = [], ""
    for piece in pieces:
        shown += piece
        seen.append(shown)
    return seen


# --- multi-byte characters ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["🦜 parrot", "𝄞 music", "a 🦜🦜 b", "héllo wörld, 你好，世界 🦜 𝄞!"])
def test_characters_split_across_tokens_come_out_whole(builtin_tokenizer: Any, text: str) -> None:
    ids = builtin_tokenizer.encode(text)
    # The test needs a character whose bytes are spread over several tokens.
    assert any(REPLACEMENT in builtin_tokenizer.decode([token], False) for token in ids)

    pieces, rest, _ = stream(builtin_tokenizer, ids)

    assert all(REPLACEMENT not in piece for piece in pieces)
    assert "".join(pieces) + rest == text
    assert rest == ""


def test_a_split_character_is_released_by_the_token_that_completes_it(builtin_tokenizer: Any) -> None:
    ids = builtin_tokenizer.encode("🦜")
    assert len(ids) > 1

    pieces, _, _ = stream(builtin_tokenizer, ids)

    assert pieces == [""] * (len(ids) - 1) + ["🦜"]


def test_an_unfinished_character_at_the_end_is_flushed_as_the_tokenizer_decodes_it(builtin_tokenizer: Any) -> None:
    ids = builtin_tokenizer.encode("ok 🦜")[:-1]  # the emoji's last byte never arrives

    pieces, rest, _ = stream(builtin_tokenizer, ids)

    assert "".join(pieces) == "ok"
    assert "".join(pieces) + rest == builtin_tokenizer.decode(ids, False)
    assert rest.endswith(REPLACEMENT)


def test_special_tokens_are_kept_as_text(builtin_tokenizer: Any) -> None:
    ids = builtin_tokenizer.encode("a<think>b</think>c")
    assert len(ids) == 5  # the tags are single special tokens

    pieces, rest, _ = stream(builtin_tokenizer, ids)

    assert "".join(pieces) + rest == "a<think>b</think>c"


# --- pushes + flush equal one decode -----------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(40))
def test_pushes_and_flush_equal_decoding_all_ids_at_once(builtin_tokenizer: Any, seed: int) -> None:
    rng = random.Random(seed)
    # Random ids, as the built-in model's random weights produce: byte tokens, CJK, words, special tokens.
    ids = [rng.randrange(len(builtin_tokenizer)) for _ in range(rng.randrange(1, 40))]

    pieces, rest, text = stream(builtin_tokenizer, ids)

    assert "".join(pieces) + rest == builtin_tokenizer.decode(ids, False)
    assert not text.stopped


def test_a_stop_string_that_never_appears_changes_nothing(builtin_tokenizer: Any) -> None:
    sentence = "The quick brown fox jumps over the lazy dog. Over and out."
    ids = builtin_tokenizer.encode(sentence)

    pieces, rest, text = stream(builtin_tokenizer, ids, ("The end", "###"))

    assert "".join(pieces) + rest == sentence
    assert not text.stopped


def test_empty_stop_strings_are_ignored(builtin_tokenizer: Any) -> None:
    ids = builtin_tokenizer.encode("nothing stops this")

    pieces, rest, text = stream(builtin_tokenizer, ids, ("",))

    assert "".join(pieces) == "nothing stops this"
    assert rest == ""
    assert not text.stopped


# --- stop strings ------------------------------------------------------------------------------------------------


def test_stop_string_cuts_the_text_before_it(builtin_tokenizer: Any) -> None:
    ids = builtin_tokenizer.encode("Hello world. Goodbye world.")

    pieces, rest, text = stream(builtin_tokenizer, ids, ("Goodbye",))

    assert "".join(pieces) + rest == "Hello world. "
    assert text.stopped
    assert rest == ""


def test_nothing_comes_out_after_the_stop(builtin_tokenizer: Any) -> None:
    text = IncrementalText(builtin_tokenizer, ("STOP",))
    shown = "".join(text.push(token) for token in builtin_tokenizer.encode("one STOP two"))
    assert text.stopped

    after = [text.push(token) for token in builtin_tokenizer.encode(" three four")]

    assert shown == "one "
    assert after == ["", ""]
    assert text.flush() == ""


@pytest.mark.parametrize(
    ("sentence", "stop"),
    [
        ("héllo wörld and more", "lo wö"),  # across three tokens, with multi-byte characters inside
        ("see the parrot 🦜 fly away", "🦜"),  # a stop string that is itself split across byte tokens
        ("The quick brown fox jumps", "ck bro"),
        ("count: 12345678 done", "5678 do"),
        ("abc</answer>def", "</answer>"),
    ],
)
def test_a_stop_string_split_across_tokens_never_leaks(builtin_tokenizer: Any, sentence: str, stop: str) -> None:
    ids = builtin_tokenizer.encode(sentence)
    assert not any(stop in builtin_tokenizer.decode([token], False) for token in ids)  # it really is split
    expected = sentence[: sentence.index(stop)]

    pieces, rest, text = stream(builtin_tokenizer, ids, (stop,))

    for shown in emitted_prefixes(pieces):
        assert expected.startswith(shown), f"{shown!r} went out, but the answer is {expected!r}"
    assert "".join(pieces) + rest == expected
    assert text.stopped


def test_the_earliest_of_several_stop_strings_wins(builtin_tokenizer: Any) -> None:
    ids = builtin_tokenizer.encode("alpha beta gamma delta")

    pieces, rest, _ = stream(builtin_tokenizer, ids, ("delta", "beta", "gamma"))

    assert "".join(pieces) + rest == "alpha "


def test_stop_string_at_the_very_start_gives_no_text(builtin_tokenizer: Any) -> None:
    pieces, rest, text = stream(builtin_tokenizer, builtin_tokenizer.encode("END of it"), ("END",))

    assert "".join(pieces) + rest == ""
    assert text.stopped


@pytest.mark.parametrize("seed", range(10))
def test_stop_strings_on_random_text_cut_exactly_where_one_decode_finds_them(builtin_tokenizer: Any, seed: int) -> None:
    rng = random.Random(1000 + seed)
    words = ["the", " end", " of", " it", " 🦜", " é", "##", "#", " 你好", "\n", " stop", "st", "op"]
    sentence = "".join(rng.choice(words) for _ in range(30))
    stops = ("##", " stop")
    ids = builtin_tokenizer.encode(sentence)
    full = builtin_tokenizer.decode(ids, False)
    cuts = [full.find(s) for s in stops if s in full]
    expected = full[: min(cuts)] if cuts else full

    pieces, rest, text = stream(builtin_tokenizer, ids, stops)

    for shown in emitted_prefixes(pieces):
        assert expected.startswith(shown)
    assert "".join(pieces) + rest == expected
    assert text.stopped == bool(cuts)


# --- text that only looks like a stop string ---------------------------------------------------------------------


def test_a_possible_stop_string_is_held_back_then_released_at_flush(builtin_tokenizer: Any) -> None:
    ids = builtin_tokenizer.encode("the answer is </ans")

    pieces, rest, text = stream(builtin_tokenizer, ids, ("</answer>",))

    assert "".join(pieces) == "the answer is "  # "</ans" could still become "</answer>"
    assert rest == "</ans"
    assert not text.stopped


def test_held_back_text_is_released_once_it_stops_looking_like_a_stop_string(builtin_tokenizer: Any) -> None:
    ids = builtin_tokenizer.encode("a </ans b")
    text = IncrementalText(builtin_tokenizer, ("</answer>",))

    shown = "".join(text.push(token) for token in ids)

    assert shown == "a </ans b"
    assert text.flush() == ""
    assert not text.stopped

"""Reasoning split (app/api/reasoning.py): `<think>` text is `reasoning_content`, the rest `content`, streamed too."""

from __future__ import annotations

import random
from typing import Any

import pytest

from app.api.reasoning import ReasoningSplitter, ReasoningTokens, prompt_opens_reasoning, split_reasoning
from app.engine.types import TokenEvent


def feed_pieces(pieces: list[str], starts_in_reasoning: bool = False) -> tuple[str, str]:
    """Stream the pieces through one splitter; return everything it showed as (reasoning, content)."""
    splitter = ReasoningSplitter(starts_in_reasoning)
    reasoning, content = "", ""
    for piece in pieces:
        more_reasoning, more_content = splitter.feed(piece)
        reasoning, content = reasoning + more_reasoning, content + more_content
    more_reasoning, more_content = splitter.finish()
    return reasoning + more_reasoning, content + more_content


def whole(text: str, starts_in_reasoning: bool = False) -> tuple[str, str]:
    return feed_pieces([text], starts_in_reasoning)


# --- whole texts -------------------------------------------------------------------------------------------------


def test_think_block_then_answer() -> None:
    assert split_reasoning("<think>\nLet me add 2 and 2.\n</think>\n\nIt is 4.") == ("Let me add 2 and 2.", "It is 4.")


def test_template_opened_reasoning_has_only_the_closing_tag() -> None:
    text = "\nThe user greets me.\n</think>\n\nHello!"

    assert split_reasoning(text, starts_in_reasoning=True) == ("The user greets me.", "Hello!")


def test_text_without_tags_is_all_content() -> None:
    assert split_reasoning("Just an answer.\n") == (None, "Just an answer.\n")


def test_reasoning_that_never_closes_is_all_reasoning() -> None:
    assert split_reasoning("still thinking", starts_in_reasoning=True) == ("still thinking", "")
    assert split_reasoning("<think>still thinking") == ("still thinking", "")


def test_empty_reasoning_is_empty_not_none() -> None:
    assert split_reasoning("<think>\n\n</think>\n\nAnswer") == ("", "Answer")
    assert split_reasoning("</think>Answer", starts_in_reasoning=True) == ("", "Answer")


def test_text_before_the_opening_tag_is_content() -> None:
    assert split_reasoning("Sure. <think>hmm</think>Done.") == ("hmm", "Sure. Done.")


def test_a_second_think_after_the_close_stays_content() -> None:
    text = "<think>first</think>answer <think>not reasoning</think> end"

    assert split_reasoning(text) == ("first", "answer <think>not reasoning</think> end")


def test_a_closing_tag_outside_reasoning_is_content() -> None:
    assert split_reasoning("a </think> b") == (None, "a </think> b")


def test_a_partial_tag_at_the_end_is_text() -> None:
    assert split_reasoning("answer <thi") == (None, "answer <thi")
    assert split_reasoning("<think>plan </thi", starts_in_reasoning=False) == ("plan </thi", "")


def test_newlines_inside_the_answer_are_kept() -> None:
    assert split_reasoning("<think>r</think>\n\nline one\n\nline two\n") == ("r", "line one\n\nline two\n")


# --- streamed pieces ---------------------------------------------------------------------------------------------

STREAMED = [
    ("<think>\nLet me add 2 and 2.\n</think>\n\nIt is 4.", False),
    ("\nThe user greets me.\n</think>\n\nHello!", True),
    ("Just an answer with a < and a </ and <thin k>.", False),
    ("<think>first</think>answer <think>not reasoning</think> end", False),
    ("Sure. <think>a <b> c</thinking> d</think>Done <", False),
    ("</think>", True),
    ("<think></think>", False),
    ("<think>\n\n\n", False),
    ("plan</think", True),
]


@pytest.mark.parametrize(("text", "starts_in_reasoning"), STREAMED)
def test_every_split_into_two_pieces_equals_the_whole_text(text: str, starts_in_reasoning: bool) -> None:
    expected = whole(text, starts_in_reasoning)

    for cut in range(len(text) + 1):
        assert feed_pieces([text[:cut], text[cut:]], starts_in_reasoning) == expected, f"split at {cut}"


@pytest.mark.parametrize(("text", "starts_in_reasoning"), STREAMED)
def test_char_by_char_equals_the_whole_text(text: str, starts_in_reasoning: bool) -> None:
    assert feed_pieces(list(text), starts_in_reasoning) == whole(text, starts_in_reasoning)


@pytest.mark.parametrize(("text", "starts_in_reasoning"), STREAMED)
def test_random_chunkings_equal_the_whole_text(text: str, starts_in_reasoning: bool) -> None:
    rng = random.Random(text)
    expected = whole(text, starts_in_reasoning)

    for _ in range(200):
        cuts = sorted(rng.sample(range(1, len(text)), rng.randrange(len(text)))) if len(text) > 1 else []
        pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
        assert feed_pieces(pieces, starts_in_reasoning) == expected, pieces


def test_streamed_split_matches_split_reasoning() -> None:
    text = "<think>\nStep one.\nStep two.\n</think>\n\nThe answer."
    reasoning, content = split_reasoning(text)

    streamed = feed_pieces(list(text))

    assert reasoning is not None
    assert (streamed[0].rstrip("\n"), streamed[1]) == (reasoning, content)


def test_a_partial_tag_is_held_back_until_it_is_known() -> None:
    splitter = ReasoningSplitter(starts_in_reasoning=True)

    assert splitter.feed("thinking </th") == ("thinking ", "")
    assert splitter.feed("ink>\n\nanswer") == ("", "answer")


def test_held_back_text_that_is_not_a_tag_comes_out_with_the_next_piece() -> None:
    splitter = ReasoningSplitter()

    assert splitter.feed("a <thi") == ("", "a ")
    assert splitter.feed("s is not a tag") == ("", "<this is not a tag")


def test_newlines_after_the_opening_are_skipped_even_when_streamed_one_by_one() -> None:
    splitter = ReasoningSplitter(starts_in_reasoning=True)

    assert splitter.feed("\n") == ("", "")
    assert splitter.feed("\n") == ("", "")
    assert splitter.feed("idea") == ("idea", "")


# --- the prompt --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prompt", "opens"),
    [
        ("<｜User｜>hi<｜Assistant｜><think>\n", True),
        ("<｜User｜>hi<｜Assistant｜><think>", True),
        ("<｜User｜>hi<｜Assistant｜>", False),
        ("<｜User｜>hi<｜Assistant｜><think>old</think>done<｜User｜>again<｜Assistant｜>", False),
        ("<｜Assistant｜><think>old</think>x<｜User｜>y<｜Assistant｜><think>\n", True),
        ("", False),
    ],
)
def test_prompt_opens_reasoning(prompt: str, opens: bool) -> None:
    assert prompt_opens_reasoning(prompt) is opens


# --- reasoning tokens, for usage.completion_tokens_details ---------------------------------------------------------


def reasoning_tokens(events: list[str], starts_in_reasoning: bool = False) -> int:
    counter = ReasoningTokens(starts_in_reasoning)
    for count, text in enumerate(events, start=1):
        counter.feed(text, count)
    return counter.count(len(events))


def test_reasoning_tokens_run_to_the_token_that_closes_the_block() -> None:
    assert reasoning_tokens(["<think>", "a", "b", "</think>", "\n", "x", "y"]) == 4
    assert reasoning_tokens(["a", "b", "</th", "ink>", "x"], starts_in_reasoning=True) == 4  # a tag split in two


def test_reasoning_that_never_closes_counts_every_token() -> None:
    assert reasoning_tokens(["a", "b", "c"], starts_in_reasoning=True) == 3
    assert reasoning_tokens(["x", "<think>", "a"]) == 2  # the answer's text before the block is not reasoning


def test_an_answer_without_reasoning_has_none() -> None:
    assert reasoning_tokens(["x", "y", "</think>"]) == 0
    assert reasoning_tokens([]) == 0


def test_reasoning_tokens_do_not_depend_on_how_events_were_merged() -> None:
    texts = ["<think>", "a", "b", "</think>", "x", "y"]
    one_by_one = ReasoningTokens()
    for count, text in enumerate(texts, start=1):
        one_by_one.feed_pieces(TokenEvent(text, count).pieces())
    merged = ReasoningTokens()
    merged.feed_pieces(
        TokenEvent("".join(texts), 6, parts=tuple((t, i) for i, t in enumerate(texts, start=1))).pieces()
    )
    assert one_by_one.count(6) == merged.count(6) == 4


# --- where a response_format's constraint starts ------------------------------------------------------------------


def test_a_response_format_starts_after_the_think_closing_token(builtin_tokenizer: Any) -> None:
    from app.api.routes.chat import reasoning_end

    assert builtin_tokenizer.decode([reasoning_end(builtin_tokenizer)]) == "</think>"


def test_a_tokenizer_without_a_think_closing_token_is_refused_naming_response_format() -> None:
    from app.api.errors import APIError
    from app.api.routes.chat import reasoning_end

    class Spelled:  # a tokenizer that spells </think> in pieces
        def encode(self, text: str, add_special_tokens: bool) -> list[int]:
            return [1, 2, 3]

    with pytest.raises(APIError) as raised:
        reasoning_end(Spelled())
    assert raised.value.status == 400 and raised.value.param == "response_format"
    assert '"thinking": false' in raised.value.message

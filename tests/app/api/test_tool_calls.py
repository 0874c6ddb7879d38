"""Tool calls read out of the model's answer (app/api/tool_calls.py), in DeepSeek's format (app/model/tool_format.py):
whole and streamed alike, and nothing the model wrote is lost when it does not parse."""

from __future__ import annotations

import random

import pytest

from app.api.tool_calls import ToolCall, ToolCallStream, parse
from app.model.tool_format import CALL_BEGIN, CALL_END, CALLS_BEGIN, CALLS_END, CALLS_SEPARATOR, SEP, call_text

WEATHER = call_text("get_weather", '{"city":"Paris"}')
NOW = call_text("now", "{}")


def calls(*texts: str) -> str:
    return CALLS_BEGIN + CALLS_SEPARATOR.join(texts) + CALLS_END


def named(found: list[ToolCall]) -> list[tuple[str, str]]:
    return [(call.name, call.arguments) for call in found]


def test_calls_after_content_are_parsed_and_the_content_kept() -> None:
    content, found = parse("Let me look. " + calls(WEATHER, NOW))
    assert content == "Let me look. "
    assert named(found) == [("get_weather", '{"city":"Paris"}'), ("now", "{}")]
    assert all(call.id.startswith("call_") for call in found) and found[0].id != found[1].id


def test_an_answer_without_calls_is_all_content() -> None:
    assert parse("Just text, with <｜ in it") == ("Just text, with <｜ in it", [])


def test_an_unfinished_call_stays_content() -> None:
    text = CALLS_BEGIN + WEATHER + CALLS_SEPARATOR + CALL_BEGIN + "function" + SEP + "now\n```json\n{"
    content, found = parse("Hi " + text)
    assert named(found) == [("get_weather", '{"city":"Paris"}')]
    assert content == "Hi " + CALLS_SEPARATOR + CALL_BEGIN + "function" + SEP + "now\n```json\n{"


def test_a_calls_part_in_another_format_is_content() -> None:
    text = CALLS_BEGIN + CALL_BEGIN + "get_weather" + SEP + '{"city":"Paris"}' + CALL_END + CALLS_END
    assert parse(text) == (text, [])


def test_text_after_the_calls_is_content() -> None:
    assert parse(calls(NOW) + " done")[0] == " done"


def test_shapes_are_openais() -> None:
    call = ToolCall("call_1", "now", "{}")
    assert call.shaped() == {"id": "call_1", "type": "function", "function": {"name": "now", "arguments": "{}"}}
    assert call.shaped(2)["index"] == 2


@pytest.mark.parametrize("seed", range(20))
def test_a_stream_cut_anywhere_gives_what_the_whole_answer_gives(seed: int) -> None:
    chooser = random.Random(seed)
    text = chooser.choice(["", "Sure: ", "<｜not a marker "]) + calls(*chooser.sample([WEATHER, NOW], 2))
    text += chooser.choice(["", " after"])
    cuts = sorted(chooser.sample(range(1, len(text)), 6))
    pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
    stream = ToolCallStream()
    content, found = "", list[ToolCall]()
    for piece in pieces:
        more, more_calls = stream.feed(piece)
        content, found = content + more, found + more_calls
    rest, last = stream.finish()
    whole_content, whole_calls = parse(text)
    assert (content + rest, named(found + last)) == (whole_content, named(whole_calls))


def test_a_marker_split_across_pieces_is_held_back_not_shown() -> None:
    stream = ToolCallStream()
    assert stream.feed("Hi <｜tool▁ca") == ("Hi ", [])
    content, found = stream.feed("lls▁begin｜>" + WEATHER)
    assert content == "" and named(found) == [("get_weather", '{"city":"Paris"}')]

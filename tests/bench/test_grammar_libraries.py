"""bench.grammar_libraries: its schema generator and checker, and both libraries walked to valid JSON on a few
schemas (the full comparison is the benchmark's, with its figures in bench/results)."""

from __future__ import annotations

from typing import Any

import pytest

from bench import grammar_libraries as bench


@pytest.fixture(scope="module")
def builtin_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from app.model.builtin import ensure_builtin_model
    from app.model.source import load_tokenizer

    return load_tokenizer(ensure_builtin_model(tmp_path_factory.mktemp("builtin")), lambda _: None)


def test_the_generated_schemas_are_objects_with_nesting_enums_and_arrays() -> None:
    found = bench.schemas(20)
    assert all(schema["type"] == "object" for schema in found)
    text = repr(found)
    assert "'enum'" in text and "'array'" in text and "'integer'" in text
    assert any(any(sub.get("type") == "object" for sub in s["properties"].values()) for s in found)
    assert bench.schemas(20) == found  # seeded: the same schemas every run


def test_the_checker_accepts_conforming_values_and_refuses_others() -> None:
    schema = {
        "type": "object",
        "properties": {
            "n": {"type": "integer"},
            "c": {"enum": ["red", "blue"]},
            "t": {"type": "array", "items": {"type": "string", "maxLength": 3}, "maxItems": 2},
        },
        "required": ["n", "c", "t"],
    }
    assert bench.conforms({"n": 3, "c": "red", "t": ["ab"]}, schema)
    for bad in (
        {"n": 3.5, "c": "red", "t": []},
        {"n": 3, "c": "green", "t": []},
        {"n": 3, "c": "red"},
        {"n": True, "c": "red", "t": []},
        {"n": 1, "c": "red", "t": ["abcd"]},
        {"n": 1, "c": "red", "t": ["a"] * 3},
    ):
        assert not bench.conforms(bad, schema), bad


@pytest.mark.parametrize("run", [bench.run_xgrammar, bench.run_llguidance])
def test_each_library_constrains_every_row_to_valid_json(run: Any, builtin_tokenizer: Any) -> None:
    chosen = bench.schemas(4, seed=1)
    walker = bench.Walker(builtin_tokenizer, 129280)
    result = run(builtin_tokenizer, 129280, chosen, walker)
    assert result["valid"] == result["rows"] == 4
    assert result["row_mask_us"] > 0 and result["compile_ms_max"] > 0

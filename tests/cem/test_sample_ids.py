"""Sample ids: one strict ASCII grammar, so no id can break the audits that read it back."""

from __future__ import annotations

import pytest

from cem.data.sample_ids import format_sample_id, parse_sample_id
from cem.errors import ConfigError


def test_round_trip() -> None:
    parsed = parse_sample_id(format_sample_id("digits", "test", 17))
    assert (parsed.dataset, parsed.split, parsed.index) == ("digits", "test", 17)


@pytest.mark.parametrize("text", [
    "digits/test/²",  # str.isdigit() is True, int() raises: it once failed every capture-based audit
    "digits/test/١٢",  # Arabic-Indic digits
    "digits/test/-1", "digits/test/01", "digits/test/", "digits/val/1", "/test/1", "digits/test/1/2",
    "dígits/test/1", "digits/test/12345678901", "x" * 65 + "/test/1", "",
])
def test_anything_else_is_a_clear_error(text: str) -> None:
    with pytest.raises(ConfigError, match="expected a sample id"):
        parse_sample_id(text)

"""Which attacks a demo runs: the profile's, unless the command line names others."""

from __future__ import annotations

import pytest

from cem.errors import CEMError
from demo.pipeline import DemoConfig


def test_the_fast_profile_runs_the_decoder_attack_and_the_paper_profile_both() -> None:
    assert DemoConfig(profile="fast").attack_names == ("decoder",)
    assert DemoConfig(profile="paper").attack_names == ("decoder", "gan")
    assert DemoConfig(profile="fast", attacks=("gan",)).attack_names == ("gan",)


def test_an_unknown_attack_is_refused_before_anything_runs() -> None:
    with pytest.raises(CEMError, match="expected an attack in"):
        DemoConfig(attacks=("nope",))

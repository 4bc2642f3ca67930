"""The worst case over attacks: per column, the lowest MSE and which attack reached it."""

from __future__ import annotations

import math

from cem.worst_case import worst_case


def test_each_column_takes_its_own_strongest_attack_and_counts_the_attacks() -> None:
    scores = {"decoder": {"train": 0.004, "infer": 0.006},
              "gan": {"train": 0.005, "infer": 0.003},
              "optimize": {"train": 0.02, "infer": None, "captured": 0.01}}
    assert worst_case(scores) == {
        "train": {"attack": "decoder", "mse": 0.004, "attacks": 3},
        "infer": {"attack": "gan", "mse": 0.003, "attacks": 2},
        "captured": {"attack": "optimize", "mse": 0.01, "attacks": 1},
    }


def test_non_finite_scores_never_win_and_ties_go_to_the_first_listed() -> None:
    assert worst_case({"a": {"train": math.nan}, "b": {"train": 0.01}, "c": {"train": 0.01}}) == {
        "train": {"attack": "b", "mse": 0.01, "attacks": 2}}
    assert worst_case({"a": {"train": math.inf}}) == {}

"""The treatment-selection rule sets, pinned at their published boundaries."""

import pytest

from strokeflow.analysis.decisions import RULE_SETS, evaluate_decisions, lesion_metrics


def test_target_mismatch_profile_is_selected_by_every_rule_set() -> None:
    d = evaluate_decisions(lesion_metrics(core_ml=20, tmax6_ml=120, tmax10_ml=40))
    assert d == {"defuse3": True, "defuse2": True, "extend": True, "malignant_profile": False}


def test_core_of_70_ml_fails_defuse3_and_69_9_passes() -> None:
    assert not evaluate_decisions(lesion_metrics(70.0, 200.0, 60.0))["defuse3"]
    assert evaluate_decisions(lesion_metrics(69.9, 200.0, 60.0))["defuse3"]


def test_ratio_of_exactly_1_8_is_a_defuse3_mismatch_but_1_79_is_not() -> None:
    assert evaluate_decisions(lesion_metrics(30.0, 54.0, 10.0))["defuse3"]
    assert not evaluate_decisions(lesion_metrics(30.0, 53.7, 10.0))["defuse3"]


def test_mismatch_must_reach_15_ml_for_defuse3_but_only_exceed_10_for_extend() -> None:
    d = evaluate_decisions(lesion_metrics(5.0, 17.0, 2.0))
    assert d["defuse3"] is False
    assert d["extend"] is True


def test_tmax10_of_100_ml_is_malignant_and_excludes_defuse2_target() -> None:
    d = evaluate_decisions(lesion_metrics(30.0, 150.0, 100.0))
    assert d["malignant_profile"] is True
    assert d["defuse2"] is False
    assert d["defuse3"] is True


def test_core_of_100_ml_is_malignant() -> None:
    assert evaluate_decisions(lesion_metrics(100.0, 120.0, 50.0))["malignant_profile"]


def test_empty_core_has_no_ratio_but_counts_as_infinite_mismatch_ratio() -> None:
    m = lesion_metrics(0.0, 40.0, 12.0)
    assert m.mismatch_ratio is None
    assert m.hypoperfusion_intensity_ratio == pytest.approx(0.3)
    assert evaluate_decisions(m)["defuse3"] is True


def test_normal_brain_selects_nothing() -> None:
    m = lesion_metrics(0.0, 0.0, 0.0)
    assert m.hypoperfusion_intensity_ratio is None
    assert not any(evaluate_decisions(m).values())


def test_volumes_are_rounded_before_deciding_so_readers_see_what_was_decided() -> None:
    m = lesion_metrics(69.96, 200.0, 60.0)
    assert m.core_ml == 70.0
    assert not evaluate_decisions(m)["defuse3"]


def test_negative_volumes_are_refused() -> None:
    with pytest.raises(ValueError):
        lesion_metrics(-1.0, 10.0, 0.0)


def test_every_rule_set_is_named_versioned_and_referenced() -> None:
    keys = [r.key for r in RULE_SETS]
    assert len(keys) == len(set(keys))
    for rule in RULE_SETS:
        assert rule.name and rule.version and rule.reference and rule.describe()

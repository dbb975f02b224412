"""Temperature scaling, calibration metrics and selective prediction (evaluators/calibration)."""

import numpy as np
import pytest

from brainjax.evaluators import calibration
from brainjax.evaluators.calibration import calibrate


def _overconfident(n=2000, classes=4, seed=0, scale=6.0):
    """Logits of a ~70%-accurate classifier that is far too sure of itself."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    signal = np.eye(classes)[labels] * 1.0 + rng.normal(0, 0.8, (n, classes))
    return scale * signal, labels


def test_temperature_fit_lowers_validation_nll_and_is_the_minimum():
    logits, labels = _overconfident()
    t = calibration.fit_temperature(logits, labels)
    nll = lambda temp: calibration.nll(calibration.softmax(logits, temp), labels)
    assert t > 2.0  # overconfident logits need softening
    assert nll(t) < nll(1.0) - 0.1
    assert nll(t) <= nll(t * 1.05) and nll(t) <= nll(t / 1.05)
    # Scaling never changes the predicted class.
    np.testing.assert_array_equal(calibration.softmax(logits, t).argmax(-1), logits.argmax(-1))
    # Held-out data from the same model: ECE falls too.
    test_logits, test_labels = _overconfident(seed=1)
    m = calibration.calibration_metrics(test_logits, test_labels, t)
    assert m["ece_after"] < 0.5 * m["ece_before"] and m["nll_after"] < m["nll_before"]
    assert m["brier_after"] < m["brier_before"]


def test_ece_on_a_hand_computed_case():
    # Two bins used: 3 examples at confidence 0.9 (2 right), 1 at 0.6 (wrong).
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.9, 0.1], [0.6, 0.4]])
    labels = np.array([0, 0, 1, 1])
    # |2/3 - 0.9| * 3/4 + |0 - 0.6| * 1/4
    assert calibration.ece(probs, labels) == pytest.approx(abs(2 / 3 - 0.9) * 0.75 + 0.6 * 0.25)
    assert calibration.brier(np.eye(2)[[0, 1]], np.array([0, 1])) == 0.0


def test_risk_coverage_and_aurc():
    correct = np.array([1] * 8 + [0] * 2, bool)
    perfect = calibration.selective_metrics(np.linspace(1, 0, 10), correct)  # errors least confident
    worst = calibration.selective_metrics(np.linspace(0, 1, 10), correct)  # errors most confident
    assert perfect["accuracy_at_80"] == 1.0 and perfect["accuracy_at_90"] == pytest.approx(8 / 9)
    assert worst["accuracy_at_80"] == pytest.approx(6 / 8)
    assert perfect["aurc"] < worst["aurc"]
    # AURC by hand for the perfect ranking: risk 0 up to 8/10, then 1/9, then 2/10.
    assert perfect["aurc"] == pytest.approx(0.1 * (1 / 9) + 0.1 * 0.2)


@pytest.mark.parametrize("target", [0.8, 0.9, 0.97])
def test_abstention_threshold_meets_its_target_on_validation_with_the_most_coverage(target):
    logits, labels = _overconfident(seed=2)
    probs = calibration.softmax(logits, calibration.fit_temperature(logits, labels))
    scores, correct = probs.max(-1), probs.argmax(-1) == labels
    threshold = calibration.fit_threshold(scores, correct, target)
    kept = scores >= threshold
    assert correct[kept].mean() >= target
    assert kept.mean() < 1.0  # the model is ~70% accurate: meeting the target means abstaining
    # Maximal coverage: also keeping the next most confident example misses the target.
    below = scores[scores < threshold]
    if len(below):
        looser = scores >= below.max()
        assert correct[looser].mean() < target


def test_calibrate_builds_the_report_sections():
    val_logits, val_labels = _overconfident(seed=3)
    clean, clean_labels = _overconfident(seed=4)
    noisy, noisy_labels = _overconfident(seed=5, scale=3.0)
    cal, sel = calibrate({"logits": val_logits, "label": val_labels},
                         {None: {"logits": clean, "label": clean_labels},
                          ("noise", 1): {"logits": noisy, "label": noisy_labels}}, 0.9)
    assert set(cal["clean"]) >= {"ece_before", "ece_after", "nll_before", "nll_after"}
    assert set(cal["degraded_mean"]) >= {"ece_before", "ece_after", "nll_before", "nll_after"}
    assert set(sel["clean"]) >= {"aurc", "accuracy_at_80", "accuracy_at_90"}
    assert set(sel["degraded_mean"]) >= {"aurc", "accuracy_at_80", "accuracy_at_90"}
    assert cal["clean"]["ece_after"] < cal["clean"]["ece_before"]
    assert sel["clean"]["accuracy_at_threshold"] > (clean.argmax(-1) == clean_labels).mean()
    assert sum(cal["reliability"]["after"]["count"]) == len(clean_labels)


@pytest.mark.parametrize("rule, message", [("entropy", "must be one of"), ("quality", "needs a quality head")])
def test_calibrate_refuses_an_unusable_abstention_rule_clearly(rule, message):
    from brainjax.errors import UserError

    logits, labels = _overconfident(n=200)
    with pytest.raises(UserError, match=message):
        calibrate({"logits": logits, "label": labels}, {None: {"logits": logits, "label": labels}}, 0.9, rule)

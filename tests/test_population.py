"""bmc_calib.population: prediction intervals for a new person and consensus regions."""

from __future__ import annotations

import numpy as np
import pytest

from bmc_calib import hulls, population


def _people(n_people: int, rng: np.random.Generator, poses: int = 50) -> tuple[np.ndarray, ...]:
    """Person effects N(0, 1) around 10, within-person noise N(0, 0.1): one item."""
    effect = rng.normal(0.0, 1.0, n_people)
    values = 10.0 + effect[:, None] + rng.normal(0.0, 0.1, (n_people, poses))
    person = np.repeat(np.arange(n_people), poses)
    return values.reshape(-1, 1), person


def test_fewer_people_give_honestly_wider_intervals() -> None:
    k3 = population.prediction_factor(3, 0.99, 27)
    k30 = population.prediction_factor(30, 0.99, 27)
    assert k3 > 10 * k30 > 0
    assert population.prediction_factor(1, 0.99, 27) == np.inf
    # the t quantile with P - 1 degrees of freedom, Bonferroni over the items
    assert population.prediction_factor(7, 0.95, 1) == pytest.approx(2.447 * np.sqrt(8 / 7), 1e-3)


@pytest.mark.parametrize("people", [4, 8, 30])
def test_a_new_person_falls_inside_at_the_stated_confidence(people: int) -> None:
    rng = np.random.default_rng(people)
    inside = []
    for _ in range(400):
        values, person = _people(people, rng)
        pi = population.person_intervals(values, person, person, 0.999, 0.9, 1)
        new = 10.0 + rng.normal(0.0, 1.0)  # a new person's centre
        inside.append(pi.low[0] <= new <= pi.high[0])
    # the interval is for a new person at 90 %: measured 0.90–0.95 (within noise ~ ±0.03)
    assert 0.86 <= np.mean(inside) <= 0.99


def test_hands_are_centred_apart_and_one_person_falls_back() -> None:
    rng = np.random.default_rng(0)
    values, person = _people(1, rng)
    hand = np.arange(len(person)) % 2  # one person, two hands: still no between-person spread
    pi = population.person_intervals(values, hand, person, 0.999, 0.99, 27)
    assert pi.factor == 0.0 and "quantile range" in pi.method
    np.testing.assert_allclose([pi.low[0], pi.high[0]], np.quantile(values, [5e-4, 1 - 5e-4]))
    values, person = _people(2, rng)  # two people: t with 1 df, an interval that rarely bites
    pi = population.person_intervals(values, person, person, 0.999, 0.99, 27)
    assert pi.factor > 1000
    hand = population.hand_ids(np.array([0, 0, 1, 1]), np.array([False, True, False, True]))
    assert hand.tolist() == [0, 1, 2, 3]


def _square(x0: float, y0: float, size: float = 1.0) -> np.ndarray:
    return np.array([[x0, y0], [x0 + size, y0], [x0 + size, y0 + size], [x0, y0 + size]])


def test_no_single_group_can_stretch_the_consensus_region() -> None:
    common = [_square(0, 0), _square(0.1, 0.1), _square(-0.1, 0.05)]
    stretched = np.array([[0, 0], [5, 0], [5, 1], [0, 1.0]])  # one person reaches x = 5
    region = population.consensus_region([*common, stretched])
    assert region[:, 0].max() < 1.2
    # two people reaching x = 5 keep it
    region = population.consensus_region([*common, stretched, stretched + 0.01])
    assert region[:, 0].max() > 4.9
    # counter-clockwise, canonical start
    assert hulls.points_in_polygon(np.array([[0.5, 0.5]]), region).all()


def test_peeling_cuts_a_spike_of_bad_frames() -> None:
    rng = np.random.default_rng(1)
    bulk = rng.normal(0.0, 0.1, (5000, 2))
    # a run of 6 bad frames (0.12 %) scattered along a thin spike
    spike = np.column_stack([np.linspace(0.6, 2.0, 6), rng.normal(0.0, 0.05, 6)])
    pts = np.vstack([bulk, spike])
    peeled = population.group_hull(pts, 0.99, 0.005)
    assert peeled[:, 0].max() < 0.61  # at most the spike's root is left
    # greedy vertex removal at the same coverage keeps the spike's tip as a vertex
    assert hulls.fit_hull(pts, coverage=0.99).vertices[:, 0].max() == pytest.approx(2.0)
    kept = population.peel(pts, 0.999)
    assert len(kept) == int(np.ceil(0.999 * len(pts)))

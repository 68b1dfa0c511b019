"""QuantileTails gives numpy's quantiles of a stream while keeping only the extremes."""

from __future__ import annotations

import numpy as np
import pytest

from bmc_calib.quantiles import QuantileTails


@pytest.mark.parametrize("n", [1, 2, 3, 17, 1000, 20011])
@pytest.mark.parametrize("coverage", [1.0, 0.999, 0.99, 0.9, 0.5])
def test_streamed_quantiles_equal_numpy(n: int, coverage: float) -> None:
    rng = np.random.default_rng(n)
    values = rng.standard_t(3, size=(n, 4))
    values[:, 3] = np.round(values[:, 3])  # ties
    tail = (1 - coverage) / 2
    keeper = QuantileTails(4, max_count=n + 500, tail=tail)  # a loose bound is fine
    for block in np.array_split(values, max(1, n // 333)):
        keeper.add(block)
    expected = np.quantile(values, [tail, 1 - tail], axis=0)
    np.testing.assert_allclose(keeper.quantiles(), expected, rtol=1e-12, atol=1e-12)
    assert keeper._low.shape[0] <= keeper.keep


def test_keeps_few_values_and_checks_its_bound() -> None:
    keeper = QuantileTails(2, max_count=1_000_000, tail=0.0005)
    assert keeper.keep == 501
    keeper = QuantileTails(1, max_count=3, tail=0.1)
    keeper.add(np.zeros((3, 1)))
    with pytest.raises(ValueError, match="max_count"):
        keeper.add(np.zeros((1, 1)))
    with pytest.raises(ValueError, match="no values"):
        QuantileTails(1, 5, 0.1).quantiles()

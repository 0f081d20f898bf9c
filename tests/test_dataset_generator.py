"""The generator alone (no server): determinism, linear scale, argument checking."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from workbook.dataset.generator import Generator, expected_top_share
from workbook.errors import WorkbookError


def stream_digest(gen: Generator) -> dict[str, str]:
    digests = {}
    for stream in gen.tables():
        h = hashlib.sha256()
        for data, _ in stream.batches():
            h.update(data)
        digests[stream.name] = h.hexdigest()
    return digests


def test_same_seed_and_scale_give_byte_identical_streams_and_another_seed_does_not() -> None:
    a = stream_digest(Generator(seed=7, scale=0.01))
    b = stream_digest(Generator(seed=7, scale=0.01))
    c = stream_digest(Generator(seed=8, scale=0.01))
    assert a == b
    assert all(a[t] != c[t] for t in a), "every table must depend on the seed"


def test_row_counts_are_linear_in_the_scale_factor() -> None:
    small, big = Generator(1, 0.05), Generator(1, 0.2)
    assert big.n_messages / small.n_messages == pytest.approx(4, rel=0.08)
    assert big.n_conversations / small.n_conversations == pytest.approx(4, rel=0.02)
    assert big.n_orgs / small.n_orgs == pytest.approx(4, rel=0.02)
    assert Generator(1, 1).n_messages == pytest.approx(1_000_000, rel=0.08)


def test_zipf_model_puts_over_a_fifth_of_traffic_on_the_top_percent() -> None:
    assert [round(expected_top_share(n), 2) for n in (100, 2000, 6000)] == [0.23, 0.54, 0.62]
    gen = Generator(3, 0.5)
    conv = gen.conversations
    per_org = np.bincount(conv["org"], weights=conv["length"], minlength=gen.n_orgs)
    top = np.sort(per_org)[::-1][: gen.n_orgs // 100].sum() / per_org.sum()
    assert top == pytest.approx(expected_top_share(gen.n_orgs), rel=0.25)


@pytest.mark.parametrize("kwargs", [{"seed": -1}, {"scale": 0}, {"scale": 1000}, {"seed": 1.5}])
def test_bad_arguments_are_refused_with_the_value(kwargs: dict[str, object]) -> None:
    with pytest.raises(WorkbookError, match="must"):
        Generator(**kwargs)  # type: ignore[arg-type]

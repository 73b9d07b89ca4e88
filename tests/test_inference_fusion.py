"""Fusion of model probabilities with OSM labels, on hand-made arrays."""

from __future__ import annotations

import numpy as np
import pytest

from lulc_core.errors import InputError
from lulc_core.inference import FusionMode, fuse
from lulc_core.inference.fusion import check_fusion, harmonize_corine, model_classes, one_hot
from lulc_core.inference.uncertainty import normalised_entropy, variance_and_entropy
from lulc_core.labels import LabelSet

# 3 classes, 1 x 4 pixels: confident class 1 | unsure class 2 | confident class 3 | confident class 1 (no data)
PROBS = np.array(
    [
        [[0.9, 0.40, 0.05, 0.8]],
        [[0.05, 0.45, 0.05, 0.1]],
        [[0.05, 0.15, 0.90, 0.1]],
    ],
    np.float32,
)
VALID = np.array([[True, True, True, False]])
OSM = np.array([[0, 3, 2, 2]], np.uint8)  # no OSM label at the first pixel


def test_only_model_threshold_and_nodata() -> None:
    classes, probs = fuse(FusionMode.ONLY_MODEL, PROBS, VALID, None, threshold=0.0)
    assert classes.tolist() == [[1, 2, 3, 0]]
    assert probs is PROBS
    classes, _ = fuse(FusionMode.ONLY_MODEL, PROBS, VALID, None, threshold=0.5)
    assert classes.tolist() == [[1, 0, 3, 0]], "below threshold and nodata are unknown"


def test_only_osm() -> None:
    classes, probs = fuse(FusionMode.ONLY_OSM, PROBS, VALID, OSM, threshold=0.5)
    assert classes.tolist() == OSM.tolist()
    assert probs is not None and probs[:, 0, 1].tolist() == [0, 0, 1]
    classes, probs = fuse(FusionMode.ONLY_OSM, None, VALID, OSM, threshold=0.5)
    assert classes.tolist() == OSM.tolist() and probs is None


def test_favour_model_fills_unknown_from_osm() -> None:
    classes, _ = fuse(FusionMode.FAVOUR_MODEL, PROBS, VALID, OSM, threshold=0.5)
    # pixel 2 is unsure -> OSM 3; pixel 4 has no imagery -> OSM 2; the model keeps pixels 1 and 3
    assert classes.tolist() == [[1, 3, 3, 2]]


def test_favour_osm_overrides_where_osm_has_a_label() -> None:
    classes, _ = fuse(FusionMode.FAVOUR_OSM, PROBS, VALID, OSM, threshold=0.0)
    assert classes.tolist() == [[1, 3, 2, 2]]


def test_mean_mixin_averages_with_a_one_hot_prior() -> None:
    classes, mixed = fuse(FusionMode.MEAN_MIXIN, PROBS, VALID, OSM, threshold=0.0, mixin_weight=0.5)
    assert mixed is not None
    np.testing.assert_allclose(mixed[:, 0, 0], PROBS[:, 0, 0])  # no OSM label: the model alone
    np.testing.assert_allclose(mixed[:, 0, 1], 0.5 * PROBS[:, 0, 1] + 0.5 * np.array([0, 0, 1]))
    np.testing.assert_allclose(mixed[:, 0, 2], [0.025, 0.525, 0.45])  # 0.5 * (0.05, 0.05, 0.9) + 0.5 * e2
    np.testing.assert_allclose(mixed[:, 0, 3], [0, 1, 0])  # no imagery: OSM decides
    assert classes.tolist() == [[1, 3, 2, 2]]
    np.testing.assert_allclose(mixed.sum(axis=0), 1.0, rtol=1e-6)
    # weight 0 is the model alone (nodata stays unknown only where OSM has nothing)
    classes0, _ = fuse(FusionMode.MEAN_MIXIN, PROBS, VALID, OSM, threshold=0.0, mixin_weight=0.0)
    assert classes0.tolist() == [[1, 2, 3, 2]]
    # a threshold applies to the mixed probabilities
    classes_t, _ = fuse(FusionMode.MEAN_MIXIN, PROBS, VALID, OSM, threshold=0.6)
    assert classes_t.tolist() == [[1, 0, 0, 2]]


def test_helpers() -> None:
    assert model_classes(PROBS, np.ones((1, 4), bool), 0.0).tolist() == [[1, 2, 3, 1]]
    hot = one_hot(np.array([[0, 1, 3]], np.uint8), 3)
    assert hot.shape == (3, 1, 3) and hot.sum(axis=0).tolist() == [[0, 1, 1]]
    with pytest.raises(ValueError, match="needs OSM"):
        fuse(FusionMode.FAVOUR_OSM, PROBS, VALID, None, 0.0)


def test_model_classes_equal_argmax_with_ties_threshold_and_validity() -> None:
    rng = np.random.default_rng(0)
    probs = rng.integers(0, 4, (7, 64, 48)).astype(np.float32) / 4  # coarse values: many ties
    valid = rng.random((64, 48)) > 0.1
    classes = model_classes(probs, valid, 0.5)
    winner = np.argmax(probs, axis=0)  # the first class on a tie
    top = probs.max(axis=0)
    expected = np.where(valid & (top >= 0.5), winner + 1, 0)
    assert classes.dtype == np.uint8
    assert (classes == expected).all()
    assert 0 < (classes == 0).mean() < 1


def test_harmonize_corine_maps_codes_by_label_set(v3_label_set: LabelSet) -> None:
    codes = np.array([[311, 112, 211, 999, 0, 512]], np.uint16)
    expected = [
        v3_label_set.value_of("forest"),
        v3_label_set.value_of("built-up"),
        v3_label_set.value_of("farmland"),
        0,
        0,
        v3_label_set.value_of("water"),
    ]
    assert harmonize_corine(codes, v3_label_set).tolist() == [expected]


def test_check_fusion_is_honest_about_sources() -> None:
    check_fusion(FusionMode.ONLY_MODEL, None)
    check_fusion(FusionMode.MEAN_MIXIN, object())
    for mode in (FusionMode.ONLY_OSM, FusionMode.FAVOUR_MODEL, FusionMode.FAVOUR_OSM, FusionMode.MEAN_MIXIN):
        with pytest.raises(InputError, match="no OSM source") as err:
            check_fusion(mode, None)
        assert err.value.field == "fusion_mode"
    with pytest.raises(InputError, match="Sentinel Hub BYOC"):
        check_fusion(FusionMode.HARMONIZED_CORINE, object())
    with pytest.raises(InputError, match="harmonized_corine"):
        check_fusion(FusionMode.ONLY_CORINE, object())


def test_entropy_and_variance_bounds() -> None:
    uniform = np.full((4, 2, 2), 0.25, np.float32)
    certain = one_hot(np.full((2, 2), 2, np.uint8), 4)
    np.testing.assert_allclose(normalised_entropy(uniform), 1.0, atol=1e-6)
    np.testing.assert_allclose(normalised_entropy(certain), 0.0, atol=1e-6)
    # two augmentations: winner probability 1.0 and 0.5 -> mean 0.75, variance 0.0625
    a = np.array([1.0, 0.0], np.float32)[:, None, None]
    b = np.array([0.5, 0.5], np.float32)[:, None, None]
    mean, squares = (a + b) / 2, (a * a + b * b) / 2
    variance, entropy = variance_and_entropy(mean, squares)
    assert variance.item() == pytest.approx(0.0625)
    assert 0 < entropy.item() < 1
    # worst case: the winner flips between 0 and 1 -> the maximum 0.25
    c = np.array([0.0, 1.0], np.float32)[:, None, None]
    variance, _ = variance_and_entropy((a + c) / 2 + np.array([1e-3, 0], np.float32)[:, None, None], (a + c) / 2)
    assert variance.item() == pytest.approx(0.25, abs=2e-3)

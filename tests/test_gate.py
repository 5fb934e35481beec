"""Tests for the non-spine input gate (tags, image statistics, feature-space OOD)."""
from __future__ import annotations

import json
import zipfile

import numpy as np
import pydicom
import pytest
import skimage.data
from pydicom.data import get_testdata_file
from skimage.color import rgb2gray

from spine_ui.config import GateConfig
from spine_ui.core.decode.study import StudyMeta
from spine_ui.errors import BundleError
from spine_ui.core.gate import (
    FeatureOOD,
    GateResult,
    LayerResult,
    check_features,
    check_image,
    check_tags,
    colorfulness,
    is_spine_body_part,
    run_gate,
)

CFG = GateConfig()
RASTER = StudyMeta(source="raster")


def dicom_meta(**kw: object) -> StudyMeta:
    return StudyMeta(source="dicom", **kw)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- synthetic radiographs


def spine_like(h: int, w: int, *, lateral: bool = False, implant: bool = True, seed: int = 0) -> np.ndarray:
    """A crude spine radiograph: dark background, soft-tissue body with a gradient, a column of bright
    vertebral bodies separated by darker discs, optional saturated metal implant, quantum-like noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    u, v = xx / w, yy / h  # normalised coordinates
    img = np.full((h, w), 0.06, np.float32)  # air / background
    body_half = 0.42 if lateral else 0.36
    centre = 0.58 if lateral else 0.5  # the lateral spine sits towards the back
    body = np.abs(u - 0.5) < body_half
    soft = 0.30 + 0.12 * (1.0 - np.abs(u - 0.5) / body_half) + 0.05 * v
    img[body] = soft[body]
    col_half = 0.09 if lateral else 0.07
    n_vert = 6
    for i in range(n_vert):
        top, bottom = (i + 0.12) / n_vert, (i + 0.88) / n_vert  # gaps between them are discs
        vb = (np.abs(u - centre) < col_half) & (v > top) & (v < bottom)
        img[vb] = 0.70 + 0.06 * (i / n_vert)
        disc = (np.abs(u - centre) < col_half) & (v >= bottom) & (v < (i + 1.12) / n_vert)
        img[disc] = 0.48
    if implant:  # pedicle screws / rod: saturated white
        rod = (np.abs(u - (centre + col_half + 0.03)) < 0.012) & (v > 0.25) & (v < 0.75)
        img[rod] = 1.0
    img += rng.normal(0.0, 0.02, size=(h, w)).astype(np.float32)
    return np.clip(img, 0.0, 1.0).astype(np.float32)


RADIOGRAPHS = {
    "ap_portrait": (1024, 768, False),
    "lateral_landscape": (800, 1000, True),
    "small": (256, 128, False),
    "large": (3000, 2500, False),
}


@pytest.mark.parametrize("name", sorted(RADIOGRAPHS))
def test_spine_like_radiographs_pass_tags_and_image(name: str) -> None:
    h, w, lateral = RADIOGRAPHS[name]
    pixels = spine_like(h, w, lateral=lateral)
    assert pixels.shape == (h, w)
    for meta in (RASTER, dicom_meta(modality="DX", body_part="LSPINE"), dicom_meta()):
        result = run_gate(pixels, meta, CFG)
        assert result.accepted, (name, result.to_dict())
        assert [layer.name for layer in result.layers] == ["tags", "image", "features"]
        assert result.layers[1].status == "passed"
        assert result.layers[2].status == "skipped"


def test_radiograph_variants_pass() -> None:
    base = spine_like(900, 700)
    heavy_collimation = np.zeros((900, 700), np.float32)
    heavy_collimation[200:700, 150:550] = spine_like(500, 400, seed=1)  # ~68 % black border
    variants = {
        "no implant": spine_like(900, 700, implant=False),
        "inverted": 1.0 - base,
        "low contrast": 0.4 + 0.15 * base,
        "heavy collimation": heavy_collimation,
        "8-bit quantised": np.round(base * 255) / 255,
        "HxWx1": base[..., None],
    }
    for name, pixels in variants.items():
        layer = check_image(pixels, RASTER, CFG)
        assert layer.status == "passed", (name, layer)


# --------------------------------------------------------------------------- colour photographs


@pytest.mark.parametrize("name", ["astronaut", "coffee", "chelsea"])
def test_colour_photographs_rejected(name: str) -> None:
    rgb = getattr(skimage.data, name)()
    colour = colorfulness(rgb)
    assert colour > CFG.max_colorfulness
    meta = StudyMeta(source="raster", colorfulness=colour, original_shape=rgb.shape[:2])
    gray = rgb2gray(rgb).astype(np.float32)
    result = run_gate(gray, meta, CFG)
    assert not result.accepted
    assert result.reason is not None and "colour photograph" in result.reason
    assert f"colourfulness {colour:.0f}" in result.reason
    assert [layer.status for layer in result.layers] == ["skipped", "rejected", "skipped"]
    assert result.layers[2].detail == "not run"


def test_colour_pixels_are_measured_directly() -> None:
    rgb = skimage.data.astronaut()
    layer = check_image(rgb.astype(np.float32) / 255.0, RASTER, CFG)  # meta says 0, pixels say colour
    assert layer.status == "rejected" and "colour photograph" in layer.detail


def test_colorfulness_reference_values() -> None:
    gray = np.repeat(skimage.data.camera()[..., None], 3, axis=2)
    assert colorfulness(gray) == 0.0
    assert colorfulness(skimage.data.camera()) == 0.0  # 2-D input: no colour
    red = np.zeros((8, 8, 3), np.uint8)
    red[..., 0] = 255  # rg = 255, yb = 127.5, no spread -> 0.3 * hypot(255, 127.5)
    assert colorfulness(red) == pytest.approx(0.3 * np.hypot(255.0, 127.5))
    assert colorfulness(red.astype(np.float32) / 255.0) == pytest.approx(colorfulness(red))
    assert colorfulness(red.astype(np.uint16) * 257) == pytest.approx(colorfulness(red))
    rgba = np.concatenate([red, np.zeros((8, 8, 1), np.uint8)], axis=2)
    assert colorfulness(rgba) == pytest.approx(colorfulness(red))
    # Hasler-Suesstrunk by hand on a random image
    rgb = np.random.default_rng(0).integers(0, 256, size=(20, 30, 3)).astype(np.float64)
    rg = rgb[..., 0] - rgb[..., 1]
    yb = 0.5 * (rgb[..., 0] + rgb[..., 1]) - rgb[..., 2]
    ref = np.sqrt(rg.std() ** 2 + yb.std() ** 2) + 0.3 * np.sqrt(rg.mean() ** 2 + yb.mean() ** 2)
    assert colorfulness(rgb.astype(np.uint8)) == pytest.approx(ref)


# --------------------------------------------------------------------------- DICOM tags


def test_ct_modality_rejected() -> None:
    layer = check_tags(dicom_meta(modality="CT"), CFG)
    assert layer.status == "rejected"
    assert layer.detail == "This is a CT image (Modality CT); only plain radiographs (X-ray) are supported."


@pytest.mark.parametrize("modality", ["MR", "US", "NM", "PT", "SR", "ZZ"])
def test_other_modalities_rejected(modality: str) -> None:
    layer = check_tags(dicom_meta(modality=modality), CFG)
    assert layer.status == "rejected"
    assert f"(Modality {modality})" in layer.detail


@pytest.mark.parametrize("modality", ["CR", "DX", "dx ", "OT"])
def test_radiograph_modalities_pass(modality: str) -> None:
    assert check_tags(dicom_meta(modality=modality), CFG).status == "passed"


def test_pydicom_ct_small_rejected_by_tags() -> None:
    path = get_testdata_file("CT_small.dcm", download=False)
    assert path is not None
    ds = pydicom.dcmread(path)
    meta = StudyMeta(
        source="dicom", modality=ds.Modality, body_part=ds.get("BodyPartExamined"),
        photometric=ds.PhotometricInterpretation, bits_stored=int(ds.BitsStored),
        original_shape=(int(ds.Rows), int(ds.Columns)), original_dtype=str(ds.pixel_array.dtype),
    )
    arr = ds.pixel_array.astype(np.float32)
    pixels = (arr - arr.min()) / (arr.max() - arr.min())
    result = run_gate(pixels, meta, CFG)
    assert not result.accepted
    assert result.reason is not None and "CT image" in result.reason
    assert [layer.status for layer in result.layers] == ["rejected", "skipped", "skipped"]


def test_knee_rejected() -> None:
    layer = check_tags(dicom_meta(modality="CR", body_part="KNEE"), CFG)
    assert layer.status == "rejected"
    assert layer.detail == "Body part 'KNEE' is not the spine."


@pytest.mark.parametrize("body_part", [
    "LSPINE", "L SPINE", "L-SPINE", "CSPINE", "C SPINE", "SPINE LUMBAR", "T-Spine", "lumbar",
    "WHOLE SPINE", "Spinal column", "LUMBOSACRAL", "CHEST",
])
def test_spine_body_parts_pass(body_part: str) -> None:
    assert is_spine_body_part(body_part, CFG)
    layer = check_tags(dicom_meta(modality="DX", body_part=body_part), CFG)
    assert layer.status == "passed", layer


@pytest.mark.parametrize("body_part", ["KNEE", "HAND", "SKULL", "FOOT", "SHOULDER"])
def test_non_spine_body_parts_rejected(body_part: str) -> None:
    assert check_tags(dicom_meta(modality="DX", body_part=body_part), CFG).status == "rejected"


def test_missing_tags_pass_and_say_so() -> None:
    layer = check_tags(dicom_meta(), CFG)  # VinDr: no Modality, no BodyPartExamined
    assert layer.status == "passed"
    assert "absent" in layer.detail
    assert "BodyPartExamined" in layer.detail and "Modality" in layer.detail
    for placeholder in ("", "  ", "OTHER", "unknown"):
        layer = check_tags(dicom_meta(modality="CR", body_part=placeholder), CFG)
        assert layer.status == "passed", placeholder


def test_raster_has_no_tags() -> None:
    assert check_tags(RASTER, CFG) == LayerResult("tags", "skipped", "no DICOM tags")


# --------------------------------------------------------------------------- image statistics


@pytest.mark.parametrize("value", [0.0, 0.5, 1.0])
def test_blank_image_rejected(value: float) -> None:
    pixels = np.full((512, 400), value, np.float32)
    layer = check_image(pixels, RASTER, CFG)
    assert layer.status == "rejected"
    assert layer.detail == "The image is blank or has almost no contrast."


def test_nearly_flat_noise_rejected() -> None:
    pixels = 0.5 + np.random.default_rng(0).normal(0, 0.005, (512, 400)).astype(np.float32)
    assert check_image(pixels, RASTER, CFG).status == "rejected"


def test_strip_rejected_by_aspect() -> None:
    pixels = spine_like(1000, 50)
    result = run_gate(pixels, RASTER, CFG)
    assert not result.accepted
    assert result.reason == "Aspect ratio 1:20 is implausible for a radiograph."
    landscape = check_image(spine_like(50, 450), RASTER, CFG)
    assert landscape.detail == "Aspect ratio 1:9 is implausible for a radiograph."


@pytest.mark.parametrize("name", ["horse", "binary_blobs"])
def test_black_and_white_drawings_rejected(name: str) -> None:
    pixels = getattr(skimage.data, name)().astype(np.float32)
    pixels /= pixels.max()
    layer = check_image(pixels, RASTER, CFG)
    assert layer.status == "rejected"
    assert "black and white" in layer.detail


def test_rendered_text_document_rejected() -> None:
    page = np.ones((800, 600), np.float32)
    rng = np.random.default_rng(0)
    for row in range(40, 760, 24):  # lines of "words": black bars with a 1 px anti-aliased edge
        x = 40
        while x < 540:
            n = int(rng.integers(15, 60))
            page[row:row + 10, x:x + n] = 0.0
            page[row - 1, x:x + n] = 0.5
            x += n + 8
    layer = check_image(page, RASTER, CFG)
    assert layer.status == "rejected"


def test_image_result_with_nan_pixels_still_judged() -> None:
    pixels = spine_like(512, 400)
    pixels[:10] = np.nan
    assert check_image(pixels, RASTER, CFG).status == "passed"
    assert check_image(np.full((64, 64), np.nan, np.float32), RASTER, CFG).status == "rejected"


# --------------------------------------------------------------------------- feature-space OOD


@pytest.fixture(scope="module")
def ood() -> FeatureOOD:
    train = np.random.default_rng(1).standard_normal((200, 32))
    return FeatureOOD.fit(train, percentile=99.0)


def test_feature_ood_fit_and_separation(ood: FeatureOOD) -> None:
    assert ood.n_components == 32 and ood.n_features == 32 and ood.n_train == 200
    rng = np.random.default_rng(2)
    inside = rng.standard_normal((2000, 32))
    below = float(np.mean(ood.distance(inside) <= ood.threshold))
    assert 0.96 <= below <= 1.0  # out-of-sample (~99 %); the in-sample rate is 99 % by construction
    shifted = rng.standard_normal((200, 32)) + 6.0
    assert np.all(ood.distance(shifted) > ood.threshold)


def test_feature_ood_components_capped() -> None:
    rng = np.random.default_rng(3)
    # (M - 1) // 2 for the M = 8 images each of the 5 cross-fits sees: the residual stays estimable
    assert FeatureOOD.fit(rng.standard_normal((10, 50))).n_components == 3
    assert FeatureOOD.fit(rng.standard_normal((10, 50)), folds=1).n_components == 4  # in-sample: M = N
    assert FeatureOOD.fit(rng.standard_normal((300, 100)), max_components=16).n_components == 16
    assert FeatureOOD.fit(np.c_[rng.standard_normal((40, 5)), np.ones(40)]).n_components == 6  # constant col


def test_feature_ood_threshold_holds_for_unseen_images_when_features_outnumber_images() -> None:
    """150 training images, 600 correlated features (a trained bundle's regime: thousands of pooled features):
    the cross-fitted threshold accepts unseen images of the same distribution at about the stated rate, where
    a threshold from in-sample distances rejects nearly all of them; a shifted distribution is still refused."""
    rng = np.random.default_rng(12)
    mixing = rng.standard_normal((20, 600))

    def sample(n: int) -> np.ndarray:
        return rng.standard_normal((n, 20)) @ mixing + rng.standard_normal((n, 600))

    train, unseen = sample(150), sample(400)
    ood = FeatureOOD.fit(train, percentile=99.0)
    assert np.mean(ood.distance(unseen) <= ood.threshold) >= 0.95
    assert np.mean(ood.distance(train) <= ood.threshold) >= 0.99
    in_sample = FeatureOOD.fit(train, percentile=99.0, folds=1)
    assert np.mean(in_sample.distance(unseen) <= in_sample.threshold) < 0.2
    shifted = unseen + 3.0 * rng.standard_normal(600)
    assert np.all(ood.distance(shifted) > ood.threshold)


def test_feature_ood_sees_shifts_outside_the_kept_subspace() -> None:
    """Training data lives in a 3-D subspace of 40-D; a sample off that subspace must be far."""
    rng = np.random.default_rng(11)
    basis = np.linalg.qr(rng.standard_normal((40, 3)))[0].T  # 3 x 40
    train = rng.standard_normal((200, 3)) @ basis + 0.01 * rng.standard_normal((200, 40))
    ood = FeatureOOD.fit(train, max_components=3)
    inside = rng.standard_normal((50, 3)) @ basis + 0.01 * rng.standard_normal((50, 40))
    orthogonal = np.linalg.qr(np.c_[basis.T, rng.standard_normal(40)])[0][:, 3]
    off = inside[:5] + 0.5 * orthogonal  # small in norm, but where the training data never goes
    assert np.mean(ood.distance(inside) <= ood.threshold) > 0.9
    assert np.all(ood.distance(off) > ood.threshold)


def test_feature_ood_check_messages(ood: FeatureOOD) -> None:
    far = check_features(np.full((1, 32), 6.0), ood)
    assert far.status == "rejected"
    assert far.detail.startswith("Image features are far from the training radiographs (distance ")
    assert f"> threshold {ood.threshold:.1f} at the 99th percentile)." in far.detail
    near = check_features(np.zeros(32), ood)
    assert near.status == "passed"
    assert check_features(np.full(32, np.nan), ood).status == "rejected"
    with pytest.raises(ValueError):
        check_features(np.zeros((2, 32)), ood)
    with pytest.raises(ValueError):
        ood.distance(np.zeros((1, 31)))


def test_check_features_skipped_without_statistics(ood: FeatureOOD) -> None:
    assert check_features(np.zeros(32), None) == LayerResult(
        "features", "skipped", "no feature statistics in this model bundle (untrained)")
    assert check_features(None, ood).status == "skipped"


def test_feature_ood_save_load_round_trip(ood: FeatureOOD, tmp_path) -> None:
    path = ood.save(tmp_path / "ood.npz")
    assert path.exists()
    with np.load(path, allow_pickle=False) as data:  # numpy-only: no object arrays
        assert set(data.files) == {"mean", "scale", "components", "location", "precision",
                                   "threshold", "percentile", "n_train", "residual_scale"}
        assert all(data[k].dtype != object for k in data.files)
    with zipfile.ZipFile(path) as zf:
        assert all(name.endswith(".npy") for name in zf.namelist())
    loaded = FeatureOOD.load(path)
    x = np.random.default_rng(4).standard_normal((50, 32)) * 2
    np.testing.assert_array_equal(loaded.distance(x), ood.distance(x))
    assert (loaded.threshold, loaded.percentile, loaded.n_train) == (ood.threshold, 99.0, 200)
    # exact file name kept even without the .npz suffix
    assert ood.save(tmp_path / "stats.bin").name == "stats.bin"
    np.testing.assert_array_equal(FeatureOOD.load(tmp_path / "stats.bin").distance(x), ood.distance(x))


def test_feature_ood_load_rejects_bad_files(ood: FeatureOOD, tmp_path) -> None:
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, mean=np.array([{"a": 1}], dtype=object))
    with pytest.raises(BundleError):
        FeatureOOD.load(pickled)  # object array needs pickle -> refused
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip")
    with pytest.raises(BundleError):
        FeatureOOD.load(garbage)
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, mean=ood.mean, scale=ood.scale, components=ood.components[:, :5], location=ood.location,
             precision=ood.precision, threshold=ood.threshold, percentile=99.0, n_train=200)
    with pytest.raises(BundleError):
        FeatureOOD.load(wrong)


# --------------------------------------------------------------------------- the whole gate


def test_run_gate_with_features(ood: FeatureOOD) -> None:
    pixels = spine_like(600, 500)
    meta = dicom_meta(modality="DX", body_part="L-SPINE")
    ok = run_gate(pixels, meta, CFG, features=np.zeros(32), ood=ood)
    assert ok.accepted and ok.reason is None
    assert [layer.status for layer in ok.layers] == ["passed", "passed", "passed"]
    bad = run_gate(pixels, meta, CFG, features=np.full(32, 6.0), ood=ood)
    assert not bad.accepted and bad.reason is not None and "far from the training" in bad.reason
    assert bad.layers[-1].status == "rejected"


def test_gate_result_to_dict_is_json_ready() -> None:
    result = run_gate(spine_like(300, 200), dicom_meta(modality="MR"), CFG)
    assert isinstance(result, GateResult)
    data = json.loads(json.dumps(result.to_dict()))
    assert data["accepted"] is False
    assert data["reason"].startswith("This is an MRI image (Modality MR)")
    assert data["layers"] == [
        {"name": "tags", "status": "rejected", "detail": data["reason"]},
        {"name": "image", "status": "skipped", "detail": "not run"},
        {"name": "features", "status": "skipped", "detail": "not run"},
    ]

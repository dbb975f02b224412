"""Real scanner files (issue 44): DICOM and NIfTI read by the one decoder, the same file
reaching the model alike in training and in predict, splits that keep a patient or
volume on one side, and predict over volumes and folders."""

import csv
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

pydicom = pytest.importorskip("pydicom")
nib = pytest.importorskip("nibabel")

from pydicom.data import get_testdata_file  # noqa: E402

from brainjax.data import decode, phantom  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SARTAJ = os.path.join(ROOT, "..", "shared", "data", "sartaj", "Testing", "glioma_tumor")
DICOM_DIR = os.path.dirname(get_testdata_file("MR_small.dcm"))
NIFTI_DIR = os.path.join(os.path.dirname(nib.__file__), "tests", "data")
SERIES = os.path.join(DICOM_DIR, "dicomdirtests", "98892003", "MR700")


def write_dicom(path, pixels, patient="P1", series="1.2.3.1", position=0.0, instance=1, slope=1.0, intercept=0.0,
                photometric="MONOCHROME2", window=None):
    """A 16-bit DICOM MR slice: stored = (values - intercept) / slope."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = MRImageStorage, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID, ds.StudyInstanceUID, ds.SeriesInstanceUID = "MR", patient, series + ".9", series
    ds.InstanceNumber = instance
    ds.ImagePositionPatient, ds.ImageOrientationPatient = [0.0, 0.0, float(position)], [1, 0, 0, 0, 1, 0]
    stored = np.round((np.asarray(pixels, np.float64) - intercept) / slope).astype(np.uint16)
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if window:
        ds.WindowCenter, ds.WindowWidth = window
    ds.PixelData = stored.tobytes()
    ds.save_as(str(path), enforce_file_format=True)
    return str(path)


def a_slice(size=128) -> np.ndarray:
    """One real Sartaj slice where the data is here, else a phantom slice; stretched to
    maximum 255 (a display-ready export: the case where every format must agree)."""
    if os.path.isdir(SARTAJ):
        name = sorted(os.listdir(SARTAJ))[0]
        gray = np.asarray(Image.open(os.path.join(SARTAJ, name)).convert("L").resize((size, size)), np.float64)
    else:
        gray = phantom.generate_slice(5, 3, 0, size)[..., 0].astype(np.float64)
    return (gray / gray.max() * 255.0 + 0.5).astype(np.uint8)


# ------------------------------------------------------------------ the decoder on shipped files

def test_pydicom_files_read_with_window_and_metadata():
    ref = decode.read(get_testdata_file("MR_small.dcm")).slices
    assert len(ref) == 1 and ref[0].pixels.shape == (64, 64) and ref[0].pixels.dtype == np.uint8
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    c, w = float(ds.WindowCenter), float(ds.WindowWidth)
    expected = np.clip(((ds.pixel_array.astype(float) - (c - 0.5)) / (w - 1) + 0.5), 0, 1) * 255 + 0.5
    np.testing.assert_array_equal(ref[0].pixels, expected.astype(np.uint8))  # the VOI window, not the maximum
    assert ref[0].meta["PatientID"] == "4MR1" and ref[0].group == "patient:4MR1"
    assert {"StudyInstanceUID", "SeriesInstanceUID", "SlicePosition"} <= set(ref[0].meta)
    for name in ("MR_small_RLE.dcm", "MR_small_bigendian.dcm"):  # pydicom decodes these itself
        np.testing.assert_array_equal(decode.read(get_testdata_file(name)).slices[0].pixels, ref[0].pixels)
    for name in ("MR_small_jpeg_ls_lossless.dcm", "MR_small_jp2klossless.dcm"):
        path = get_testdata_file(name)
        try:
            pixels = decode.read(path).slices[0].pixels
        except decode.UnreadableImage as err:  # no decoder plugin installed: one line naming syntax and package
            text = str(err)
            assert "\n" not in text and name in text and "pip install pylibjpeg" in text
            assert str(pydicom.dcmread(path).file_meta.TransferSyntaxUID.name) in text
        else:
            np.testing.assert_array_equal(pixels, ref[0].pixels)  # lossless


def test_a_dicom_series_folder_is_sorted_along_the_slice_normal():
    slices = decode.read(SERIES).slices
    assert len(slices) == 7 and all(s.of_volume and s.source == SERIES for s in slices)
    positions = [s.meta["SlicePosition"] for s in slices]
    assert positions == sorted(positions)
    files = [s.meta["file"] for s in slices]
    assert files != sorted(files)  # the file names are not in slice order: the sort did it
    assert len({s.group for s in slices}) == 1 and slices[0].group.startswith("patient:")


def test_nifti_volume_is_canonical_one_scale_and_skips_empty_slices(tmp_path):
    decoded = decode.read(os.path.join(NIFTI_DIR, "anatomical.nii"))
    assert len(decoded.slices) + decoded.skipped == nib.as_closest_canonical(
        nib.load(os.path.join(NIFTI_DIR, "anatomical.nii"))).shape[2]
    with pytest.raises(decode.UnreadableImage, match=r"example4d.nii.gz: a 4-D volume"):
        decode.read(os.path.join(NIFTI_DIR, "example4d.nii.gz"))
    # a volume with empty slices: they are skipped and counted
    volume = np.zeros((32, 32, 6), np.float32)
    volume[4:28, 4:28, 1:4] = np.array([100.0, 50.0, 25.0])  # one bright, two dimmer slices
    nib.save(nib.Nifti1Image(volume, np.eye(4)), str(tmp_path / "v.nii.gz"))
    decoded = decode.read(str(tmp_path / "v.nii.gz"))
    assert [s.index for s in decoded.slices] == [1, 2, 3] and decoded.skipped == 3
    assert [int(s.pixels.max()) for s in decoded.slices] == [255, 128, 64]  # one scale: dim slices stay dim
    # reoriented: the same voxels stored flipped along x give the same slices
    flipped = np.eye(4)
    flipped[0, 0], flipped[0, 3] = -1.0, 31.0
    nib.save(nib.Nifti1Image(volume[::-1].copy(), flipped), str(tmp_path / "flipped.nii.gz"))
    for a, b in zip(decoded.slices, decode.read(str(tmp_path / "flipped.nii.gz")).slices):
        np.testing.assert_array_equal(a.pixels, b.pixels)


def test_monochrome1_is_inverted_and_a_window_is_applied(tmp_path):
    gray = a_slice(32).astype(np.float64) * 16
    plain = decode.read(write_dicom(tmp_path / "m2.dcm", gray)).slices[0].pixels
    inverted = decode.read(write_dicom(tmp_path / "m1.dcm", gray, photometric="MONOCHROME1")).slices[0].pixels
    np.testing.assert_array_equal(inverted, 255 - plain)
    windowed = decode.read(write_dicom(tmp_path / "w.dcm", gray, window=(1000.0, 1000.0))).slices[0].pixels
    assert windowed.max() == 255 and (windowed == 255).mean() > (plain == 255).mean()


# ------------------------------------------------------------------ one file, every path, every format

def write_formats(folder, gray) -> dict[str, str]:
    """The same slice as 8-bit PNG, 16-bit PNG (x16), EXIF-rotated PNG and JPEG, RGBA on a
    transparent white background, TIFF, and a 16-bit DICOM with slope / intercept."""
    os.makedirs(folder, exist_ok=True)
    out = {}
    out["png8"] = os.path.join(folder, "png8.png")
    Image.fromarray(gray).save(out["png8"])
    out["png16"] = os.path.join(folder, "png16.png")
    Image.fromarray((gray.astype(np.uint16) * 16)).save(out["png16"])
    rotated = np.rot90(gray, 1)  # stored rotated; EXIF orientation 6 turns it back
    exif = Image.Exif()
    exif[0x0112] = 6
    out["exif_png"] = os.path.join(folder, "exif.png")
    Image.fromarray(np.ascontiguousarray(rotated)).save(out["exif_png"], exif=exif)
    out["exif_jpeg"] = os.path.join(folder, "exif.jpg")
    Image.fromarray(np.ascontiguousarray(rotated)).save(out["exif_jpeg"], exif=exif, quality=100)
    rgba = np.zeros((*gray.shape, 4), np.uint8)
    rgba[..., :3] = np.where(gray[..., None] > 0, gray[..., None], 255)  # a white background...
    rgba[..., 3] = np.where(gray > 0, 255, 0)  # ...that is transparent
    out["rgba"] = os.path.join(folder, "rgba.png")
    Image.fromarray(rgba, "RGBA").save(out["rgba"])
    out["tiff"] = os.path.join(folder, "slice.tif")
    Image.fromarray(gray).save(out["tiff"])
    out["dicom"] = write_dicom(os.path.join(folder, "slice.dcm"), gray.astype(np.float64) * 16, slope=2.0,
                               intercept=-100.0)
    return out


def test_one_slice_in_every_format_reaches_the_model_alike_in_training_and_predict(one_epoch_run, tmp_path):
    """Each file is decoded for training by an image_folder build (stored PNG -> the
    pipeline's resize) and for predict by `decode.model_input`: the same uint8 array.
    Across the lossless formats, predict's probabilities agree within 1e-5; the JPEG
    (lossy) is oriented like the others."""
    import tensorflow_datasets as tfds

    from brainjax import inference, run
    from brainjax.data import pipeline

    gray = a_slice()
    tree = tmp_path / "tree"
    formats = write_formats(str(tree / "a"), gray)
    for i in range(6):  # a second class, so the folder is a dataset
        Image.fromarray(phantom.generate_slice(9, i, 2, 128)[..., 0]).save(_mk(tree / "b") / f"{i}.png")
    workdir, flags = one_epoch_run
    config = inference.inference_config(flags, workdir)
    size = int(config.image_size)
    builder = pipeline.prepared_builder("image_folder", str(tmp_path / "tfds"), str(tree), test_fraction=0.0)
    trained = {}
    for split in builder.info.splits:
        for ex in tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False)):
            trained[ex["filename"].decode()] = pipeline.host_gray_resized(ex["image"], size)
    pred = run.predict_images(config, workdir, list(formats.values()))
    assert pred["failures"] == 0 and pred["paths"] == list(formats.values())
    for (kind, path), image in zip(formats.items(), pred["images"]):
        np.testing.assert_array_equal(image, trained[os.path.relpath(path, tree)], err_msg=kind)
    lossless = [i for i, k in enumerate(formats) if k != "exif_jpeg"]
    probs = pred["probabilities"]
    assert np.abs(probs[lossless] - probs[lossless[0]]).max() < 1e-5, dict(zip(formats, probs.round(6)))
    for kind in ("png16", "exif_png", "rgba", "tiff", "dicom"):
        np.testing.assert_array_equal(decode.read(formats[kind]).slices[0].pixels, gray, err_msg=kind)
    jpeg = decode.read(formats["exif_jpeg"]).slices[0].pixels.astype(float)
    assert np.abs(jpeg - gray).mean() < 2.0  # oriented as the others (rotated, it would differ by far more)


def _mk(path):
    os.makedirs(path, exist_ok=True)
    return path


# ------------------------------------------------------------------ splits

def test_no_patient_series_or_volume_lands_in_two_splits(tmp_path):
    import tensorflow_datasets as tfds

    from brainjax.data import pipeline

    tree = tmp_path / "scans"
    rng = np.random.default_rng(0)
    owner = {}
    for label, cls in enumerate(("glioma", "no_tumor")):
        for p in range(6):  # DICOM: 6 patients per class, 4 slices each, files loose in the patient folder
            patient = f"{cls}-P{p}"
            for k in range(4):
                pixels = phantom.generate_slice(20 + p, 10 * k + label, 0 if label == 0 else 2, 48)[..., 0] * 8.0
                path = write_dicom(_mk(tree / cls / patient) / f"{k}.dcm", pixels, patient=patient,
                                   series=f"1.2.{label}.{p}", position=float(k), instance=k + 1)
                owner[os.path.relpath(path, tree)] = patient
        for v in range(4):  # NIfTI: 4 volumes per class, 5 slices each
            volume = np.stack([phantom.generate_slice(50 + v, 7 * k + label, 0 if label == 0 else 2, 48)[..., 0]
                               for k in range(5)], axis=-1).astype(np.float32) + rng.normal(0, 1, (48, 48, 5))
            path = _mk(tree / cls / "volumes") / f"v{v}.nii.gz"
            nib.save(nib.Nifti1Image(np.clip(volume, 0, None).astype(np.float32), np.eye(4)), str(path))
            owner[os.path.relpath(path, tree)] = f"volume {cls}/{v}"
    builder = pipeline.prepared_builder("image_folder", str(tmp_path / "tfds"), str(tree), test_fraction=0.25)
    where: dict[str, set] = {}
    for split in ("test", "train_sub", "validation"):
        for ex in tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False)):
            source = ex["filename"].decode().split("#")[0]
            where.setdefault(owner[source], set()).add(split)
    assert len(where) == len(set(owner.values())) == 20  # every patient and volume was read
    assert sum(1 for splits in where.values() for _ in splits) == 20
    assert all(len(splits) == 1 for splits in where.values()), {k: v for k, v in where.items() if len(v) > 1}
    report = json.load(open(os.path.join(builder.report_dir(), "build_report.json")))
    assert report["splits"]["train"]["groups"] + report["splits"]["test"]["groups"] == 20
    assert report["splits"]["train"]["count"] + report["splits"]["test"]["count"] == 12 * 4 + 8 * 5


def test_groups_csv_keeps_the_files_of_one_group_together(tmp_path):
    import tensorflow_datasets as tfds

    from brainjax.data import pipeline

    tree = tmp_path / "jpegs"
    rows = ["path,group"]
    for label, cls in enumerate(("a", "b")):
        for i in range(24):
            path = _mk(tree / cls) / f"{i}.png"
            Image.fromarray(phantom.generate_slice(3, 100 * label + i, 2 * label, 48)[..., 0]).save(path)
            rows.append(f"{cls}/{i}.png,{cls}-patient{i // 4}")
    (tree / "groups.csv").write_text("\n".join(rows) + "\n")
    builder = pipeline.prepared_builder("image_folder", str(tmp_path / "tfds"), str(tree), test_fraction=0.25)
    where: dict[str, set] = {}
    for split in ("test", "train_sub", "validation"):
        for ex in tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False)):
            cls, name = ex["filename"].decode().split("/")
            where.setdefault(f"{cls}-{int(name[:-4]) // 4}", set()).add(split)
    assert len(where) == 12 and all(len(s) == 1 for s in where.values()), where
    assert len({s for v in where.values() for s in v}) == 3  # the groups do spread over the splits


# ------------------------------------------------------------------ predict over volumes and folders

def test_predict_on_a_volume_equals_predict_on_its_slices_as_png(one_epoch_run, tmp_path, capsys):
    from brainjax import inference, run

    workdir = str(tmp_path / "run")
    shutil.copytree(one_epoch_run[0], workdir)
    os.remove(os.path.join(workdir, "calibration.json"))  # no abstention: every slice counts in the summary
    config = inference.inference_config(one_epoch_run[1], workdir)
    volume = os.path.join(NIFTI_DIR, "anatomical.nii")
    decoded = decode.read(volume)
    pngs = []
    for s in decoded.slices:
        pngs.append(str(tmp_path / f"slice{s.index:03d}.png"))
        Image.fromarray(s.pixels).save(pngs[-1])
    by_volume = run.predict_images(config, workdir, [volume])
    by_png = run.predict_images(config, workdir, pngs)
    np.testing.assert_allclose(by_volume["probabilities"], by_png["probabilities"], atol=1e-6)
    csv_path = tmp_path / "out" / "predictions.csv"
    assert run.predict_files(config, workdir, [volume], predictions=str(csv_path)) == 0
    printed = capsys.readouterr().out.splitlines()
    summary = [line for line in printed if "volume summary" in line]
    assert len(summary) == 1 and summary[0].startswith(f"{volume}: volume summary: ")
    assert f"of {len(decoded.slices)} slices kept" in summary[0]
    rows = list(csv.DictReader(open(csv_path)))
    assert len(rows) == len(decoded.slices) and [int(r["slice"]) for r in rows] == [s.index for s in decoded.slices]
    names = inference.class_names(config, workdir)
    np.testing.assert_allclose([[float(r[f"p_{c}"]) for c in names] for r in rows], by_volume["probabilities"],
                               atol=1e-6)
    assert {"quality", "ood_score", "abstain_reason", "predicted"} <= set(rows[0])


def test_predict_over_a_folder_reads_series_volumes_and_images_and_names_bad_files(one_epoch_run, tmp_path, capsys,
                                                                                    scan_files):
    from brainjax import inference, run

    workdir, flags = one_epoch_run
    config = inference.inference_config(flags, workdir)
    folder = tmp_path / "site"
    shutil.copytree(SERIES, folder / "series")
    shutil.copy(os.path.join(NIFTI_DIR, "anatomical.nii"), folder / "anat.nii")
    shutil.copy(scan_files[0], folder / os.path.basename(scan_files[0]))
    (folder / "broken.png").write_bytes(b"not a png")
    (folder / "notes.txt").write_text("not a scan")  # not a scan: not an input either
    failures = run.predict_files(config, workdir, [str(folder)])
    out, err = capsys.readouterr()
    assert failures == 1 and len([line for line in err.splitlines() if line.startswith("ERROR")]) == 1
    assert "broken.png" in err
    assert sum("volume summary" in line for line in out.splitlines()) == 2  # the series and the volume
    assert sum(line.startswith(str(folder / "series") + "[slice ") for line in out.splitlines()) == 7


def test_the_shipped_files_through_an_image_folder_build_and_predict(one_epoch_run, tmp_path, capsys):
    """pydicom's MR_small family and series folder, nibabel's anatomical.nii and 4-D
    example: built into a dataset (the unreadable ones listed with why) and predicted
    (one ERROR line each for the unreadable; the decodable encodings of MR_small agree)."""
    import tensorflow_datasets as tfds

    from brainjax import inference, run
    from brainjax.data import pipeline

    tree = tmp_path / "shipped"
    names = ["MR_small.dcm", "MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm"]
    for name in names:
        shutil.copy(get_testdata_file(name), _mk(tree / "a" / name[:-4]) / name)  # each its own "series"
    shutil.copytree(SERIES, tree / "b" / "MR700")
    for name in ("anatomical.nii", "example4d.nii.gz"):
        shutil.copy(os.path.join(NIFTI_DIR, name), tree / "b" / name)
    builder = pipeline.prepared_builder("image_folder", str(tmp_path / "tfds"), str(tree), test_fraction=0.0)
    report = json.load(open(os.path.join(builder.report_dir(), "build_report.json")))
    unreadable = {u["file"]: u["error"] for u in report["unreadable"]}
    assert "4-D" in unreadable.pop(os.path.join("b", "example4d.nii.gz"))
    readable = {n for n in names if n[:-4] not in {os.path.basename(f) for f in unreadable}}
    assert all("pip install pylibjpeg" in e for e in unreadable.values())  # at most the JPEG-LS file
    stored = [ex["filename"].decode() for split in builder.info.splits
              for ex in tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False))]
    anat = len(decode.read(os.path.join(NIFTI_DIR, "anatomical.nii")).slices)
    assert len(set(stored)) == len(readable) + 7 + anat

    workdir, flags = one_epoch_run
    config = inference.inference_config(flags, workdir)
    files = [str(tree / "a" / n[:-4] / n) for n in names]
    pred = run.predict_images(config, workdir, files)
    capsys.readouterr()
    assert pred["failures"] == len(names) - len(readable) and len(pred["paths"]) == len(readable)
    assert np.abs(pred["probabilities"] - pred["probabilities"][0]).max() < 1e-6

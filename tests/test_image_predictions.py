"""`lcq predict`: image files through the integer reference, read as the training set's images were; their errors."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from compiler import format as model_format
from compiler.reference import predict
from lcq.cli import main
from lcq_train import image_file
from lcq_train.data import load_dataset
from lcq_train.image_file import image_files, read_image

DATA = Path(__file__).parent / "data"
DIGITS = DATA / "digits-cnn-lcq-w3a3.lcq"
RESNET = DATA / "cifar10-resnet20-lcq-w3a3.lcq"


@pytest.fixture(scope="module")
def digits():
    data = load_dataset("digits")
    return model_format.load(DIGITS), data.test_x[:6].numpy(), data.test_y[:6].numpy()


def test_test_images_saved_as_png_are_classified_as_the_reference_classifies_them(digits, tmp_path, capsys):
    model, images, _ = digits
    paths = []
    for i, image in enumerate(images):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(image[0]).save(paths[-1])
    assert main(["predict", str(DIGITS), *map(str, paths), "--json", "--top", "2"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    logits = predict(model, images)
    assert [r["logits"] for r in records] == logits.tolist()
    assert [r["class"] for r in records] == logits.argmax(axis=1).tolist()
    for r, row in zip(records, logits):
        assert r["note"] is None and r["name"] == str(r["class"]) and len(r["top"]) == 2
        assert r["top"][0]["logit"] == pytest.approx(row.max() * model.scales[model.logits])
        assert r["top"][0]["logit"] > r["top"][1]["logit"]


def test_the_shipped_cifar10_test_images_are_what_the_resnet_says(capsys):
    """The README's example: three CIFAR-10 test JPEGs at the model's size (no note), each classified as its name
    (RGB in the order the data set loader decodes it: a channel or axis order mixed up would not give these)."""
    files = sorted((DATA / "images").glob("cifar10-test-*.jpg"))
    assert len(files) == 3
    assert main(["predict", str(RESNET), *map(str, files), "--json"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["name"] for r in records] == [f.name.split("-")[2] for f in files] == ["cat", "horse", "ship"]
    assert all(r["note"] is None for r in records)


def test_a_directory_is_its_png_and_jpeg_files_in_name_order(tmp_path, capsys):
    for name in ("b.PNG", "a.jpg", "c.jpeg"):
        Image.new("L", (8, 8)).save(tmp_path / name, format="PNG" if name.endswith("PNG") else "JPEG")
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "more.png").mkdir()                        # (a directory is not one of its files)
    Image.new("L", (8, 8)).save(tmp_path / "more.png" / "d.png")
    assert image_files([str(tmp_path), str(tmp_path / "more.png" / "d.png")]) == [
        str(tmp_path / name) for name in ("a.jpg", "b.PNG", "c.jpeg")] + [str(tmp_path / "more.png" / "d.png")]
    assert main(["predict", str(DIGITS), str(tmp_path), "--json"]) == 0
    assert [json.loads(line)["image"] for line in capsys.readouterr().out.splitlines()] == [
        str(tmp_path / name) for name in ("a.jpg", "b.PNG", "c.jpeg")]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["predict", str(DIGITS), str(empty)]) == 2
    assert f"{empty} is a directory without PNG or JPEG files" in capsys.readouterr().err


def test_a_photo_is_made_the_models_input_and_said_so(tmp_path, capsys):
    """An RGB JPEG of another size, for the CIFAR-10 model: the reference sees its middle, resized; the line names
    the class by its CIFAR-10 name and says what was done to the image."""
    rng = np.random.default_rng(0)
    photo = tmp_path / "photo.jpg"
    Image.fromarray(rng.integers(0, 256, (48, 80, 3), dtype=np.uint8)).save(photo)
    model = model_format.load(RESNET)
    assert main(["predict", str(RESNET), str(photo)]) == 0
    line = capsys.readouterr().out.strip()
    expected, _ = read_image(photo, (3, 32, 32))
    top = int(predict(model, expected[None]).argmax())
    names = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
    assert line.startswith(f"{photo}: {names[top]} ({top}); logits {names[top]} ({top}) ")
    assert line.endswith("[80x48 cropped to the model's aspect ratio and resized to 32x32]")


def test_the_middle_is_kept_at_the_models_aspect_ratio(tmp_path):
    """A wide image loses its sides, a tall one its top and bottom; grey becomes RGB for an RGB model."""
    wide = np.zeros((4, 12), dtype=np.uint8)
    wide[:, 4:8] = 200                      # the middle 4 x 4 square
    Image.fromarray(wide).save(tmp_path / "wide.png")
    image, note = read_image(tmp_path / "wide.png", (3, 4, 4))
    assert (image == 200).all() and note == "converted from L to RGB; 12x4 cropped to the model's aspect ratio and " \
                                           "resized to 4x4"
    tall = np.zeros((12, 4), dtype=np.uint8)
    tall[4:8] = 100
    Image.fromarray(tall).save(tmp_path / "tall.png")
    image, _ = read_image(tmp_path / "tall.png", (1, 4, 4))
    assert image.shape == (1, 4, 4) and (image == 100).all()


def _gif(path):
    Image.new("L", (8, 8)).save(path, format="GIF")


def _sixteen_bits(path):
    Image.fromarray(np.zeros((8, 8), dtype=np.uint16)).save(path)


@pytest.mark.parametrize("name, make, says", [
    ("notes.png", lambda p: p.write_text("not an image"), "not a PNG or JPEG file (the formats read)"),
    ("anim.gif", _gif, "not a PNG or JPEG file (the formats read)"),
    ("deep.png", _sixteen_bits, "an image of Pillow mode I;16 (16 bits or more a channel); save it as an 8-bit"),
    ("cut.png", lambda p: p.write_bytes(_png_bytes()[:2000]), "cannot read it as an image"),
    ("missing.png", None, "no image file"),
])
def test_what_is_not_an_8_bit_png_or_jpeg_is_refused_naming_the_file(name, make, says, tmp_path, capsys):
    path = tmp_path / name
    if make:
        make(path)
    assert main(["predict", str(DIGITS), str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lcq predict: error: ") and str(path) in err and says in err


def _png_bytes() -> bytes:
    import io

    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_sizes_are_checked_before_the_pixels_are_decoded(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    Image.new("L", (20, 20)).save(path)
    monkeypatch.setattr(image_file, "MAX_PIXELS", 399)
    with pytest.raises(ValueError, match=r"big.png: 20x20 pixels, more than the 399 decoded here; save it smaller"):
        read_image(path, (1, 8, 8))
    monkeypatch.setattr(image_file, "MAX_FILE_BYTES", 10)
    with pytest.raises(ValueError, match=r"big.png: \d+ bytes, more than the 10 an image file may take here"):
        read_image(path, (1, 8, 8))
    with pytest.raises(ValueError, match="a model of 2 input channels takes no image file"):
        read_image(path, (2, 8, 8))
    with pytest.raises(ValueError, match="is not a regular file"):
        read_image(tmp_path, (1, 8, 8))

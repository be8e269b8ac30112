"""Your own images as a dataset (``--dataset folder``): class folders of PNG/JPEG files or a .tar.gz of them, any
one size, grey or colour; trained, compiled and run with their class names; bad folders named with the fix."""

import hashlib
import io
import json
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from compiler import format as model_format
from lcq.cli import main
from lcq_train import checkpoint as checkpoint_format
from lcq_train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from lcq_train.data import DatasetError, load_dataset
from lcq_train.plan import QuantPlan
from lcq_train.train import TrainConfig, train

sys.path.insert(0, str(Path(__file__).parent / "data"))
from shapes_folder import CLASSES, HEIGHT, WIDTH, make_folder  # noqa: E402


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    return root, make_folder(root)


def test_a_folder_of_grey_images_loads_with_its_classes_and_pixels(folder, tmp_path, monkeypatch):
    monkeypatch.setenv("LCQ_CACHE_DIR", str(tmp_path / "cache"))
    root, written = folder
    data = load_dataset("folder", root)
    assert data.input_shape == (1, HEIGHT, WIDTH) and data.classes == CLASSES and data.num_classes == 3
    assert (len(data.train_x), len(data.test_x)) == (90, 30)
    assert data.train_y.tolist() == [0] * 30 + [1] * 30 + [2] * 30         # (class, file name) order
    assert np.array_equal(data.train_x[30, 0].numpy(), written[("train", "cross", 0)])
    assert np.array_equal(data.test_x[-1, 0].numpy(), written[("test", "ring", 9)])
    assert list((tmp_path / "cache").glob("folder-*.npz"))
    again = load_dataset("folder", root)                                      # (from the cache)
    assert np.array_equal(again.train_x.numpy(), data.train_x.numpy()) and again.classes == CLASSES


def test_one_colour_image_makes_the_dataset_rgb_and_a_tar_gz_loads_the_same(tmp_path, monkeypatch):
    monkeypatch.setenv("LCQ_CACHE_DIR", str(tmp_path / "cache"))
    written = make_folder(tmp_path / "d", per_class=(3, 2), colour_one=True)
    data = load_dataset("folder", tmp_path / "d")
    assert data.input_shape == (3, HEIGHT, WIDTH)
    assert np.array_equal(data.train_x[0].numpy().transpose(1, 2, 0), written[("train", "bar", 0)])
    grey = written[("train", "bar", 1)]
    assert all(np.array_equal(data.train_x[1, c].numpy(), grey) for c in range(3))
    archive = tmp_path / "mine.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "d" / "train", arcname="mine/train")
        tar.add(tmp_path / "d" / "test", arcname="mine/test")
    packed = load_dataset("folder", archive)
    assert np.array_equal(packed.train_x.numpy(), data.train_x.numpy()) and packed.classes == CLASSES
    assert np.array_equal(packed.test_y.numpy(), data.test_y.numpy())


def test_palette_images_of_grey_colours_keep_the_dataset_grey(tmp_path, monkeypatch):
    """A PNG saved with a palette (mode P, as image editors and optimizers write few-colour images) counts as grey
    where the colours it uses are grey; one colour pixel in one makes the dataset RGB."""
    monkeypatch.setenv("LCQ_CACHE_DIR", str(tmp_path / "cache"))
    written = make_folder(tmp_path / "d", per_class=(3, 2))
    first = tmp_path / "d" / "train" / "bar" / "000.png"
    Image.fromarray(written[("train", "bar", 0)]).convert("P").save(first)
    assert Image.open(first).mode == "P"
    data = load_dataset("folder", tmp_path / "d")
    assert data.input_shape == (1, HEIGHT, WIDTH)
    assert np.array_equal(data.train_x[0, 0].numpy(), written[("train", "bar", 0)])
    coloured = np.repeat(written[("train", "bar", 0)][..., None], 3, axis=2)
    coloured[0, 0] = (200, 10, 10)
    Image.fromarray(coloured).convert("P", palette=Image.Palette.ADAPTIVE).save(first)
    assert Image.open(first).mode == "P"
    data = load_dataset("folder", tmp_path / "d")
    assert data.input_shape == (3, HEIGHT, WIDTH)
    assert data.train_x[0, 0, 0, 0].item() != data.train_x[0, 1, 0, 0].item()


def _png(pixels) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


@pytest.mark.parametrize("case, pattern", [
    ("another size", r"train/ring/001\.png: image is 12x11, but .*train/bar/000\.png is 12x10; the images of a "
                     r"folder dataset share one size: resize them"),
    ("too large", r"train/bar/000\.png: image is 300x10, larger than the 256 x 256 of a folder dataset's images"),
    ("no images", r"folder: .*train/empty holds no image \(\.jpg/\.jpeg/\.png\); add its images or remove the folder"),
    ("test class without train", r"folder: test classes \['zebra'\] have no train folder"),
    ("one class", r"the train/<class>/ folders give 1 class\(es\), but a classifier needs at least 2"),
    ("control character", r"the class name 'b\\x07ll', which is no string of 1\.\.255 characters without control"),
    ("16-bit", r"train/cross/000\.png: an image of PIL mode I;16 \(16 bits or more a pixel\); save it as an 8-bit"),
])
def test_a_bad_folder_is_refused_naming_the_file_and_the_fix(tmp_path, monkeypatch, case, pattern):
    monkeypatch.setenv("LCQ_CACHE_DIR", str(tmp_path / "cache"))
    root = tmp_path / "d"
    make_folder(root, per_class=(2, 1))
    if case == "another size":
        (root / "train" / "ring" / "001.png").write_bytes(_png(np.zeros((11, 12), np.uint8)))
    elif case == "too large":
        (root / "train" / "bar" / "000.png").write_bytes(_png(np.zeros((10, 300), np.uint8)))
    elif case == "no images":
        (root / "train" / "empty").mkdir()
    elif case == "test class without train":
        (root / "test" / "zebra").mkdir()
        (root / "test" / "zebra" / "0.png").write_bytes(_png(np.zeros((10, 12), np.uint8)))
    elif case == "one class":
        for split in ("train", "test"):
            for name in CLASSES[1:]:
                for f in (root / split / name).iterdir():
                    f.unlink()
                (root / split / name).rmdir()
    elif case == "control character":
        (root / "train" / "bar").rename(root / "train" / "b\x07ll")
    elif case == "16-bit":
        Image.fromarray(np.zeros((10, 12), np.uint16)).save(root / "train" / "cross" / "000.png")
    with pytest.raises(DatasetError, match=pattern):
        load_dataset("folder", root)


def test_a_missing_folder_says_what_layout_to_give(tmp_path):
    with pytest.raises(DatasetError, match=r"(?s)folder: .*nowhere does not exist\. Expected your images in class "
                                           r"folders: .*nowhere/train/<class>/\*\.png.*--data-dir DIR"):
        load_dataset("folder", tmp_path / "nowhere")


@pytest.fixture(scope="module")
def trained(folder, tmp_path_factory):
    root, _ = folder
    out = tmp_path_factory.mktemp("run") / "run"
    train(TrainConfig(model="cnn", dataset="folder", data_dir=str(root), plan=QuantPlan("lcq", 3, 3), epochs=2,
                      batch_size=16, out=str(out), progress=False))
    return root, out / "checkpoint.pt"


def test_training_on_a_folder_records_its_classes_and_they_name_the_predictions(trained, tmp_path, capsys):
    root, checkpoint = trained
    state = load_checkpoint(checkpoint)
    assert state["classes"] == list(CLASSES) and state["input_shape"] == [1, HEIGHT, WIDTH]
    model = tmp_path / "model.lcq"
    assert main(["compile", str(checkpoint), "-o", str(model)]) == 0
    assert model_format.load(model).source["classes"] == list(CLASSES)
    capsys.readouterr()
    assert main(["eval", str(model), "--data-dir", str(root), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["images"] == 30 and result["disagreements"] == 0
    assert [(r["class"], r["name"], r["images"]) for r in result["per_class"]] == [(0, "bar", 10), (1, "cross", 10),
                                                                                 (2, "ring", 10)]
    assert sum(r["top1"] * r["images"] for r in result["per_class"]) / 30 == pytest.approx(result["top1"])
    assert main(["eval", str(model), "--data-dir", str(root)]) == 0
    table = capsys.readouterr().out
    assert "| class | test images | integer top-1 |" in table and "| cross (1) | 10 | " in table
    image = root / "test" / "ring" / "000.png"
    assert main(["predict", str(model), str(image), "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["name"] == CLASSES[record["class"]] and [t["name"] for t in record["top"]] == \
        [CLASSES[t["class"]] for t in record["top"]]
    assert main(["predict", str(model), str(image)]) == 0
    assert f"{image}: {record['name']} ({record['class']}); logits {record['name']} " in capsys.readouterr().out


def test_a_run_resumes_and_a_model_evaluates_only_on_its_own_images(trained, tmp_path, capsys):
    root, checkpoint = trained
    other = tmp_path / "other"
    make_folder(other, per_class=(2, 1))
    (other / "train" / "ring").rename(other / "train" / "rings")
    (other / "test" / "ring").rename(other / "test" / "rings")
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint.pt").write_bytes(checkpoint.read_bytes())
    with pytest.raises(DatasetError, match=r"folder \(.*other\): images of shape \[1, 10, 12\] in the classes "
                                           r"\['bar', 'cross', 'rings'\], but the model was trained on images of "
                                           r"shape \[1, 10, 12\] in the classes \['bar', 'cross', 'ring'\]; pass the "
                                           r"images it was trained on \(--data-dir\)"):
        train(TrainConfig(model="cnn", dataset="folder", data_dir=str(other), plan=QuantPlan("lcq", 3, 3),
                          epochs=3, batch_size=16, out=str(run), progress=False, resume=True))
    model = tmp_path / "model.lcq"
    assert main(["compile", str(checkpoint), "-o", str(model)]) == 0
    capsys.readouterr()
    assert main(["eval", str(model), "--data-dir", str(other)]) == 2
    assert "in the classes ['bar', 'cross', 'rings'], but the model was trained on images of shape [1, 10, 12] in " \
           "the classes ['bar', 'cross', 'ring']; pass the images it was trained on" in capsys.readouterr().err


@pytest.mark.parametrize("classes, pattern", [
    (["bar", "cross"], r"classes is wrong: 2 names for 3 classes"),
    (["bar", "bar", "ring"], r"classes is wrong: the class names \['bar'\] more than once"),
    ("bar cross ring", r"classes is wrong: a str, not a list"),
    (None, r"classes is missing: a run on a folder of images records its class names"),
])
def test_a_checkpoint_is_held_to_the_rule_of_class_names(trained, tmp_path, classes, pattern):
    """Read (a file's state edited, its digest made good) and written (save_checkpoint) by the same rule."""
    _, checkpoint = trained
    blob = checkpoint.read_bytes()
    _, _, n, _ = checkpoint_format._PREFIX.unpack_from(blob)
    start = checkpoint_format._PREFIX.size
    header, data = json.loads(blob[start:start + n]), blob[start + n:]
    if classes is None:
        del header["state"]["classes"]
    else:
        header["state"]["classes"] = classes
    raw = json.dumps(header).encode()
    edited = tmp_path / "edited.pt"
    edited.write_bytes(checkpoint_format._PREFIX.pack(checkpoint_format.MAGIC, checkpoint_format.VERSION, len(raw),
                                                      hashlib.sha256(raw + data).digest()) + raw + data)
    with pytest.raises(CheckpointError, match=pattern):
        load_checkpoint(edited)
    state = load_checkpoint(checkpoint)
    state.pop("classes") if classes is None else state.update(classes=classes)
    with pytest.raises(CheckpointError, match=pattern):
        save_checkpoint(state, tmp_path / "written.pt")
    assert not (tmp_path / "written.pt").exists()


@pytest.mark.parametrize("edit, pattern", [
    (lambda s: s.update(classes=["bar", "cross"]), r"source\.classes.*names 2 classes, but the logits are 3"),
    (lambda s: s.update(classes=["bar", "bar", "ring"]), r"source\.classes.*the class names \['bar'\] more than once"),
    (lambda s: s.pop("classes"), r"source\.classes.*is missing: a model of a folder of images records its class"),
    (lambda s: s.update(classes="bar"), r"source\.classes.*must be list"),
])
def test_a_model_file_is_held_to_the_rule_of_class_names(trained, tmp_path, edit, pattern):
    from helpers import members

    _, checkpoint = trained
    model = tmp_path / "model.lcq"
    assert main(["compile", str(checkpoint), "-o", str(model)]) == 0
    manifest, arrays = members(model)
    edit(manifest["source"])
    edited = tmp_path / "edited.lcq"
    model_format.write_members(edited, manifest, arrays)
    with pytest.raises(ValueError, match=pattern):
        model_format.load(edited)


def test_class_folders_alone_split_every_fifth_image_of_a_class_into_the_test_set(tmp_path, monkeypatch):
    """``DIR/<class>/*.png`` without train/ and test/ (a dataset as it is often shared): every 5th image of a class,
    by file name, is a test image."""
    monkeypatch.setenv("LCQ_CACHE_DIR", str(tmp_path / "cache"))
    written = make_folder(tmp_path / "split", per_class=(12, 0))
    alone = tmp_path / "alone"
    (tmp_path / "split" / "train").rename(alone)
    data = load_dataset("folder", alone)
    assert data.classes == CLASSES and (len(data.train_x), len(data.test_x)) == (30, 6)
    assert data.test_y.tolist() == [0, 0, 1, 1, 2, 2] and data.train_y.tolist() == [0] * 10 + [1] * 10 + [2] * 10
    assert np.array_equal(data.test_x[2, 0].numpy(), written[("train", "cross", 4)])
    assert np.array_equal(data.test_x[3, 0].numpy(), written[("train", "cross", 9)])
    assert np.array_equal(data.train_x[10 + 4, 0].numpy(), written[("train", "cross", 5)])
    (alone / "train").mkdir()                        # a train/ beside class folders: which layout is meant is unclear
    with pytest.raises(DatasetError, match=r"folder: no recognised layout in .*alone\. Expected your images"):
        load_dataset("folder", alone)


def test_hidden_files_and_folders_are_passed_over(tmp_path, monkeypatch):
    """Jupyter's .ipynb_checkpoints folders, macOS's ._x.png resource forks (no image) and .DS_Store files, in the
    folders and in an archive made of them, are no classes or images."""
    monkeypatch.setenv("LCQ_CACHE_DIR", str(tmp_path / "cache"))
    root = tmp_path / "d"
    make_folder(root, per_class=(5, 2))
    clean = load_dataset("folder", root)
    for folder in (root, root / "train", root / "test" / "bar"):
        (folder / ".ipynb_checkpoints").mkdir()
        (folder / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (root / "train" / "ring" / "._000.png").write_bytes(b"\0\5\26\7 resource fork")
    (root / "train" / ".hidden").mkdir()
    (root / "train" / ".hidden" / "0.png").write_bytes(_png(np.zeros((10, 12), np.uint8)))
    again = load_dataset("folder", root)
    assert again.classes == CLASSES and np.array_equal(again.train_x.numpy(), clean.train_x.numpy())
    archive = tmp_path / "d.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(root / "train", arcname="train")
        tar.add(root / "test", arcname="test")
    packed = load_dataset("folder", archive)
    assert packed.classes == CLASSES and np.array_equal(packed.train_x.numpy(), clean.train_x.numpy())
    alone = tmp_path / "alone"
    (root / "train").rename(alone)
    assert load_dataset("folder", alone).classes == CLASSES
    for name in CLASSES:
        (alone / name / "004.png").unlink()
    with pytest.raises(DatasetError, match=r"\(Of class folders alone every 5th image of a class is a test image: a "
                                           r"class with fewer than 5 has none\.\)"):
        load_dataset("folder", alone)


def test_a_run_of_few_steps_warns_that_the_bn_statistics_lag(folder, tmp_path, capsys):
    """90 images at the default batch of 128 take a step an epoch: after 3 epochs the BN running statistics keep
    0.9^3 = 73% of their start (a run of 4 epochs on twice the images had a test top-1 in eval mode at chance while
    training was at 100%); at batches of 4, 69 steps keep 0.07%."""
    root, _ = folder
    assert main(["train", "--dataset", "folder", "--data-dir", str(root), "--method", "fp", "--epochs", "3",
                 "--out", str(tmp_path / "few"), "--no-progress"]) == 0
    assert ("lcq train: warning: the run takes 3 steps (3 epoch(s) of 1: 90 training images at --batch-size 128), "
            "after which the BN layers' running statistics keep 73% of their starting values, so eval mode (the test "
            "top-1, the compiled model) lags training: train more epochs (--epochs) or take smaller batches "
            "(--batch-size)") in capsys.readouterr().err
    assert main(["train", "--dataset", "folder", "--data-dir", str(root), "--method", "fp", "--epochs", "3",
                 "--batch-size", "4", "--out", str(tmp_path / "enough"), "--no-progress"]) == 0
    assert "warning" not in capsys.readouterr().err

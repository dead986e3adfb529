"""What the user sees of the data: `dltrain show` (a batch as the model receives it) and the
pictures `dltrain eval` writes beside its metrics (the confusion matrix per true class, the
most confidently wrong images)."""

import json

import pytest
import torch
from PIL import Image

from dltrain.data import DataInfo
from dltrain.reporting.pictures import confusion_shares, grid_inches, grid_shape
from dltrain.reporting.plots import DPI
from tests.conftest import DIGITS_SMALL

RGB_FAKE = """\
name: fake_rgb
seed: 0
device: cpu
data:
  dataset: fake
  batch_size: 16
  fake: {train_size: 64, test_size: 16, classes: 4, channels: 3, image_size: 12}
  augment: {hflip: true}
model:
  name: mlp
  hidden: [16]
"""


def png_size(rows: int, columns: int) -> tuple[int, int]:
    width, height = grid_inches(rows, columns)
    return round(width * DPI), round(height * DPI)


def one_line(result, code: int) -> str:
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


# --- the pieces -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "count, grid",
    [(1, (1, 1)), (2, (1, 2)), (5, (2, 3)), (32, (6, 6)), (36, (6, 6)), (37, (6, 7))],
)
def test_grid_is_about_square(count, grid):
    assert grid_shape(count) == grid
    rows, columns = grid
    assert rows * columns >= count > (rows - 1) * columns


def test_unnormalize_inverts_the_loaders_normalization_and_clamps():
    mean, std = [0.5, 0.25, 0.1], [0.2, 0.5, 0.3]
    image = torch.rand(4, 3, 5, 5)
    normalized = (image - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    info = DataInfo("x", ["a"], 3, (5, 5), mean, std)
    torch.testing.assert_close(info.unnormalize(normalized), image)
    out_of_range = torch.tensor([-10.0, 10.0]).view(1, 1, 1, 2)
    gray = DataInfo("x", ["a"], 1, (1, 2), [0.5], [0.2])
    assert gray.unnormalize(out_of_range).flatten().tolist() == [0.0, 1.0]


def test_confusion_rows_are_shares_of_the_true_class():
    shares = confusion_shares([[8, 2, 0], [1, 1, 2], [0, 0, 0]])
    assert shares[0] == [0.8, 0.2, 0.0] and shares[1] == [0.25, 0.25, 0.5]
    assert [sum(row) for row in shares[:2]] == pytest.approx([1.0, 1.0])
    assert shares[2] == [0.0, 0.0, 0.0]  # a class without samples in the split


def test_mistakes_keeps_the_most_confident_wrong_ones_across_batches():
    from dltrain.tools.evaluation import Mistakes

    torch.manual_seed(0)
    logits = torch.randn(50, 4) * 3
    labels = torch.randint(0, 4, (50,))
    images = torch.arange(50.0).view(50, 1, 1, 1)  # an image's value is its index
    mistakes = Mistakes(limit=7)
    for start, end in ((0, 13), (13, 14), (14, 40), (40, 50)):  # uneven batches
        mistakes(images[start:end], labels[start:end], logits[start:end])
    probs, predicted = logits.softmax(1).max(1)
    wrong = [i for i in range(50) if predicted[i] != labels[i]]
    expected = sorted(wrong, key=lambda i: -probs[i].item())[:7]
    worst = mistakes.worst()
    assert worst.images.flatten().long().tolist() == expected
    assert worst.labels.tolist() == labels[expected].tolist()
    assert worst.predicted.tolist() == predicted[expected].tolist()
    torch.testing.assert_close(worst.probs, probs[expected])


def test_mistakes_never_holds_a_right_answer():
    from dltrain.tools.evaluation import Mistakes

    logits = torch.tensor([[5.0, 0.0], [0.0, 5.0], [0.2, 0.0]])
    mistakes = Mistakes(limit=36)
    mistakes(torch.zeros(3, 1, 2, 2), torch.tensor([0, 1, 1]), logits)
    worst = mistakes.worst()
    assert worst.labels.tolist() == [1] and worst.predicted.tolist() == [0]
    none = Mistakes()
    none(torch.zeros(2, 1, 2, 2), torch.tensor([0, 1]), logits[:2])
    assert len(none.worst().images) == 0


def test_no_mistakes_is_a_picture_that_says_so(tmp_path):
    from dltrain.data import DataInfo
    from dltrain.tools.evaluation import Mistakes, draw_pictures

    info = DataInfo("x", ["a", "b"], 1, (4, 4), [0.5], [0.5])
    result = {"split": "val", "acc": 1.0, "samples": 4, "class_names": ["a", "b"]}
    result["confusion"] = [[2, 0], [0, 2]]
    assert draw_pictures(result, Mistakes().worst(), info, tmp_path) == []
    assert Image.open(tmp_path / "mistakes-val.png").size == png_size(1, 1)
    assert (tmp_path / "confusion-val.png").is_file()


# --- dltrain show -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "config, args, count, shape",
    [
        (DIGITS_SMALL, [], 32, [1, 8, 8]),
        (DIGITS_SMALL, ["--split", "val", "--n", "5"], 5, [1, 8, 8]),
        (DIGITS_SMALL, ["--n", "50"], 50, [1, 8, 8]),  # more than a batch of 32
        (RGB_FAKE, ["--n", "20"], 20, [3, 12, 12]),  # batches of 16
        (RGB_FAKE, ["--split", "val", "--n", "99"], 6, [3, 12, 12]),  # the whole split
    ],
)
def test_show_draws_a_grid_of_what_the_model_receives(
    cli, write_config, tmp_path, config, args, count, shape
):
    result = cli("show", write_config(config), "--out", tmp_path / "pics", *args)
    assert result.exit_code == 0, result.output
    split = "val" if "val" in args else "train"
    path = tmp_path / "pics" / f"batch-{split}.png"
    assert result.stdout.startswith(f"wrote {path}: {count} {split} images")
    assert f"{'x'.join(map(str, shape))}, normalized to [" in result.stdout
    assert len(result.stdout.strip().splitlines()) == 1
    assert Image.open(path).size == png_size(*grid_shape(count))


def test_shown_images_are_the_training_loaders_first_batches(write_config, tmp_path, monkeypatch):
    """The images drawn are the batches training takes first (same seed, shuffled and
    augmented), un-normalized: rebuilt here through the same data path."""
    from dltrain.config import load_config
    from dltrain.data import make_loader
    from dltrain.reporting import pictures as plots
    from dltrain.tools.show import show_batch
    from dltrain.training.session import model_data

    drawn = {}

    def capture(images, captions, title, out, empty=""):
        drawn.update(images=images, captions=captions)
        return out, grid_shape(len(images))

    monkeypatch.setattr(plots, "plot_images", capture)
    cfg = load_config(write_config(RGB_FAKE))
    shown = show_batch(cfg, "train", 20, tmp_path)
    assert shown["images"] == 20 and shown["grid"] == (4, 5) and shown["shape"] == [3, 12, 12]

    data, splits = model_data(cfg)
    batches = iter(make_loader(splits, "train", data, torch.device("cpu"), seed=cfg.seed))
    (first, first_labels), (second, second_labels) = next(batches), next(batches)
    fed = torch.cat([first, second])[:20]
    labels = torch.cat([first_labels, second_labels])[:20]
    info = splits.info
    torch.testing.assert_close(drawn["images"], info.unnormalize(fed))
    assert drawn["captions"] == [info.class_names[i] for i in labels]
    assert shown["range"] == pytest.approx([fed.min().item(), fed.max().item()])
    # Another --seed draws another batch.
    show_batch(cfg, "train", 20, tmp_path, seed=1)
    assert not torch.equal(drawn["images"], info.unnormalize(fed))


def test_show_default_folder_is_beside_the_configs_runs(cli, write_config, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = cli("show", write_config(DIGITS_SMALL), "--n", "4", "--out", "one.png")
    assert result.exit_code == 0 and (tmp_path / "one.png").is_file(), result.output
    result = cli("show", write_config(DIGITS_SMALL), "--n", "4")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "runs" / "digits_small" / "show" / "batch-train.png").is_file()


@pytest.mark.parametrize(
    "args, says",
    [
        (["--n", "0"], "--n 0: expected 1 to 1024 images"),
        (["--out", "x.jpg"], "--out x.jpg: cannot draw a .jpg file"),
        (["--set", "data.batch_sise=3"], "data.batch_sise: unknown config key"),
    ],
)
def test_show_bad_input_is_one_line_and_exit_2(
    cli, write_config, tmp_path, monkeypatch, args, says
):
    monkeypatch.chdir(tmp_path)
    result = cli("show", write_config(DIGITS_SMALL), *args)
    assert says in one_line(result, 2)
    assert not (tmp_path / "runs").exists()


def test_show_split_is_a_choice(cli, write_config, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = cli("show", write_config(DIGITS_SMALL), "--split", "test")
    assert result.exit_code == 2 and "Invalid value for '--split'" in result.stderr
    assert not (tmp_path / "runs").exists()


# --- the pictures of dltrain eval -------------------------------------------------------


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """The small digits MLP trained one epoch: a model that still makes mistakes."""
    from typer.testing import CliRunner

    from dltrain.cli import app

    root = tmp_path_factory.mktemp("run")
    (root / "config.yaml").write_text(DIGITS_SMALL)
    args = ["train", str(root / "config.yaml"), "--out", str(root / "r"), "--set", "train.epochs=1"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return root / "r"


def test_eval_writes_the_confusion_and_the_most_confident_mistakes(cli, digits_run, monkeypatch):
    from dltrain.reporting import pictures as plots

    drawn = {}
    real = plots.plot_images

    def capture(images, captions, title, out, empty=""):
        drawn.update(captions=captions)
        return real(images, captions, title, out, empty)

    monkeypatch.setattr(plots, "plot_images", capture)
    result = cli("eval", "--ckpt", digits_run / "best.pt", "--split", "test", "--tta", "flip")
    assert result.exit_code == 0, result.output
    metrics = json.loads((digits_run / "eval-test.json").read_text())
    confusion = metrics["confusion"]
    wrong = metrics["samples"] - sum(row[i] for i, row in enumerate(confusion))
    assert wrong > 0 and "tta" in metrics
    shown = min(wrong, 36)
    assert f"wrote {digits_run / 'confusion-test.png'}" in result.stdout
    assert f"{digits_run / 'mistakes-test.png'}: the {shown} most confident of {wrong}" in (
        result.stdout
    )
    assert Image.open(digits_run / "mistakes-test.png").size == png_size(*grid_shape(shown))
    assert Image.open(digits_run / "confusion-test.png").size[0] > 0
    # Captions "true 3 → 8 (0.97)": wrong, most confident first, as many as asked.
    assert len(drawn["captions"]) == shown
    probs = [float(caption.rsplit("(", 1)[1].rstrip(")")) for caption in drawn["captions"]]
    assert probs == sorted(probs, reverse=True)
    for caption in drawn["captions"]:
        true, predicted = caption.removeprefix("true ").split(" (")[0].split(" → ")
        assert true != predicted


def test_a_picture_that_fails_is_one_warning_and_the_metrics_stay(cli, digits_run, monkeypatch):
    from dltrain.reporting import pictures as plots

    def broken(*args, **kwargs):
        raise RuntimeError("no fonts today")

    monkeypatch.setattr(plots, "plot_confusion", broken)
    (digits_run / "confusion-val.png").write_bytes(b"an old picture")
    result = cli("eval", "--ckpt", digits_run / "best.pt", "--split", "val")
    assert result.exit_code == 0, result.output
    assert result.stderr.strip() == (
        f"warning: could not draw {digits_run / 'confusion-val.png'}: no fonts today"
    )
    assert json.loads((digits_run / "eval-val.json").read_text())["split"] == "val"
    assert not (digits_run / "confusion-val.png").exists()  # no stale picture beside new metrics
    assert (digits_run / "mistakes-val.png").is_file()
    assert "confusion-val.png" not in result.stdout and "mistakes-val.png" in result.stdout


def test_eval_out_takes_the_files_elsewhere(cli, digits_run, tmp_path):
    before = sorted(path.name for path in digits_run.iterdir())
    out = tmp_path / "eval" / "here"  # made, parents too
    result = cli("eval", "--ckpt", digits_run / "best.pt", "--out", out, "--quiet")
    assert result.exit_code == 0, result.output
    written = ["confusion-val.csv", "confusion-val.png", "eval-val.json", "mistakes-val.png"]
    assert sorted(path.name for path in out.iterdir()) == written
    assert sorted(path.name for path in digits_run.iterdir()) == before
    assert result.stdout.startswith("val: accuracy ") and len(result.stdout.splitlines()) == 1
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    refused = cli("eval", "--ckpt", digits_run / "best.pt", "--out", a_file)
    assert refused.exit_code == 1 and "--out" in refused.stderr and "is a file" in refused.stderr


def test_show_mixes_training_images_as_training_does(write_config, tmp_path, monkeypatch):
    from dltrain.config import load_config
    from dltrain.reporting import pictures as plots
    from dltrain.tools.show import show_batch

    drawn = {}

    def capture(images, captions, title, out, empty=""):
        drawn.update(captions=captions)
        return out, grid_shape(len(images))

    monkeypatch.setattr(plots, "plot_images", capture)
    mixup = ["data.mixup.alpha=0.4", "data.mixup.prob=1.0"]
    show_batch(load_config(write_config(RGB_FAKE), mixup), "train", 8, tmp_path)
    assert all(" + " in caption for caption in drawn["captions"])  # "class1 0.73 + class3"
    show_batch(load_config(write_config(RGB_FAKE), mixup), "val", 8, tmp_path)
    assert not any(" + " in caption for caption in drawn["captions"])  # validation: plain


@pytest.mark.parametrize(
    "dataset, shape",
    [("mnist", [1, 28, 28]), ("cifar10", [3, 32, 32]), ("imagefolder", [3, 12, 12])],
)
def test_show_reads_the_datasets_files(cli, write_config, tmp_path, monkeypatch, dataset, shape):
    """The real on-disk formats (tests/formats.py), the image folder through its DataLoader."""
    import torchvision

    from tests.formats import digits_as_mnist, write_cifar, write_idx, write_pngs

    # The files written here are not the real ones, whose checksums torchvision knows.
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *a, **k: True)

    root = tmp_path / "data"
    if dataset == "mnist":
        write_idx(root, "MNIST", *digits_as_mnist(200, 50))
    elif dataset == "cifar10":
        write_cifar(root, 10, 100, 20)
    else:
        root = root / "pets"
        write_pngs(root, {"cat": 10, "dog": 10})
    config = write_config(
        f"name: files\ndevice: cpu\ndata: {{dataset: {dataset}, root: {root}, batch_size: 8, "
        "download: false, num_workers: 0, augment: {random_crop: 2}}\nmodel: {name: mlp}\n"
    )
    result = cli("show", config, "--out", tmp_path / "pics", "--n", "10")
    assert result.exit_code == 0, result.output
    assert f"10 train images, {'x'.join(map(str, shape))}, normalized to" in result.stdout
    assert Image.open(tmp_path / "pics" / "batch-train.png").size == png_size(*grid_shape(10))

"""Issue 22, items 4, 6 and 8: commands never overwrite what they did not create. export
refuses existing files without --force and checkpoints always; a sweep folder belongs to one
process; run names are plain folder names; --out refuses another tool's files; eval says where
a mid-epoch checkpoint is."""

import shutil

import pytest

from dltrain import checkpoint

CONFIG = """\
name: kept
device: cpu
data: {dataset: digits, val_split: 0.2, batch_size: 32}
model: {name: mlp, hidden: [16]}
train: {epochs: 1}
checkpoint: {interval: 0}
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A one-epoch run, shared: the refusals must leave it unchanged."""
    from typer.testing import CliRunner

    from dltrain.cli import app

    root = tmp_path_factory.mktemp("kept")
    (root / "config.yaml").write_text(CONFIG)
    result = CliRunner().invoke(app, ["train", str(root / "config.yaml"), "--out", str(root / "r")])
    assert result.exit_code == 0, result.output
    return root / "r"


def files(folder):
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir()) if path.is_file()}


def one_line(result, code: int | tuple = 1):
    assert result.exit_code in (code if isinstance(code, tuple) else (code,)), result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return " ".join(lines[0].split())


# --- item 4: export --out -------------------------------------------------------------------


def export(cli, ckpt, out, *extra):
    return cli("export", "--ckpt", ckpt, "--format", "torchscript", "--out", out, *extra)


@pytest.mark.parametrize("force", [[], ["--force"]], ids=["plain", "force"])
def test_export_never_writes_over_a_checkpoint(cli, trained, tmp_path, force):
    other = shutil.copy(trained / "last.pt", tmp_path / "other.pt")  # a checkpoint, not --ckpt's
    damaged = tmp_path / "damaged.pt"
    damaged.write_bytes((trained / "last.pt").read_bytes()[:2000])  # truncated: won't load
    run_before, outside_before = files(trained), files(tmp_path)
    never = "is a dltrain checkpoint: export never writes over one, even with --force"
    cases = [  # --ckpt, --out, what the line says
        (other, trained / "last.pt", never),  # the case: over the resumable last.pt
        (trained / "best.pt", other, never),
        (trained / "best.pt", damaged, never),
        (trained / "best.pt", trained / "best.pt", "is the checkpoint itself"),
        (trained / "best.pt", trained / "last.pt", "is the checkpoint itself"),  # a hard link
    ]
    for ckpt, out, says in cases:
        assert says in one_line(export(cli, ckpt, out, *force)), (ckpt, out)
    assert files(trained) == run_before and files(tmp_path) == outside_before
    assert checkpoint.load(trained / "last.pt")["epoch"] == 1  # still resumable


def test_export_replaces_an_existing_file_only_with_force(cli, trained, tmp_path):
    out = tmp_path / "model.ts"
    out.write_bytes(b"the user's own file")
    line = one_line(export(cli, trained / "best.pt", out))
    says = "already exists; give --force to replace it, or name another file with --out"
    assert line == f"error: {out} {says}"
    assert out.read_bytes() == b"the user's own file" and sorted(tmp_path.iterdir()) == [out]
    sidecar_only = tmp_path / "fresh.ts.json"  # export writes fresh.ts and its sidecar
    sidecar_only.write_text("{}")
    line = one_line(export(cli, trained / "best.pt", tmp_path / "fresh.ts"))
    assert line == f"error: {sidecar_only} {says}"
    assert sidecar_only.read_text() == "{}"
    result = export(cli, trained / "best.pt", out, "--force")
    assert result.exit_code == 0, result.output
    assert out.read_bytes() != b"the user's own file"

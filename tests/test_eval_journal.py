"""``drrn eval --journal``: an interrupted evaluation resumes where it stopped and gives the same summary as
one uninterrupted run; a journal of another run, or a damaged one, is refused rather than mixed in."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from drrn.cli import main
from drrn.errors import UserError
from evaluation.core import evaluate
from evaluation.journal import EvalJournal
from tests.test_eval_cli import _write_images

IDENTITY = {"model": "toy", "ensemble": 8, "tile": 64, "margin": 4}


class Sharpen:
    """A real (if crude) SR function: unsharp masking of the bicubic Y. Counts its calls; can fail on one."""

    def __init__(self, fail_on_call: int | None = None) -> None:
        self.calls = 0
        self.fail_on_call = fail_on_call

    def __call__(self, y: np.ndarray, _scale: int) -> np.ndarray:
        self.calls += 1
        if self.calls == self.fail_on_call:
            raise KeyboardInterrupt  # what a Ctrl-C or a stopped session does mid-run
        blur = (np.roll(y, 1, 0) + np.roll(y, -1, 0) + np.roll(y, 1, 1) + np.roll(y, -1, 1)) / 4
        return y + 0.5 * (y - blur)


@pytest.fixture
def images(tmp_path: Path) -> Path:
    return _write_images(tmp_path / "imgs", n=3)


def test_an_interrupted_run_resumes_and_matches_an_uninterrupted_one(images: Path, tmp_path: Path) -> None:
    whole = evaluate([images], [2, 3], Sharpen(), progress=False)
    journal_path = tmp_path / "run.jsonl"
    with pytest.raises(KeyboardInterrupt):
        evaluate(
            [images],
            [2, 3],
            Sharpen(fail_on_call=4),
            progress=False,
            journal=EvalJournal(journal_path, IDENTITY),
        )
    assert (
        len(journal_path.read_text().splitlines()) == 1 + 3
    )  # identity + the 3 images scored before the stop
    resumed_sr = Sharpen()
    resumed = evaluate(
        [images], [2, 3], resumed_sr, progress=False, journal=EvalJournal(journal_path, IDENTITY)
    )
    assert resumed_sr.calls == 3  # only what was missing
    assert resumed == whole
    assert resumed["imgs"]["2"]["psnr"] != resumed["imgs"]["2"]["bicubic_psnr"]  # the SR function really ran
    again = Sharpen()
    assert (
        evaluate([images], [2, 3], again, progress=False, journal=EvalJournal(journal_path, IDENTITY))
        == whole
    )
    assert again.calls == 0


def test_a_line_cut_off_by_a_kill_is_dropped_and_recomputed(images: Path, tmp_path: Path) -> None:
    journal_path = tmp_path / "run.jsonl"
    whole = evaluate([images], [2], Sharpen(), progress=False, journal=EvalJournal(journal_path, IDENTITY))
    lines = journal_path.read_text().splitlines(keepends=True)
    journal_path.write_text("".join(lines[:-1]) + lines[-1][:25])  # the last write was cut mid-line
    sr = Sharpen()
    assert evaluate([images], [2], sr, progress=False, journal=EvalJournal(journal_path, IDENTITY)) == whole
    assert sr.calls == 1
    assert journal_path.read_text().splitlines() == [line.rstrip("\n") for line in lines]


@pytest.mark.parametrize("field", ["ensemble", "tile", "model"])
def test_a_journal_of_another_run_is_refused_naming_what_differs(field: str, tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    EvalJournal(path, IDENTITY)
    other = IDENTITY | {field: "something else"}
    with pytest.raises(UserError, match=f"{field}: .* != 'something else'"):
        EvalJournal(path, other)


@pytest.mark.parametrize(
    "content, message",
    [
        ("not json\n", "first line is not JSON"),
        ('{"format": "something/2"}\n', "expected format"),
        ("partial", "no complete first line"),
        (None, "line 2 is not a scored image"),
    ],
)
def test_a_damaged_journal_is_refused(content: str | None, message: str, tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    if content is None:
        EvalJournal(path, IDENTITY)
        path.write_text(
            path.read_text() + '{"dataset": "imgs", "image": "img0.png"}\n'
        )  # no scale, no scores
    else:
        path.write_text(content)
    with pytest.raises(UserError, match=message):
        EvalJournal(path, IDENTITY)


def test_the_cli_resumes_from_the_journal_and_refuses_other_weights_at_the_same_path(
    tiny_onnx: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from model_export.onnx_export import export_onnx
    from tests.conftest import make_tiny_weights

    model = tmp_path / "model.onnx"
    model.write_bytes(tiny_onnx.read_bytes())
    data = _write_images(tmp_path / "imgs", n=2)
    journal, out = tmp_path / "j.jsonl", tmp_path / "out.json"
    args = f"eval --model {model} --data {data} --scales 2 --tile 32 --journal {journal} --json {out}"
    assert main(args.split()) == 0
    first = json.loads(out.read_text())["results"]
    head = json.loads(journal.read_text().splitlines()[0])["identity"]
    assert head["model_sha256"] and head["tile"] == 32
    journal.write_text("\n".join(journal.read_text().splitlines()[:2]) + "\n")  # keep one scored image
    assert main(args.split()) == 0
    assert json.loads(out.read_text())["results"] == first
    assert len(journal.read_text().splitlines()) == 3
    capsys.readouterr()
    export_onnx(make_tiny_weights(tmp_path / "other.safetensors", seed=7), model)  # same path, new weights
    assert main(args.split()) == 2
    assert "model_sha256" in capsys.readouterr().err


def test_an_image_changed_since_it_was_scored_is_refused(images: Path, tmp_path: Path) -> None:
    journal_path = tmp_path / "run.jsonl"
    evaluate([images], [2], Sharpen(), progress=False, journal=EvalJournal(journal_path, IDENTITY))
    target = sorted(images.iterdir())[1]
    _write_images(tmp_path / "other", n=2)
    target.write_bytes((tmp_path / "other" / "img0.png").read_bytes())
    with pytest.raises(UserError, match=f"imgs/{target.name} changed since it was scored"):
        evaluate([images], [2], Sharpen(), progress=False, journal=EvalJournal(journal_path, IDENTITY))


def test_folders_with_one_name_and_a_journal_with_saved_images_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    a = _write_images(tmp_path / "a" / "Set5", n=1)
    b = _write_images(tmp_path / "b" / "Set5", n=1)
    assert main(f"eval --model bicubic --data {a} {b} --scales 2".split()) == 2
    assert "distinct names" in capsys.readouterr().err
    journal = tmp_path / "j.jsonl"
    args = f"eval --model bicubic --data {a} --scales 2 --journal {journal} --save-images {tmp_path / 'png'}"
    assert main(args.split()) == 2
    assert "cannot be combined with --save-images" in capsys.readouterr().err
    assert not journal.exists()

"""``drrn upscale INPUT... -o OUTDIR``: finding the images, and whole runs.

Through the real nginx load balancer and two replicas (tests/lb_stack.py), 200 small images at ``--jobs 8``:
every output has the right size and the bytes a direct request gets, both replicas served some (their
``/metrics``), a second run writes nothing, and a run during which one replica is SIGKILLed still ends with
0 failed files (the client retries what nginx cannot place, nginx retries what hit the dead replica).
Locally (no ``--url``): a bad file fails alone, the summary says so and the exit status is 1.
"""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from drrn.cli import main
from drrn.errors import UserError
from drrn.folder_upscale import find_jobs
from tests.lb_stack import drrn_command, lb_stack

N_IMAGES, JOBS = 200, 8
FORMATS = ((".png", "PNG"), (".jpg", "JPEG"), (".webp", "WEBP"), ("", "PNG"))  # "": found by its bytes


def make_tree(root: Path, count: int) -> dict[str, tuple[int, int]]:
    """``count`` small images in nested folders plus files that are not images; {output rel path: size}."""
    rng = np.random.default_rng(0)
    expected = {}
    for i in range(count):
        suffix, fmt = FORMATS[i % len(FORMATS)]
        folder = root / f"set{i % 3}" / ("deep" if i % 5 == 0 else "")
        folder.mkdir(parents=True, exist_ok=True)
        w, h = 12 + i % 17, 10 + (i * 7) % 13
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
            folder / f"img{i:03d}{suffix}", fmt
        )
        expected[str((folder / f"img{i:03d}.png").relative_to(root))] = (w, h)
    (root / "README.txt").write_text("not an image")
    (root / "set0" / "notes").write_text("no extension, not an image either")
    (root / "set1" / ".hidden.png").write_bytes(b"a hidden file is skipped")
    return expected


def outputs(out: Path) -> dict[str, Path]:
    return {str(p.relative_to(out)): p for p in out.rglob("*") if p.is_file()}


def cli(url: str, src: Path, out: Path) -> list[str]:
    return [
        *drrn_command(),
        "upscale",
        "--url",
        url,
        str(src),
        "-o",
        str(out),
        "--scale",
        "2",
        "--jobs",
        str(JOBS),
    ]


def served_ok(replica_url: str) -> float:
    """Successful /upscale requests this replica answered (its own Prometheus counter)."""
    text = httpx.get(f"{replica_url}/metrics", timeout=10).text
    pattern = r'drrn_request_duration_seconds_count\{[^}]*route="/upscale"[^}]*status="200"[^}]*\} (\S+)'
    return sum(float(v) for v in re.findall(pattern, text))


def check_outputs(out: Path, expected: dict[str, tuple[int, int]]) -> None:
    found = outputs(out)
    assert sorted(found) == sorted(expected), f"missing {sorted(set(expected) - set(found))[:5]}"
    for rel, path in found.items():
        w, h = expected[rel]
        assert Image.open(path).size == (2 * w, 2 * h), rel


@pytest.mark.slow
def test_folder_through_the_load_balancer(tiny_repo: Path, tmp_path: Path) -> None:
    src = tmp_path / "photos"
    expected = make_tree(src, N_IMAGES)
    with lb_stack(tiny_repo, tmp_path / "lb") as (replicas, lb, _):
        lb_url = f"http://{lb.addr}"
        out = tmp_path / "out"
        first = subprocess.run(cli(lb_url, src, out), capture_output=True, text=True, timeout=300)
        assert first.returncode == 0, first.stderr[-2000:]
        assert f"{N_IMAGES} written, 0 skipped (output exists), 0 failed" in first.stdout
        check_outputs(out, expected)
        per_replica = [served_ok(f"http://{r.addr}") for r in replicas]
        assert all(n > 0 for n in per_replica) and sum(per_replica) == N_IMAGES, per_replica

        # The bytes equal what a direct request to one replica returns (a sample of each format).
        for i in range(len(FORMATS)):
            rel = next(r for r in sorted(expected) if r.endswith(f"img{i:03d}.png"))
            source = next(src.glob(f"{Path(rel).parent}/img{i:03d}*"))
            direct = httpx.post(
                f"http://{replicas[1].addr}/upscale?scale=2",
                content=source.read_bytes(),
                headers={"content-type": "application/octet-stream"},
            )
            assert direct.status_code == 200 and direct.content == (out / rel).read_bytes(), rel

        # A rerun writes nothing.
        mtimes = {rel: p.stat().st_mtime_ns for rel, p in outputs(out).items()}
        again = subprocess.run(cli(lb_url, src, out), capture_output=True, text=True, timeout=300)
        assert again.returncode == 0, again.stderr[-2000:]
        assert f"0 written, {N_IMAGES} skipped (output exists), 0 failed" in again.stdout
        assert {rel: p.stat().st_mtime_ns for rel, p in outputs(out).items()} == mtimes

        # A replica dies midway through a run: no file fails.
        out2, victim = tmp_path / "out2", replicas[0]
        run = subprocess.Popen(
            cli(lb_url, src, out2), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        try:
            for _ in range(30_000):  # the cap turns a stuck run into a failure, not a hang
                done = len(list(out2.rglob("*.png"))) if out2.is_dir() else 0
                if done >= N_IMAGES // 4 or run.poll() is not None:
                    break
                time.sleep(0.01)
            assert run.poll() is None, "the run ended before the replica could be killed"
            os.killpg(victim.popen.pid, signal.SIGKILL)
            stdout, stderr = run.communicate(timeout=300)
        finally:
            if run.poll() is None:
                run.kill()
        assert victim.popen.wait(timeout=10) is not None
        assert done < N_IMAGES
        assert run.returncode == 0, stderr[-2000:]
        assert f"{N_IMAGES} written, 0 skipped (output exists), 0 failed" in stdout
        check_outputs(out2, expected)
        assert served_ok(f"http://{replicas[1].addr}") > per_replica[1] + len(
            FORMATS
        )  # the survivor took over
    print(
        f"\nfolder mode: {N_IMAGES} images, per replica {per_replica}; "
        f"killed one after {done}: {stdout.strip()}"
    )


def test_local_folder_run_goes_past_a_bad_file(tiny_repo: Path, tmp_path: Path, capsys) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    expected = make_tree(src, 3)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 50)  # named explicitly: tried, and fails
    args = ["upscale", str(src), str(bad), "-o", str(out), "--scale", "2", "--root", str(tiny_repo)]
    assert main([*args, "--model", "fast"]) == 1
    captured = capsys.readouterr()
    assert "4 images: 3 written, 0 skipped (output exists), 1 failed" in captured.out
    assert "failed: bad.png: corrupt_image" in captured.err
    check_outputs(out, expected)
    assert main([*args, "--model", "fast"]) == 1
    assert "4 images: 0 written, 3 skipped (output exists), 1 failed" in capsys.readouterr().out


def test_one_file_locally_still_works(tiny_repo: Path, tmp_path: Path) -> None:
    src = tmp_path / "a.png"
    Image.new("RGB", (9, 7), "red").save(src)
    assert main(["upscale", str(src), str(tmp_path / "b.png"), "--scale", "3", "--root", str(tiny_repo)]) == 0
    assert Image.open(tmp_path / "b.png").size == (27, 21)
    assert main(["upscale", str(src), "--scale", "3"]) == 2  # one path and no -o: a usage error


def test_find_jobs(tmp_path: Path) -> None:
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    buf = io.BytesIO()
    Image.new("L", (4, 4)).save(buf, "PNG")
    for name in ("a.png", "a.jpg", "b.tif", "sub/c.png", "sub/.d.png", "raw"):
        (src / name).write_bytes(buf.getvalue())
    (src / "text.txt").write_text("x")
    out = src / "out"  # an output folder inside the input is not read back
    (out / "old").mkdir(parents=True)
    (out / "old" / "e.png").write_bytes(buf.getvalue())
    jobs = find_jobs([src], out)
    assert {j.rel: str(j.dst.relative_to(out)) for j in jobs} == {
        "a.jpg": "a.jpg.png",  # a.jpg and a.png would both be a.png
        "a.png": "a.png.png",
        "b.tif": "b.png",
        "raw": "raw.png",  # no extension: a PNG by its bytes
        "sub/c.png": "sub/c.png",
    }
    with pytest.raises(UserError, match="written twice"):
        find_jobs([src / "sub", src / "sub"], out)
    with pytest.raises(UserError, match="inside the output folder"):
        find_jobs([src / "sub"], src)
    with pytest.raises(UserError, match="no such file"):
        find_jobs([tmp_path / "missing"], out)
    with pytest.raises(UserError, match="would be its own output"):  # else skipped as "output exists"
        find_jobs([src / "sub" / "c.png"], src / "sub")

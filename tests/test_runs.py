"""Run folders survive careless use: validated reports, no overwritten files, resume at any batch size, one writer.

Manifests seal finished runs, foreign folders are refused, --overwrite sets the old run aside, records
resume at any batch size, and a file lock admits one writer.  Runs use the bundled demo model and
samples (no external data).
"""

from __future__ import annotations

import csv
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import lipcert
from lipcert.cli import main
from lipcert.errors import ReportError, RunFolderError, RunLockedError
from lipcert.report import read_run, write_run
from lipcert.runfolder import write_manifest

DATA = Path(lipcert.__file__).parent / "data"
MODEL = str(DATA / "demo_model.onnx")
SAMPLES = str(DATA / "demo_samples.npz")


def _certify(out: Path, *extra: str) -> int:
    return main(["certify", MODEL, "--dataset", SAMPLES, "--n", "40", "--eps", "0.5", "--method", "naive",
                 "--batch-size", "10", "--no-plots", "--out", str(out), *extra])


def _samples(out: Path) -> list[list[str]]:
    with open(out / "samples.csv", newline="") as fh:
        return list(csv.reader(fh))


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("finished") / "run"
    assert _certify(out) == 0
    return out


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def _overwrite_failing_in(run: Path, step: str, error: Exception, monkeypatch: pytest.MonkeyPatch) -> bytes:
    """``certify --overwrite`` on ``run`` with ``error`` planted in the CLI's ``step``; the old records."""
    from lipcert.cli import certify as cli_certify

    old = (run / "records.jsonl").read_bytes()

    def broken(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise error

    monkeypatch.setattr(cli_certify, step, broken)
    assert _certify(run, "--overwrite") == 2
    return old


# ------------------------------------------------------------------- reports validate the run
def test_report_refuses_a_run_whose_samples_were_cut(finished: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    record, samples = read_run(finished)
    assert record["n_inputs"] == 40 and samples["index"].shape == (40,)
    run = _copy(finished, tmp_path / "cut")
    rows = _samples(run)
    with open(run / "samples.csv", "w", newline="") as fh:
        csv.writer(fh).writerows(rows[:5])  # header and 4 of 40 rows
    assert main(["report", str(run), "--out", str(tmp_path / "cmp")]) == 2
    assert "samples.csv was changed after the run finished" in capsys.readouterr().err
    assert not (tmp_path / "cmp").exists()
    # the same cut with a manifest rewritten to match: the row count still disagrees with report.json
    write_manifest(run, ["samples.csv", "report.json"], {"n_inputs": 40, "methods": ["naive"],
                                                         "network": record["model"]["network_sha256"]})
    with pytest.raises(ReportError, match="samples.csv holds 4 rows but the run certified 40 inputs"):
        read_run(run)


def test_report_refuses_an_unfinished_run(finished: Path, tmp_path: Path) -> None:
    run = _copy(finished, tmp_path / "open")
    (run / "manifest.json").unlink()
    with pytest.raises(ReportError, match="not a finished lipcert run: it has no manifest.json "
                                          r"\(records.jsonl holds 40 finished inputs"):
        read_run(run)


# ------------------------------------------------------------------- no overwritten user files
def test_certify_refuses_a_folder_with_foreign_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "report.md").write_text("my own notes")
    for extra in ((), ("--overwrite",), ("--resume",)):
        assert _certify(out, *extra) == 2
        assert "holds files that lipcert did not write (report.md)" in capsys.readouterr().err
    assert (out / "report.md").read_text() == "my own notes" and sorted(p.name for p in out.iterdir()) == ["report.md"]
    with pytest.raises(RunFolderError, match="holds files that lipcert did not write"):
        x, y = np.load(SAMPLES)["x"][:3] / 255, np.load(SAMPLES)["y"][:3]
        write_run(out, lipcert.certify(lipcert.load(MODEL), x, y, method="naive"))


def test_report_refuses_to_write_into_a_run(finished: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = _copy(finished, tmp_path / "run")
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    assert main(["report", str(run), "--out", str(run)]) == 2
    assert "holds a lipcert run; choose another folder" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
    assert main(["report", str(run), "--out", str(tmp_path / "cmp")]) == 0
    assert main(["report", str(run), "--out", str(tmp_path / "cmp")]) == 0  # its own comparison: rewritten


def test_a_run_folder_needs_resume_or_overwrite(finished: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    run = _copy(finished, tmp_path / "run")
    assert _certify(run) == 2
    assert "already holds a run; pass --resume" in capsys.readouterr().err
    assert _certify(run, "--resume", "--overwrite") == 2
    assert "exclude each other" in capsys.readouterr().err


# ------------------------------------------------------------------- overwrite loses nothing early
def test_overwrite_with_a_mistyped_model_keeps_the_old_run(finished: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    run = _copy(finished, tmp_path / "run")
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    assert main(["certify", MODEL + "x", "--dataset", SAMPLES, "--n", "40", "--eps", "0.5", "--out", str(run),
                 "--overwrite"]) == 2
    assert "no such" in capsys.readouterr().err.lower()
    after = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    assert {k: v for k, v in after.items() if k in before} == before
    read_run(run)  # still a valid, finished run


def test_overwrite_sets_the_old_run_aside_until_the_new_one_finishes(
        finished: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = _copy(finished, tmp_path / "run")
    old = _overwrite_failing_in(run, "certify", lipcert.errors.InfeasibleCertificateError("before any record"),
                                monkeypatch)
    assert (run / "records.jsonl").read_bytes() == old and not list(run.glob("previous-run-*"))
    read_run(run)  # put back as it was
    monkeypatch.undo()
    assert _certify(run, "--overwrite", "--n", "30") == 0
    record, _ = read_run(run)
    assert record["n_inputs"] == 30 and not list(run.glob("previous-run-*"))


# ------------------------------------------------------------------- resume at another batch size
def test_resume_with_another_batch_size_keeps_every_finished_input(
        finished: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = _copy(finished, tmp_path / "run")
    records = run / "records.jsonl"
    lines = records.read_bytes().splitlines(keepends=True)
    # killed while writing the third batch of 10: 25 rows and a torn line
    records.write_bytes(b"".join(lines[:26]) + lines[26][:7])
    (run / "manifest.json").unlink()
    assert _certify(run, "--resume", "--batch-size", "7") == 0
    assert "resumed: 20 of 40" in capsys.readouterr().err
    got, want = _samples(run), _samples(finished)
    assert got[0] == want[0] and [r[:3] for r in got] == [r[:3] for r in want]
    np.testing.assert_allclose(np.array([r[3:] for r in got[1:]], dtype=float),
                               np.array([r[3:] for r in want[1:]], dtype=float), rtol=1e-12, atol=0)
    read_run(run)


def test_resume_with_another_model_is_an_error(finished: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    run = _copy(finished, tmp_path / "run")
    assert main(["certify", MODEL, "--dataset", SAMPLES, "--n", "40", "--eps", "0.5", "--method", "naive",
                 "--mean", "0.1307", "--std", "0.3081", "--out", str(run), "--resume"]) == 2
    assert "belongs to another run: bounds, network differ" in capsys.readouterr().err


# ------------------------------------------------------------------- one writer per run folder
def _holder(out: Path) -> subprocess.Popen[str]:
    """Another process holding the lock of ``out``'s records until its stdin is closed (returned once held)."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys\nfrom lipcert.runfolder import hold\n"
                               f"with hold({str(out / 'records.jsonl')!r}):\n    print('held', flush=True)\n"
                               "    sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    return holder


def test_a_second_writer_is_refused_naming_the_first(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    holder = _holder(out)
    try:
        assert _certify(out, "--resume") == 2
        err = capsys.readouterr().err
        assert f"is being written by another lipcert run (pid {holder.pid} on" in err
        x, y = np.load(SAMPLES)["x"][:3] / 255, np.load(SAMPLES)["y"][:3]
        with pytest.raises(RunLockedError, match=f"pid {holder.pid}"):
            lipcert.certify(lipcert.load(MODEL), x, y, method="naive", records=out / "records.jsonl", resume=True)
    finally:
        holder.communicate("", timeout=60)
    start = time.perf_counter()
    assert _certify(out, "--resume") == 0  # the first writer is gone: the lock is free again
    assert time.perf_counter() - start < 120


# ------------------------------------------------------------------- what a review of the above found
def test_a_refused_writer_leaves_the_first_writers_folder_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from lipcert.cli import certify as cli_certify

    out = tmp_path / "run"
    holder = _holder(out)
    try:
        # as if this run had looked at --out before the first writer created it
        monkeypatch.setattr(cli_certify, "check_output_folder", lambda *args, **kwargs: "missing")
        for extra in ((), ("--overwrite",)):
            assert _certify(out, *extra) == 2
            assert "is being written by another lipcert run" in capsys.readouterr().err
            assert (out / "records.jsonl.lock").exists() and (out / "records.jsonl.owner.json").exists()
    finally:
        holder.communicate("", timeout=60)


def test_a_refused_resume_keeps_the_run_sealed(finished: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    run = _copy(finished, tmp_path / "run")
    assert _certify(run, "--resume", "--method", "combined") == 2
    assert "methods" in capsys.readouterr().err
    for bad in (("--batch-size", "0"), ("--attack-steps", "-1"), ("--tolerance", "nan")):
        assert _certify(run, "--overwrite", *bad) == 2
        assert f"{bad[0]} must be" in capsys.readouterr().err
    read_run(run)  # still finished and unchanged, nothing set aside
    assert not list(run.glob("previous-run-*"))


def test_folders_are_recognized_by_content_not_names(finished: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "report.json").write_text('{"my": "results"}')
    (mine / "report.md").write_text("my notes")
    for extra in ((), ("--resume",), ("--overwrite",)):
        assert _certify(mine, *extra) == 2
        assert "holds files that lipcert did not write" in capsys.readouterr().err
    (mine / "comparison.json").write_text('{"kind": "mine"}')
    (mine / "report.json").unlink()
    assert main(["report", str(finished), "--out", str(mine)]) == 2
    assert "holds files that lipcert did not write" in capsys.readouterr().err
    assert (mine / "report.md").read_text() == "my notes"


def test_records_with_malformed_rows_resume_from_the_last_good_batch(finished: Path, tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    run = _copy(finished, tmp_path / "run")
    records = run / "records.jsonl"
    lines = records.read_bytes().splitlines(keepends=True)
    records.write_bytes(b"".join(lines[:21]) + b"null\n" + b"".join(lines[22:]))
    (run / "manifest.json").unlink()
    assert _certify(run, "--resume") == 0
    assert "resumed: 20 of 40" in capsys.readouterr().err
    assert _samples(run) == _samples(finished)


def test_version_1_records_resume(finished: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    run = _copy(finished, tmp_path / "run")
    records = run / "records.jsonl"
    rows = [json.loads(line) for line in records.read_text().splitlines()]
    header = {k: v for k, v in rows[0].items() if k != "methods"} | {"version": 1}
    old = [header] + [{k: v for k, v in r.items() if k != "batch"} for r in rows[1:26]]
    records.write_text("".join(json.dumps(r) + "\n" for r in old))
    (run / "manifest.json").unlink()
    assert _certify(run, "--resume") == 0  # batches of 10, as version 1 resumed
    assert "resumed: 20 of 40" in capsys.readouterr().err
    assert json.loads(records.read_text().splitlines()[0])["version"] == 2
    read_run(run)


def test_a_failed_overwrite_after_records_keeps_the_old_run_aside(
        finished: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    run = _copy(finished, tmp_path / "run")
    old = _overwrite_failing_in(run, "write_run", lipcert.errors.ReportError("after the records"), monkeypatch)
    aside = list(run.glob("previous-run-*"))
    assert len(aside) == 1 and (aside[0] / "records.jsonl").read_bytes() == old
    assert f"the earlier run is kept in {aside[0]}" in capsys.readouterr().err


def test_report_refuses_wrong_types_through_the_cli(finished: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    import json

    run = _copy(finished, tmp_path / "run")
    record = json.loads((run / "report.json").read_text())
    (run / "report.json").write_text(json.dumps(record | {"eps": "0.5"}))
    write_manifest(run, ["samples.csv", "report.json", "records.jsonl"],
                   {"n_inputs": 40, "methods": ["naive"], "network": record["model"]["network_sha256"]})
    assert main(["report", str(run), "--out", str(tmp_path / "cmp")]) == 2
    assert "report field eps must be a list of numbers" in capsys.readouterr().err

"""Reports: every schema field present and consistent, CSV/Markdown/HTML outputs, comparisons, CLI."""

from __future__ import annotations

import csv
import html
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import lipcert
import lipcert.report.plots as plots
from _certify_models import lipschitz_mlp, mnist
from lipcert.attacks import attack
from lipcert.report import (REPORT_SCHEMA, SAMPLE_COLUMNS, SCHEMA_VERSION, ReportError, compare_runs, read_run,
                            validate_record, write_run)
from lipcert.report.render import PLOT_NOTE


@pytest.fixture(scope="module")
def run(shared_data: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    net = lipschitz_mlp(shared_data)
    data = mnist(shared_data, 150)
    cert = lipcert.certify(net, data.x, data.y, method="naive,combined")
    attacks = [attack(net, data.x, data.y, norm=2, eps=e, steps=10, restarts=1) for e in (0.5, 1.0)]
    out = tmp_path_factory.mktemp("run")
    report = write_run(out, cert, network=net, dataset=data, eps=[0.25, 0.5, 1.0], attack=attacks,
                       command="pytest")
    return net, data, cert, attacks, report


@pytest.mark.data
def test_report_json_has_every_schema_field_and_consistent_numbers(run) -> None:  # type: ignore[no-untyped-def]
    net, data, cert, attacks, report = run
    record = json.loads(report.files["json"].read_text())
    assert set(REPORT_SCHEMA) <= set(record)
    validate_record(record)
    assert record["schema_version"] == SCHEMA_VERSION and record["lipcert_version"] == lipcert.__version__
    assert record["n_inputs"] == 150 and record["dataset"]["name"] == "mnist" and record["dataset"]["split"] == "test"
    assert record["model"]["widths"] == list(net.widths) and len(record["model"]["network_sha256"]) == 64
    assert record["clean_accuracy"] == cert.clean_accuracy
    for m in ("naive", "combined", "best"):
        expect = cert.certified_accuracy(record["eps"], None if m == "best" else m)
        assert record["certified_accuracy"][m] == list(expect)
        acc = record["certified_accuracy"][m]
        assert all(a <= record["clean_accuracy"] for a in acc) and acc == sorted(acc, reverse=True)
    assert record["lipschitz"]["combined"]["value"] == cert.bounds["combined"].value
    assert record["attack"]["eps"] == [0.5, 1.0]
    assert record["attack"]["upper_bound"] == [a.robust_accuracy for a in attacks]
    assert record["attack"]["violations"] == [0, 0]
    for e, upper in zip(record["attack"]["eps"], record["attack"]["upper_bound"]):
        assert record["certified_accuracy"]["best"][record["eps"].index(e)] <= upper
    assert record["radius_stats"]["combined"]["median"] == cert.radius_stats("combined")["median"]


@pytest.mark.data
def test_samples_csv_markdown_and_html(run) -> None:  # type: ignore[no-untyped-def]
    _, _, cert, attacks, report = run
    with open(report.files["samples"], newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == cert.n and tuple(rows[0])[: len(SAMPLE_COLUMNS)] == SAMPLE_COLUMNS
    np.testing.assert_array_equal([float(r["radius_combined"]) for r in rows], cert.radii["combined"])
    np.testing.assert_array_equal([float(r["radius"]) for r in rows], cert.radius)
    np.testing.assert_array_equal([int(r["broken@1.0"]) for r in rows], attacks[1].success)
    md = report.files["markdown"].read_text()
    assert "| method | Lipschitz bound | clean (%) | eps=0.25 (%) | eps=0.5 (%) | eps=1 (%) |" in md
    assert f"| combined | {cert.bounds['combined'].value:.4g} | {100 * cert.clean_accuracy:.2f} |" in md
    assert "PGD upper bound" in md and "sqrt" not in md.split("## Notes")[0]
    page = report.files["html"].read_text()
    assert page.count("data:image/png;base64,") == 2 and "<table>" in page


@pytest.mark.data
def test_html_without_matplotlib_has_tables_and_a_note(run, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    net, data, cert, _, _ = run
    monkeypatch.setattr(plots, "available", lambda: False)
    report = write_run(tmp_path, cert, network=net, dataset=data)
    page = report.files["html"].read_text()
    assert "data:image/png" not in page and html.escape(PLOT_NOTE) in page and "<table>" in page


def test_importing_lipcert_does_not_load_matplotlib() -> None:
    code = ("import sys, lipcert, lipcert.report, lipcert.cli, lipcert.demo; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'matplotlib'))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "[]"


@pytest.mark.data
def test_comparison_of_runs_recomputes_accuracy_on_a_common_grid(run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    net, data, cert, _, report = run
    linf = lipcert.certify(net, data.x, data.y, norm="inf", bound=cert.bounds["combined"])
    other = write_run(tmp_path / "linf", linf, network=net, dataset=data, eps=[0.01, 0.02])
    only = lipcert.certify(net, data.x, data.y, bound=cert.bounds["naive"])
    third = write_run(tmp_path / "naive", only, network=net, dataset=data, eps=[0.3])
    result = compare_runs([report.out_dir, other.out_dir, third.out_dir], tmp_path / "cmp")
    tables = {t["norm"]: t for t in result.record["tables"]}
    assert set(tables) == {"2", "inf"} and tables["2"]["eps"] == [0.25, 0.3, 0.5, 1.0]
    rows = {(r["run"], r["method"]): r for r in tables["2"]["rows"]}
    assert rows[("naive", "naive")]["certified"] == list(only.certified_accuracy([0.25, 0.3, 0.5, 1.0]))
    assert rows[(report.out_dir.name, "combined")]["certified"] == list(
        cert.certified_accuracy([0.25, 0.3, 0.5, 1.0], "combined"))
    assert tables["inf"]["rows"][0]["certified"] == list(linf.certified_accuracy([0.01, 0.02]))
    md = result.files["markdown"].read_text()
    assert "## Certified accuracy (L2)" in md and "## Certified accuracy (L-inf)" in md
    assert json.loads(result.files["json"].read_text())["runs"][1]["report"]["norm"] == "inf"


def test_reading_a_bad_run_folder_raises_report_errors(tmp_path: Path) -> None:
    with pytest.raises(ReportError, match="report.json is missing"):
        read_run(tmp_path)
    (tmp_path / "report.json").write_text(json.dumps({"schema_version": SCHEMA_VERSION}))
    with pytest.raises(ReportError, match="not a finished lipcert run: it has no manifest.json"):
        read_run(tmp_path)
    with pytest.raises(ReportError, match="missing the fields"):
        validate_record({"schema_version": SCHEMA_VERSION})
    with pytest.raises(ReportError, match="no run folders"):
        compare_runs([], tmp_path / "out")


@pytest.mark.data
def test_cli_report_compares_run_folders(run, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    from lipcert.cli import main

    _, _, _, _, report = run
    assert main(["report", str(report.out_dir), str(report.out_dir), "--out", str(tmp_path), "--eps", "0.5,1"]) == 0
    record = json.loads((tmp_path / "comparison.json").read_text())
    assert record["tables"][0]["eps"] == [0.5, 1.0] and (tmp_path / "report.html").is_file()
    assert main(["report", str(tmp_path / "nothing"), "--out", str(tmp_path)]) == 2
    assert "not a lipcert run folder" in capsys.readouterr().err

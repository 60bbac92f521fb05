"""`moerec report RUN_DIR`: exit codes and messages a user acts on."""

import shutil

from typer.testing import CliRunner

from moerec.cli import app

runner = CliRunner()


def test_report_writes_one_html_file_and_names_it(trained, tmp_path):
    run_dir = shutil.copytree(trained.run_dir, tmp_path / "run")
    out = tmp_path / "report.html"
    result = runner.invoke(app, ["report", str(run_dir), "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert str(out) in result.output
    assert out.read_text(encoding="utf-8").startswith("<!doctype html>")


def test_a_folder_without_a_run_log_exits_2_with_an_actionable_message(tmp_path):
    result = runner.invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 2
    assert "not a training run folder" in result.output
    assert "--run-dir" in result.output
    assert "Traceback" not in result.output


def test_an_unknown_format_exits_2(trained):
    result = runner.invoke(app, ["report", str(trained.run_dir), "--format", "pdf"])
    assert result.exit_code == 2
    assert "html, markdown" in result.output


def test_help_explains_the_argument_and_the_formats():
    result = runner.invoke(app, ["report", "--help"])
    assert result.exit_code == 0
    assert "RUN_DIR" in result.output
    assert "base64" in result.output

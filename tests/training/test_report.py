"""`moerec.training.report`: a run folder rendered as one self-contained file."""

import json
import re
import shutil

import pytest

from moerec.training.report import RunDirError, load_run, render_html, write_report


@pytest.fixture
def run_dir(trained, tmp_path):
    """A private copy of the session's finished run folder (reports write into it)."""
    return shutil.copytree(trained.run_dir, tmp_path / "run")


def test_html_report_is_self_contained_with_every_plot_embedded(run_dir):
    path = write_report(run_dir)
    text = path.read_text(encoding="utf-8")
    assert path == run_dir / "report.html"
    assert text.count('src="data:image/png;base64,') == len(list((run_dir / "plots").glob("*.png")))
    assert not re.search(r'(src|href)="(?!data:)', text), "no external file may be referenced"
    assert "ndcg@10" in text
    assert "Expert routing" in text
    assert "finished" in text


def test_markdown_report_links_the_plots_relative_to_the_file(run_dir, tmp_path):
    out = tmp_path / "elsewhere" / "report.md"
    write_report(run_dir, out, "markdown")
    links = re.findall(r"!\[[^]]*\]\(([^)]+)\)", out.read_text(encoding="utf-8"))
    assert links
    assert all((out.parent / link).is_file() for link in links)


def test_an_unfinished_run_gets_its_plots_drawn_from_the_log(run_dir):
    shutil.rmtree(run_dir / "plots")
    log = run_dir / "log.jsonl"
    records = [json.loads(line) for line in log.read_text().splitlines()]
    log.write_text("".join(json.dumps(r) + "\n" for r in records if r["event"] != "end"))
    run = load_run(run_dir)
    assert not run.finished
    assert [p.name for p in run.plots][:2] == ["loss.png", "valid_ndcg.png"]
    assert "not finished" in render_html(run)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p / "missing", "does not exist"),
        (lambda p: p, "no log.jsonl"),
        (lambda p: (p / "file.txt").write_text("x") and p / "file.txt", "is a file"),
    ],
)
def test_a_path_that_is_not_a_run_folder_is_refused_with_what_to_pass(tmp_path, make, message):
    with pytest.raises(RunDirError, match=message) as caught:
        load_run(make(tmp_path))
    assert "moerec train --run-dir" in str(caught.value)


def test_a_corrupt_log_names_the_line(tmp_path):
    (tmp_path / "log.jsonl").write_text('{"event": "start"}\nnot json\n')
    with pytest.raises(RunDirError, match="line 2"):
        load_run(tmp_path)

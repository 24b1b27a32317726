"""Instructor tools: teaching from a fork (every link names `course.fork.REPOSITORY`; `repoint` moves them all),
and the estimate of a learner's time per chapter."""

import json
import re
import shutil
from pathlib import Path

import jupytext
import pytest
import torch

from diffusion_lib.course import fork, timing
from diffusion_lib.course.__main__ import main

ROOT = Path(__file__).resolve().parent.parent


def test_every_link_names_the_course_repository():
    found = fork.links(ROOT)
    kinds = {prefix for prefix in ("git+https://github.com/", "colab.research.google.com/github/", "mybinder.org/v2/gh/")
             if any(prefix in path.read_text() for path, _ in found)}
    assert len(kinds) == 3, f"expected pip, Colab and Binder links, found {kinds}"
    chapters = sorted(ROOT.glob("chapters/*.ipynb"))
    assert {path for path, _ in found} >= {*chapters, *(p.with_suffix(".py") for p in chapters), ROOT / "README.md"}
    stale = [(str(path.relative_to(ROOT)), repo) for path, repo in found if repo != fork.REPOSITORY]
    assert not stale, f"links to another repository than {fork.REPOSITORY}: {stale}"


@pytest.fixture
def checkout(tmp_path):
    """The files `repoint` touches, copied into a scratch checkout."""
    for path in [*fork.linked_files(ROOT), ROOT / fork.MODULE]:
        target = tmp_path / path.relative_to(ROOT)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target)
    return tmp_path


def test_repoint_moves_every_link_and_the_constant_and_nothing_else(checkout):
    before = {path: path.read_text() for path in fork.linked_files(checkout)}
    assert main(["repoint", "alice/my-course", "--root", str(checkout)]) == 0
    assert {repo for _, repo in fork.links(checkout)} == {"alice/my-course"}
    assert len(fork.links(checkout)) == len(fork.links(ROOT))
    assert 'REPOSITORY = "alice/my-course"' in (checkout / fork.MODULE).read_text()
    for path, text in before.items():  # only the addresses changed: outputs, cells and pairs untouched
        assert path.read_text().replace("alice/my-course", fork.REPOSITORY) == text
    notebook = checkout / "chapters" / "05_ddim.ipynb"
    json.loads(notebook.read_text())
    paired = jupytext.read(notebook.with_suffix(".py"))
    assert [c.source for c in jupytext.read(notebook).cells] == [c.source for c in paired.cells]


def test_repoint_refuses_a_bad_name_and_changes_nothing(checkout, capsys):
    before = {path: path.read_text() for path in fork.linked_files(checkout)}
    assert main(["repoint", "https://github.com/alice/my-course", "--root", str(checkout)]) == 2
    assert "OWNER/NAME" in capsys.readouterr().err
    assert all(path.read_text() == text for path, text in before.items())


@pytest.mark.parametrize("name", ["../evil", "./.", "alice/.", "alice/..", "alice/...", "-alice/course", "alice/",
                                  "/course", "alice", "alice/my course", "alice/x/y", "alice/course\n", "al.ice/course",
                                  "a" * 40 + "/course", "alice/" + "a" * 101, "alice/" + "a" * 3000],
                         ids=lambda name: repr(name) if len(name) < 30 else f"{len(name)} characters")
def test_repoint_refuses_what_github_would_refuse_in_one_short_line(checkout, name):
    before = {path: path.read_text() for path in fork.linked_files(checkout)}
    with pytest.raises(ValueError, match="is not a GitHub repository name: give OWNER/NAME") as error:
        fork.repoint(checkout, name)
    assert "\n" not in str(error.value) and len(str(error.value)) < 400
    assert all(path.read_text() == text for path, text in before.items())


@pytest.mark.parametrize("name", ["a/b", "alice-1/my.course_v2", "alice/.github", "Alice/course.git",
                                  "a" * 39 + "/" + "b" * 100])
def test_repoint_accepts_every_name_github_allows(name):
    assert fork.VALID_NAME.fullmatch(name)


def test_learner_minutes_counts_each_part_at_its_stated_rate(tmp_path):
    words = " ".join(["word"] * 233)
    text = (f"# %% [markdown]\n# {words}\n\n"  # 233 words + the core exercise headers' 3 + 4 = 240: two minutes
            "# %%\n" + "".join(f"x{i} = {i}\n" for i in range(15)) + "# a comment\nwidgets.interact(f, a=1)\n\n"
            "# %% [markdown]\n# **Exercise 1 (implement).**\n\n"
            "# %% [markdown]\n# **Exercise 2 (open question).**\n\n"
            "# %% [markdown] tags=[\"solution\"]\n# " + " ".join(["answer"] * 1000) + "\n\n"
            # a going-further exercise: its header (7 words + 113 = 120: one minute) and its code go to `further`
            "# %% [markdown]\n# **Exercise 3 (predict, then check; going further).** " + " ".join(["w"] * 113) + "\n\n"
            "# %%\n" + "".join(f"y{i} = {i}\n" for i in range(30)) + "\n")
    path = tmp_path / "chapter.py"
    path.write_text(text)
    m = timing.learner_minutes(path, run_seconds=90)
    assert m["reading"] == pytest.approx(240 / timing.WORDS_PER_MINUTE)  # the model answer is not read
    assert m["code"] == pytest.approx(16 / timing.CODE_LINES_PER_MINUTE)  # comments are not counted
    assert m["widgets"] == timing.MINUTES_PER_WIDGET
    assert m["exercises"] == timing.EXERCISE_MINUTES["implement"] + timing.EXERCISE_MINUTES["open"]
    assert m["running"] == 1.5 and m["exercise_count"] == 3 and m["further_count"] == 1
    assert m["total"] == pytest.approx(sum(m[k] for k in ("reading", "code", "widgets", "exercises", "running")))
    # the going-further exercise: its kind's minutes, one minute of reading and 30 lines of code, apart from the total
    assert m["further"] == pytest.approx(timing.EXERCISE_MINUTES["predict"] + 1 + 30 / timing.CODE_LINES_PER_MINUTE)
    assert m["with_further"] == pytest.approx(m["total"] + m["further"])


def test_a_header_inside_a_cell_splits_its_text_between_the_core_and_going_further(tmp_path):
    text = ("# %% [markdown]\n# " + " ".join(["core"] * 120) + "\n#\n# **Exercise 1 (open question, going further).** "
            + " ".join(["more"] * 234) + "\n")  # 120 words before the header; its 6 + 234 = 240 from it on
    path = tmp_path / "chapter.py"
    path.write_text(text)
    m = timing.learner_minutes(path)
    assert m["reading"] == pytest.approx(1.0) and m["further"] == pytest.approx(2 + timing.EXERCISE_MINUTES["open"])


def test_every_chapter_exercise_is_of_a_kind_the_estimate_knows():
    for notebook in sorted(ROOT.glob("chapters/*.ipynb")):
        headers = [h for c in jupytext.read(notebook).cells if c.cell_type == "markdown"
                   for h in re.findall(r"\*\*Exercise \d+ \(", c.source)]
        assert headers and timing.learner_minutes(notebook)["exercise_count"] == len(headers), notebook.stem


def test_images_kept_in_measured_json_come_back_to_within_one_grey_level():
    from diffusion_lib.course.measured import decode_images, encode_images

    images = torch.rand(5, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1
    back = decode_images(encode_images(images))
    assert back.shape == images.shape and (back - images).abs().max() <= 1 / 127.5 + 1e-6
    assert decode_images(encode_images(torch.full((1, 1, 28, 28), -1.0))).max() == -1  # black stays black


def test_gallery_figure_has_a_row_per_case_and_shows_a_diverged_run():
    from diffusion_lib.course import ch04
    from diffusion_lib.course.measured import encode_images

    entries = [{"case": "reference", "sampler": "heun-18", "grid": encode_images(torch.zeros(16, 1, 28, 28)),
                "real_baseline_fid": 12.0, "scores": [{"mnist_fid": 24.0, "recognised": 0.9}]},
               {"case": "lr too high", "sampler": "heun-18", "diverged": "loss became NaN at step 40"}]
    fig = ch04.gallery_figure(entries, per_row=4)
    rows = [fig.axes[i * 5:(i + 1) * 5] for i in range(2)]
    assert len(fig.axes) == 10
    assert [len(ax.images) for ax in rows[0][1:]] == [1] * 4 and not any(ax.images for ax in rows[1])
    labels = [ax.texts[0].get_text() for ax in (rows[0][0], rows[1][0])]
    assert "2.0x the floor, 90% recognised" in labels[0] and "diverged" in labels[1]


def test_show_rows_draws_one_labelled_strip_per_row_in_order():
    from diffusion_lib.course.plots import show_rows

    dark, light = -torch.ones(3, 1, 4, 5), torch.ones(3, 1, 4, 5)
    fig = show_rows({"dark": dark, "light": light})
    assert [ax.get_ylabel() for ax in fig.axes] == ["dark", "light"]
    strips = [ax.images[0].get_array() for ax in fig.axes]
    assert all(strip.shape == (4, 15) for strip in strips)  # three 4x5 images side by side
    assert float(strips[0].max()) == 0.0 and float(strips[1].min()) == 1.0  # [-1, 1] shown as [0, 1]


def _requirement_lines(path: Path) -> dict[str, str]:
    """name -> version range of each package a requirements file or a conda environment file lists."""
    found = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip().removeprefix("- ").strip()
        match = re.fullmatch(r"([A-Za-z][A-Za-z0-9_.-]*)\s*([<>=!].*)?", line)
        if match:
            found[match.group(1).lower()] = (match.group(2) or "").replace(" ", "")
    return found


@pytest.mark.parametrize("where", ["requirements.txt", "environment.yml", "binder/environment.yml"])
def test_every_way_to_install_the_course_has_the_library_dependencies(where):
    """pip, conda and Binder must each install every package the library needs, in the library's range (Binder's
    postBuild installs the library with --no-deps, so a package missing there fails only on Binder)."""
    tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11's tomllib")
    needed = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    listed = _requirement_lines(ROOT / where)
    conda_names = {"torch": "pytorch-cpu"} if where.endswith(".yml") else {}
    for requirement in needed:
        name, spec = re.fullmatch(r"([A-Za-z0-9_.-]+)(.*)", requirement.replace(" ", "")).groups()
        name = conda_names.get(name.lower(), name.lower())
        assert listed.get(name) == spec, f"{where}: {name}{spec} (pyproject.toml) is listed as {listed.get(name)!r}"

"""The README, the docs pages and the changelog agree with the code and CI.

`mkdocs build --strict` in .ci/run checks the docs site's own links; these tests check what it
cannot: the README (outside the site), the set-up commands CI runs, the version and the model
card page against the card the package loads.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pcvos

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
#: The limit set for the README (issue 25): what a new user reads before the docs pages.
README_MAX_LINES = 250
_LINK = re.compile(r"\]\(([^)\s]+)\)")


def test_readme_is_short() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES


def test_readme_setup_commands_are_what_ci_runs() -> None:
    readme = README.read_text(encoding="utf-8")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    block = re.search(r"## Set up\n\n```bash\n(.*?)```", readme, re.DOTALL)
    assert block is not None, "README has no 'Set up' code block"
    assert block.group(1).splitlines() == ['pip install -e ".[dev]"', "python -m pytest -q"]
    assert 'pip install --quiet -e ".[dev]"' in ci
    assert ci.strip().splitlines()[-1] == "python -m pytest -q"
    assert "mkdocs build --strict" in ci


def test_readme_links_resolve() -> None:
    readme = README.read_text(encoding="utf-8")
    local = [t for t in _LINK.findall(readme) if not re.match(r"[a-z]+://", t)]
    assert local, "README links to no docs page"
    missing = [t for t in local if not (ROOT / t.split("#")[0]).exists()]
    assert not missing, f"README links to missing files: {missing}"


def test_no_reference_to_a_missing_measurement_page() -> None:
    # The measurement pages moved from benchmarks/ to docs/results/; a path to a page that is not
    # there sends a reader (or the model card) nowhere.
    page = re.compile(r"(?:benchmarks|docs/results)/[a-z0-9_]+\.md")
    files = [
        README,
        *ROOT.glob("docs/**/*.md"),
        *ROOT.glob("src/pcvos/**/*.py"),
        *ROOT.glob("src/pcvos/**/*.json"),
    ]
    files += [*ROOT.glob("benchmarks/*"), *ROOT.glob("scripts/*.py")]
    dangling = [
        f"{p.relative_to(ROOT)}: {m}"
        for p in files
        if p.is_file()
        for m in page.findall(p.read_text("utf-8"))
        if not (ROOT / m).is_file()
    ]
    assert not dangling, dangling


def test_changelog_latest_release_is_the_package_version() -> None:
    changelog = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    assert "## [Unreleased]" in changelog
    releases = re.findall(r"^## \[(\d+\.\d+\.\d+)\] - \d{4}-\d{2}-\d{2}$", changelog, re.MULTILINE)
    assert releases, "CHANGELOG.md lists no release"
    assert releases[0] == pcvos.__version__


def test_model_card_page_matches_the_shipped_card() -> None:
    card = json.loads((ROOT / "src" / "pcvos" / "weights" / "pcvos_lite.json").read_text(encoding="utf-8"))
    page = (ROOT / "docs" / "model-card.md").read_text(encoding="utf-8")
    assert f"## pcvos-lite v{card['version']} (shipped)" in page
    assert card["sha256"] in page
    assert f"{card['bytes']:,} bytes" in page

"""The README stays a first read, and the docs site (docs/, mkdocs.yml) holds together.

`mkdocs build --strict` (make docs) checks the links inside the site; the README is not part
of it, so its links are checked here.
"""

import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
DOCS = REPO / "docs"

# [text](target) and ![alt](target); the target ends at the first space or ')'.
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)[^)]*\)")


def nav_pages(nav) -> list[str]:
    """Every page named in mkdocs.yml's nav, sections included."""
    if isinstance(nav, str):
        return [nav]
    if isinstance(nav, list):
        return [page for item in nav for page in nav_pages(item)]
    if isinstance(nav, dict):
        return [page for value in nav.values() for page in nav_pages(value)]
    return []


def slug(heading: str) -> str:
    """A heading's anchor as MkDocs (Python-Markdown's toc) and GitHub make it."""
    text = heading.replace("`", "").strip().lower()
    text = re.sub(r"[^\w\s-]", "", text)
    return re.sub(r"[-\s]+", "-", text)


def anchors(page: Path) -> set[str]:
    text = re.sub(r"(?ms)^```.*?^```", "", page.read_text())  # no headings inside code
    return {slug(line.lstrip("#")) for line in text.splitlines() if line.startswith("#")}


def readme_links() -> list[str]:
    text = re.sub(r"(?ms)^```.*?^```", "", README.read_text())
    return [t for t in LINK.findall(text) if not re.match(r"[a-z]+:|#", t)]


def course_table(text: str) -> list[str]:
    """The rows of the first table after the heading "The course, chapter by chapter"."""
    lines = text[text.index("## The course, chapter by chapter") :].splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("|"))
    end = next((i for i in range(first, len(lines)) if not lines[i].startswith("|")), len(lines))
    return lines[first:end]


def test_readme_is_a_first_read():
    lines = len(README.read_text().splitlines())
    assert lines < 300, f"README.md has {lines} lines; move the details to a page in docs/"


def test_every_page_is_in_the_nav():
    config = yaml.safe_load((REPO / "mkdocs.yml").read_text())
    listed = nav_pages(config["nav"])
    pages = sorted(p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md"))
    assert sorted(set(pages) - set(listed)) == [], "pages missing from mkdocs.yml's nav"
    assert sorted(set(listed) - set(pages)) == [], "nav entries without a page in docs/"


def test_readme_has_links_to_check():
    assert len(readme_links()) >= 10


@pytest.mark.parametrize("target", readme_links())
def test_readme_link_points_at_a_file(target: str):
    path, _, anchor = target.partition("#")
    assert (REPO / path).exists(), f"README.md links to {path}, which does not exist"
    if anchor:
        assert anchor in anchors(REPO / path), f"README.md links to {target}: no such heading"


def test_course_table_is_the_same_in_readme_and_docs():
    readme = course_table(README.read_text())
    assert len(readme) >= 8
    assert course_table((DOCS / "index.md").read_text()) == readme


def test_commands_page_keeps_its_markers():
    text = (DOCS / "commands.md").read_text()
    start, end = text.index("<!-- commands:start -->"), text.index("<!-- commands:end -->")
    assert start < end and "dltrain train" in text[start:end]

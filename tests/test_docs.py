"""The README and docs/ describe the code as it is: links resolve, settings exist, no diary."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from consumers.config.settings import Settings
from consumers.contracts import settings_page
from consumers.contracts.generate import CONFIG_PAGE

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = [README, *sorted(DOCS.glob("*.md"))]

LINK = re.compile(r"\]\(([^)\s]+)\)")
SETTING = re.compile(r"IMAGESTREAM_[A-Z0-9_]*[A-Z0-9_*]")
# "session" in the technical sense only: Kafka's session timeout, aiohttp's ClientSession.
TECHNICAL_SESSION = re.compile(rb"session[._ ]?timeout|clientsession", re.IGNORECASE)


def _anchor(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    anchors: set[str] = set()
    fenced = False
    for line in page.read_text().splitlines():
        fenced ^= line.startswith("```")  # a "# comment" in a code block is no heading
        if line.startswith("#") and not fenced:
            anchors.add(_anchor(line.lstrip("#")))
    return anchors


def _links(page: Path) -> list[tuple[Path, str]]:
    """(target file, anchor) of every relative link on the page."""
    found = []
    for target in LINK.findall(page.read_text()):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        path, _, anchor = target.partition("#")
        found.append(((page.parent / path).resolve() if path else page, anchor))
    return found


def test_readme_is_short() -> None:
    assert len(README.read_text().splitlines()) <= 320


def test_every_docs_page_linked_from_the_readme_exists() -> None:
    linked = {path for path, _ in _links(README) if path.parent == DOCS}
    assert len(linked) >= 8, "the README links the docs pages"
    missing = {path.name for path in linked if not path.is_file()}
    assert not missing, f"README links missing pages: {sorted(missing)}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_links_and_anchors_resolve(page: Path) -> None:
    broken = []
    for path, anchor in _links(page):
        if not path.exists():
            broken.append(str(path.relative_to(ROOT)))
        elif anchor and path.suffix == ".md" and anchor not in _anchors(path):
            broken.append(f"{path.relative_to(ROOT)}#{anchor}")
    assert not broken, f"{page.name}: broken links {broken}"


def _readme_table() -> dict[str, str]:
    """Setting -> its default as the README's configuration table shows it."""
    section = README.read_text().partition("## Configuration")[2].partition("\n## ")[0]
    rows = re.findall(r"^\| `(IMAGESTREAM_[A-Z0-9_]+)` \| ([^|]*) \|", section, re.MULTILINE)
    return dict(rows)


def _same_default(shown: str, rendered: str) -> bool:
    """`false` for `False`, `["images"]` for `['images']`; "(none)" and the like pass."""
    if not shown.startswith("`"):
        return True
    return shown.lower().replace('"', "'") == rendered.lower()


def test_the_readme_settings_table_names_real_settings_and_defaults() -> None:
    table = _readme_table()
    assert len(table) >= 10
    real = {env: default for env, default, _ in settings_page.rows(Settings, "IMAGESTREAM_")}
    unknown = sorted(set(table) - set(real))
    assert not unknown, f"README's table names settings the code does not have: {unknown}"
    wrong = {name: shown for name, shown in table.items() if not _same_default(shown, real[name])}
    assert not wrong, f"README's table shows defaults the code does not have: {wrong}"


def _known(name: str, real: set[str]) -> bool:
    """A name ending in ``_`` or ``*`` (``IMAGESTREAM_GATEWAY__MAX_*``) is a prefix."""
    if name.endswith(("_", "*")):
        return any(setting.startswith(name.rstrip("*")) for setting in real)
    return name in real


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_setting_mentioned_exists(page: Path) -> None:
    real = settings_page.setting_names()
    unknown = {name for name in SETTING.findall(page.read_text()) if not _known(name, real)}
    assert not unknown, f"{page.name} names settings the code does not have: {sorted(unknown)}"


def test_no_page_tells_the_projects_history() -> None:
    """What `grep -ri session README.md docs/` finds, less Kafka's session timeout."""
    found = []
    for path in [README, *sorted(p for p in DOCS.rglob("*") if p.is_file())]:
        for number, line in enumerate(path.read_bytes().splitlines(), 1):
            if b"session" in TECHNICAL_SESSION.sub(b"", line).lower():
                found.append(f"{path.relative_to(ROOT)}:{number}")
    assert not found, f"history belongs in git log: {found[:10]}"


def test_the_configuration_page_is_the_rendered_settings_tree() -> None:
    page = CONFIG_PAGE.read_text()
    assert page == settings_page.render(), "run `imagestream schemas`"
    assert all(f"`{name}`" in page for name in settings_page.setting_names())

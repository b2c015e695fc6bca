"""The README and the docs point at things that exist: every relative link resolves to a file (and its
``#anchor`` to a heading of that file), every ``docs/*.md`` the prose names is there, and every module
docs/architecture.md names is in the tree. Moving a section or a module without its references fails here."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def github_anchor(heading: str) -> str:
    """The id GitHub gives a heading: lower case, punctuation but ``-`` and ``_`` dropped, spaces to ``-``."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # a `#` comment in a code block is no heading
    return {github_anchor(m) for m in re.findall(r"^#{1,6} (.+)$", text, flags=re.M)}


def test_every_relative_link_resolves_to_a_file_and_a_heading():
    broken = []
    for page in PAGES:
        for target in LINK.findall(page.read_text()):
            if re.match(r"[a-z]+:", target):
                continue  # http(s), mailto: not checked offline
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            if not dest.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                broken.append(f"{page.relative_to(ROOT)}: {target} (no heading #{anchor})")
    assert not broken, "\n".join(broken)


def test_every_docs_page_named_in_prose_exists():
    missing = [(page.name, name) for page in PAGES for name in re.findall(r"\bdocs/[\w-]+\.md\b", page.read_text())
               if not (ROOT / name).is_file()]
    assert not missing, missing


def test_every_module_the_architecture_page_names_exists():
    text = (ROOT / "docs" / "architecture.md").read_text()
    named = {m.split("::")[0] for m in re.findall(r"`([\w/]+\.py(?:::\w+)?)`", text)}
    folder = ""
    for line in text.splitlines():  # the layer drawing: a folder line, then the modules indented below it
        if m := re.match(r"^\s*((?:selfplay|actors)/[\w/.]*)\s", line):
            named.add(m.group(1))
            folder = m.group(1) if m.group(1).endswith("/") else ""
        elif folder and (m := re.match(r"^\s+(\w+(?:\.py|/)(?:, \w+(?:\.py|/))*)\s", line)):
            named |= {folder + name for name in m.group(1).split(", ")}
    assert len(named) >= 10, named  # the page names the modules of each step
    modules = [p.relative_to(ROOT).as_posix() for top in ("selfplay", "actors") for p in (ROOT / top).rglob("*")]

    def exists(name: str) -> bool:  # `loop/driver.py` is under selfplay/; a bare `buckets.py` anywhere below it
        return any(m == name or m.endswith("/" + name) for m in modules) or (ROOT / name).exists()

    missing = sorted(n for n in named if not exists(n.rstrip("/")))
    assert not missing, f"docs/architecture.md names modules that are not in the tree: {missing}"

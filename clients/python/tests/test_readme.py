"""The README's "Writing an agent" examples are the example files, byte for byte: the first is
examples/analytics_agent.py (the end-to-end test runs it as vendor.example's analytics
upstream), the second examples/planning_agent.py (the end-to-end test runs it as company.com's
planning agent). The READMEs are wrapped at 100 columns."""

from __future__ import annotations

import re

from conftest import EXAMPLES, ROOT

WIDTH = 100


def readme_examples(readme: str = "README.md") -> list[str]:
    text = (ROOT / readme).read_text()
    section = text.split("## Writing an agent", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert blocks, "no python block in the README's Writing an agent section"
    return blocks


def test_readme_examples_are_the_example_files() -> None:
    assert readme_examples() == [
        (EXAMPLES / "analytics_agent.py").read_text(),
        (EXAMPLES / "planning_agent.py").read_text(),
    ]


def test_the_repository_readme_shows_the_same_example() -> None:
    assert readme_examples("../../README.md") == [(EXAMPLES / "analytics_agent.py").read_text()]


def test_the_example_is_ten_lines() -> None:
    lines = [line for line in readme_examples()[0].splitlines() if line.strip()]
    assert len(lines) == 10, lines


def test_the_examples_compile() -> None:
    for i, block in enumerate(readme_examples()):
        compile(block, f"example-{i}.py", "exec")


def test_lines_are_wrapped() -> None:
    long = [
        f"{name}:{n}: {len(line)}"
        for name, text in [
            ("clients/python/README.md", (ROOT / "README.md").read_text()),
            # The SDK's section of the repository README.
            ("README.md", (ROOT / "../../README.md").read_text().split("## Writing an agent", 1)[1].split("\n## ", 1)[0]),
            *[(p.name, p.read_text()) for p in sorted(EXAMPLES.glob("*.py"))],
        ]
        for n, line in enumerate(text.splitlines(), 1)
        if len(line) > WIDTH
    ]
    assert not long, long

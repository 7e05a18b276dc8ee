"""The README's "Writing an agent" example is examples/analytics_agent.py, byte for byte (the
end-to-end test runs that file as vendor.example's analytics upstream)."""

from __future__ import annotations

import re

from conftest import EXAMPLES, ROOT


def readme_example(readme: str = "README.md") -> str:
    text = (ROOT / readme).read_text()
    section = text.split("## Writing an agent", 1)[1].split("\n## ", 1)[0]
    m = re.search(r"```python\n(.*?)```", section, re.S)
    assert m, "no python block in the README's Writing an agent section"
    return m.group(1)


def test_readme_example_is_the_example_file() -> None:
    assert readme_example() == (EXAMPLES / "analytics_agent.py").read_text()


def test_the_repository_readme_shows_the_same_example() -> None:
    assert readme_example("../../README.md") == (EXAMPLES / "analytics_agent.py").read_text()


def test_the_example_is_ten_lines() -> None:
    lines = [line for line in readme_example().splitlines() if line.strip()]
    assert len(lines) == 10, lines


def test_the_example_compiles() -> None:
    compile(readme_example(), "analytics_agent.py", "exec")

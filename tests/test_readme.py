"""The README's Python snippets run as written, each on its own, as a new user would paste them."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
DOCS = ("README.md", "RESULTS.md")


def _python_blocks(name: str) -> list[str]:
  return re.findall(r"^```python\n(.*?)^```", (ROOT / name).read_text(), re.M | re.S)


def test_the_readme_has_python_snippets_to_run():
  assert len(_python_blocks("README.md")) >= 3  # Pruning, weight sharing, your own model.


@pytest.mark.parametrize("index", range(len(_python_blocks("README.md"))))
def test_readme_python_snippet_runs_as_written(index, tmp_path, monkeypatch):
  """A fresh namespace per snippet: a name used but never defined or imported fails here."""
  monkeypatch.chdir(tmp_path)  # Files a snippet writes (mlp.dcz) land here.
  code = _python_blocks("README.md")[index]
  exec(compile(code, f"README.md python snippet {index + 1}", "exec"), {"__name__": "__readme__"})


@pytest.mark.parametrize("name", DOCS)
def test_every_config_file_the_docs_name_exists(name):
  named = set(re.findall(r"configs/[\w{},]+\.py", (ROOT / name).read_text()))
  paths = {f"configs/{stem}{k}.py" for path in named
           for stem, ks in [re.match(r"configs/([\w]*?)(\{[\d,]+\}|)\.py", path).groups()]
           for k in (ks.strip("{}").split(",") if ks else [""])}
  assert paths and not [path for path in sorted(paths) if not (ROOT / path).exists()]

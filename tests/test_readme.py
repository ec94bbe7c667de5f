"""The README's Python examples run as written, and its two commands are the ones CI uses."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_python_examples_run():
    blocks = re.findall(r"```python\n(.*?)```", README, flags=re.S)
    assert blocks, "the README has no Python example"
    for code in blocks:
        exec(compile(code, "README.md", "exec"), {})


def test_ci_runs_the_readme_test_command():
    commands = re.findall(r"```bash\n(.*?)```", README, flags=re.S)[0]
    test_line = [ln for ln in commands.splitlines() if "pytest" in ln and not ln.startswith("#")]
    assert len(test_line) == 1
    ci = (ROOT / ".ci" / "run").read_text()
    assert test_line[0].strip() in ci

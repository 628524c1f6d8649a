"""The README's two first commands are what CI and a new user run: keep them true."""

import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _readme_commands():
  with open(os.path.join(REPO, 'README.md')) as f:
    text = f.read()
  block = text.split('```bash\n', 1)[1].split('```', 1)[0]
  return [line for line in block.splitlines() if line.strip()]


def test_readme_starts_with_two_commands():
  commands = _readme_commands()
  assert len(commands) == 2
  assert commands[0] == 'pip install -e . && python -m experiments.unlearn'


def test_ci_runs_exactly_the_readme_test_command():
  with open(os.path.join(REPO, '.ci', 'run')) as f:
    last = [line for line in f.read().splitlines() if line.strip()][-1]
  assert last == _readme_commands()[1]

"""Docs that cannot drift: every ``make …`` and ``python -m extractive_qa.…`` line of the README and of docs/ is
read and its config composed with Hydra (or its arguments parsed by the command's own parser) -- no training: every
override must exist and every value parse. A line whose comment says it is "the same" as the line above must
resolve to the same config. And the documentation site builds with ``mkdocs build --strict`` (a broken link or a
page missing from the navigation fails)."""

from __future__ import annotations

import importlib
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from helpers import ROOT

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
HYDRA = {"train": "train", "predict": "predict", "bench": "bench", "report": "report"}  # config per module
ARGPARSE = {"compare", "evaluate", "gpu_check", "serve", "sync", "server"}
MAKE = {"train": "train", "predict": "predict", "report": "compare", "evaluate": "evaluate", "bench": "bench",
        "serve": "serve", "server": "server", "gpu-check": "gpu_check"}  # make target -> module
NOT_COMMANDS = {"test", "install", "ui", "lint", "postgres", "clean", "docs"}  # targets without a config to check


@dataclass
class Command:
    where: str  # file:line
    module: str
    args: list[str]
    same_as_above: bool
    text: str


def _code_lines(path: Path):
    """(line number, text) of every line in a fenced code block, continuation lines joined."""
    inside, pending, start = False, "", 0
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip().startswith("```"):
            inside = not inside
            continue
        if not inside:
            continue
        if not pending:
            start = number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        yield start, pending + line
        pending = ""


def commands() -> list[Command]:
    found = []
    for path in DOCS:
        for number, line in _code_lines(path):
            comment = line.split(" #", 1)[1] if " #" in line else ""
            try:
                tokens = shlex.split(line, comments=True)
            except ValueError:
                continue
            while tokens and re.match(r"^[A-Z_]+=", tokens[0]):  # environment assignments before the command
                tokens = tokens[1:]
            where = f"{path.relative_to(ROOT)}:{number}"
            same = "the same" in comment
            if len(tokens) >= 2 and tokens[0] == "make" and tokens[1] in MAKE:
                args = next((shlex.split(t[len("ARGS="):]) for t in tokens[2:] if t.startswith("ARGS=")), [])
                if tokens[1] == "serve":
                    model = next((t[len("MODEL="):] for t in tokens[2:] if t.startswith("MODEL=")), None)
                    args = [model, *args] if model else args
                found.append(Command(where, MAKE[tokens[1]], args, same, line))
            elif len(tokens) >= 2 and tokens[0] == "make" and tokens[1] not in NOT_COMMANDS:
                raise AssertionError(f"{where}: `make {tokens[1]}` is not a target the docs' test knows: {line}")
            elif len(tokens) >= 3 and tokens[0].endswith("python") and tokens[1] == "-m" and \
                    tokens[2].startswith("extractive_qa."):
                found.append(Command(where, tokens[2].split(".", 1)[1], tokens[3:], same, line))
    return found


def _first_values(args: list[str]) -> list[str]:
    """A multirun's overrides with every sweep replaced by its first value (what its first job composes)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser, out = OverridesParser.create(), []
    for arg in args:
        if arg == "-m":
            continue
        override = parser.parse_override(arg)
        if not override.is_sweep_override():
            out.append(arg)
            continue
        try:
            first = next(iter(override.sweep_string_iterator()))
        except Exception:  # noqa: BLE001 - an interval: its start stands for it
            first = str(override.value().start)
        out.append(f"{override.get_key_element()}={first}")
    return out


def compose(command: Command):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from extractive_qa.core.config import CONF_DIR

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return hydra_compose(HYDRA[command.module], overrides=_first_values(command.args), return_hydra_config=True)


ALL = commands()


def test_the_docs_hold_commands():
    modules = {c.module for c in ALL}
    assert len(ALL) >= 40 and {"train", "predict", "compare", "evaluate", "server", "serve"} <= modules, modules


@pytest.mark.parametrize("command", ALL, ids=[c.where for c in ALL])
def test_every_command_composes(command):
    if command.module in HYDRA:
        try:
            compose(command)
        except Exception as err:  # noqa: BLE001 - reported with the line it came from
            pytest.fail(f"{command.where}: {command.text.strip()}\n  {type(err).__name__}: {err}")
    elif command.module in ARGPARSE:
        parser = importlib.import_module(f"extractive_qa.{command.module}").arguments()
        try:
            parser.parse_args(command.args)
        except SystemExit:
            pytest.fail(f"{command.where}: {command.text.strip()}: its arguments do not parse")
    else:
        pytest.fail(f"{command.where}: no extractive_qa.{command.module} to run: {command.text.strip()}")


def _resolved(cfg) -> dict:
    """A composed config's job part, resolved, with paths made absolute (relative ones are from the project root,
    where `make` runs)."""
    from omegaconf import OmegaConf

    plain = OmegaConf.to_container(cfg, resolve=False)
    plain.pop("hydra", None)
    resolved = OmegaConf.to_container(OmegaConf.create(plain), resolve=True)

    def absolute(value):
        if isinstance(value, dict):
            return {k: absolute(v) for k, v in value.items()}
        if isinstance(value, str) and value.startswith(("../", "./")):
            return str((ROOT / value).resolve())
        return value

    return absolute(resolved)


SAME = [(ALL[i - 1], c) for i, c in enumerate(ALL) if c.same_as_above and i and c.module == ALL[i - 1].module
        and c.module in HYDRA]


def test_some_lines_say_they_are_the_same():
    assert SAME, "no line of the docs says it is the same as the line above (the offline preset by hand does)"


@pytest.mark.parametrize("pair", SAME, ids=lambda p: p[1].where)
def test_lines_that_say_they_are_the_same_are(pair):
    above, line = pair
    assert _resolved(compose(above)) == _resolved(compose(line)), f"{line.where} is not the same as {above.where}"


def test_the_documentation_site_builds_strict(tmp_path):
    out = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert (tmp_path / "site" / "index.html").is_file()

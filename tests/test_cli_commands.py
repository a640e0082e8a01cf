"""The command line's one pattern: every subcommand a ``Command``; converting the member options
starts nothing; ``--ray-address`` starts Ray once, where the command runs, after its checks."""

from __future__ import annotations

import subprocess
import sys

import pytest

from unite_integrations import cli
from unite_integrations.cli import COMMANDS, _parser
from unite_integrations.cli.members import member_specs


def test_every_subcommand_is_a_registered_command():
    names = [c.name for c in COMMANDS]
    assert names == ["generate", "check", "eval", "serve"]
    sub = next(a for a in _parser()._actions if a.dest == "command")
    assert list(sub.choices) == names


def test_member_specs_place_on_ray_without_starting_it():
    code = (
        "import sys\n"
        "from unite_integrations.cli import _parser\n"
        "from unite_integrations.cli.members import member_specs\n"
        "args = _parser().parse_args(['generate', 'x', '-m', 'a', '-m', 'b', "
        "'--ray-address', 'ray://nowhere:1'])\n"
        "print([s.placement for s in member_specs(args)], 'ray' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.split() == ["['ray',", "'ray']", "False"]
    local = member_specs(_parser().parse_args(["generate", "x", "-m", "a"]))
    assert [s.placement for s in local] == ["local"]


@pytest.fixture
def started(monkeypatch) -> list[str | None]:
    """The addresses Ray was asked to join (the real ``connect`` replaced)."""
    from unite_integrations.engine import ray_members

    calls: list[str | None] = []
    monkeypatch.setattr(ray_members, "connect", calls.append)
    return calls


def test_ray_starts_once_when_the_command_runs(monkeypatch, started):
    pytest.importorskip("uvicorn")
    from unite_integrations.server import run

    seen: dict[str, object] = {}

    def fake_serve(members, **kwargs):
        seen.update(members=members, started=list(started))

    monkeypatch.setattr(run, "serve", fake_serve)
    assert cli.main(["serve", "-m", "a", "--ray-address", "auto"]) == 0
    assert started == ["auto"] and seen["started"] == ["auto"]  # before the server loads
    assert [m.placement for m in seen["members"]] == ["ray"]
    started.clear()
    assert cli.main(["serve", "-m", "a"]) == 0 and not started


def test_refused_arguments_start_no_ray(started, capsys):
    assert cli.main(["serve", "-m", "a", "--ray-address", "auto", "--max-queue", "0"]) == 2
    assert cli.main(["eval", "-d", "arc", "--resume", "--ray-address", "auto"]) == 2
    assert (
        cli.main(["generate", "x", "-m", "a", "-w", "1", "-w", "2", "--ray-address", "auto"]) == 2
    )
    assert capsys.readouterr().err.count("unite: error:") == 3 and not started

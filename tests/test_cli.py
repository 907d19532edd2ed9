"""cli.py: `run`'s usual command lines read without argparse, exactly as argparse reads them."""

from __future__ import annotations

import pytest

from batch_agent import cli


@pytest.mark.parametrize(
    "argv",
    [
        ["run"],
        ["run", "--once"],
        ["run", "--log-format", "json", "--exit-with-parent"],
        ["run", "--endpoint=http://127.0.0.1:8080/", "--state-dir", "/var/tmp/s"],
        ["run", "--config", "c.json", "--cloud-logging=never", "--reported-version", "1.2"],
        ["run", "--secretmanager-endpoint", "x", "--kms-endpoint", "y", "--logging-endpoint=z"],
        ["run", "--endpoint", "a", "--endpoint", "b", "--endpoint="],
    ],
)
def test_usual_run_command_lines_read_as_argparse_reads_them(argv: list[str]) -> None:
    """The same namespace as argparse's, every option present (unset ones None or False)."""
    fast = cli._run_args(argv)
    assert fast is not None
    assert vars(fast) == vars(cli._parser().parse_args(argv))


@pytest.mark.parametrize(
    "argv",
    [
        ["status"],
        ["run", "-h"],
        ["run", "--end", "x"],  # an abbreviation: argparse's to expand
        ["run", "--log-format", "yaml"],  # not a choice: argparse's error
        ["run", "--endpoint"],  # no value
        ["run", "--endpoint", "--once"],
        ["run", "--once=yes"],
        ["run", "extra"],
    ],
)
def test_anything_else_is_left_to_argparse(argv: list[str]) -> None:
    """Help, abbreviations and mistakes go to argparse, for its messages."""
    assert cli._run_args(argv) is None

"""`make run`'s arguments: what the demo could never run is refused before the stack starts."""

import pytest

from local.stack import _arguments


@pytest.mark.parametrize(
    "argv",
    [
        ["--deadline", "5"],  # below send_message's 10 s: every send would answer 400
        ["--deadline", "2592001"],
        ["--population", "0"],  # no message: the verdict would pass on nothing
        ["--population", "-2"],
        ["--timeout", "0"],
        ["--batch", "0"],
        ["--period", "0"],
    ],
)
def test_what_the_demo_cannot_run_is_a_usage_error(argv, capsys):
    with pytest.raises(SystemExit) as exited:
        _arguments(argv)
    assert exited.value.code == 2
    assert argv[0] in capsys.readouterr().err


def test_the_defaults_and_the_shortest_deadline_are_taken():
    assert _arguments([]).deadline == 20
    assert _arguments(["--deadline", "10", "--population", "1"]).population == 1

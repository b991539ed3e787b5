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
        # URLs no request could reach: each push or call would fail, and be retried, forever
        ["--outcomes-push-url", "notaurl", "--no-demo"],
        ["--rbm-root", "ftp://rbm.example.com", "--no-demo"],
        ["--sms-webhook-url", "gateway.example.com/send", "--sms-webhook-secret", "s", "--no-demo"],
    ],
)
def test_what_the_demo_cannot_run_is_a_usage_error(argv, capsys):
    with pytest.raises(SystemExit) as exited:
        _arguments(argv)
    assert exited.value.code == 2
    assert argv[0] in capsys.readouterr().err


def test_the_defaults_the_shortest_deadline_and_http_urls_are_taken():
    assert _arguments([]).deadline == 20
    assert _arguments(["--deadline", "10", "--population", "1"]).population == 1
    pushed = _arguments(["--no-demo", "--outcomes-push-url", "https://sender.example.com/rbm-outcomes"])
    assert pushed.outcomes_push_url == "https://sender.example.com/rbm-outcomes"
    assert _arguments(["--no-demo", "--rbm-root", "http://127.0.0.1:8080"]).rbm_root == "http://127.0.0.1:8080"

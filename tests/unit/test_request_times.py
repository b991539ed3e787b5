"""The time a function process spends inside requests (local/request_times.py):
overlapping requests count once, as request-based billing charges an
instance, and a window clips them."""

import json

from local.request_times import Recorder, Served, instance_seconds, read


def served(*intervals: tuple[float, float]) -> list[Served]:
    return [Served(began, ended, 200, "/") for began, ended in intervals]


def test_overlapping_requests_count_once_and_gaps_not_at_all():
    assert instance_seconds(served((0, 2), (1, 3), (1.5, 2.5), (10, 11))) == 4.0
    assert instance_seconds(served((10, 11), (0, 2))) == 3.0  # in any order
    assert instance_seconds([]) == 0.0


def test_a_window_clips_the_requests_that_cross_it():
    requests = served((0, 2), (5, 8), (9, 20))
    assert instance_seconds(requests, since=1, until=10) == 1 + 3 + 1
    assert instance_seconds(requests, since=20) == 0.0


def test_the_recorder_writes_one_line_per_request_with_its_status(tmp_path):
    log = tmp_path / "requests.jsonl"

    def app(environ, start_response):
        start_response("503 Service Unavailable", [])
        return [b"busy"]

    recorder = Recorder(app, log)
    assert recorder({"PATH_INFO": "/work"}, lambda status, headers, exc_info=None: None) == [b"busy"]
    recorder({}, lambda status, headers, exc_info=None: None)
    log.write_text(log.read_text() + '{"began": 1')  # a line cut short by a killed process is skipped
    [first, second] = read(log)
    assert (first.status, first.path, second.path) == (503, "/work", "")
    assert first.began <= first.ended <= second.began
    assert json.loads(log.read_text().splitlines()[0])["status"] == 503
    assert read(tmp_path / "absent.jsonl") == []

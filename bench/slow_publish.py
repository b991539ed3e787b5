"""receive_webhook with every Pub/Sub publish taking PUBLISH_DELAY_SECONDS longer, for
bench.threads: Pub/Sub in a slow period (the webhook waits on the publish before it
answers, so a request holds its server thread for the whole publish).

Served by functions-framework like main.py: `--source bench/slow_publish.py
--target receive_webhook`, with the repository root on PYTHONPATH.
"""

import os
import time

from functions import pubsub
from main import receive_webhook

DELAY = float(os.environ.get("PUBLISH_DELAY_SECONDS", "2"))
_publish = pubsub.publish


def _slow_publish(topic: str, data: bytes, attributes: dict[str, str]) -> str:
    time.sleep(DELAY)
    return _publish(topic, data, attributes)


pubsub.publish = _slow_publish
__all__ = ["receive_webhook"]

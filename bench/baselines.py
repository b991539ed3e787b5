"""Reference functions bench.webhook measures receive_webhook against.

Served by functions-framework like the real entry points:
`--source bench/baselines.py --target floor|naive|imports_only`.

- `floor`: answers 200 and does nothing: the server's own cost, the best any
  webhook can do.
- `naive`: the webhook as first written: a default PublisherClient built once
  at import, no signature check, every request publishes and waits for
  `future.result()`. It needs BASELINE_TOPIC (a topic id in
  GOOGLE_CLOUD_PROJECT); without it no client is built.
- `imports_only`: imports functions_framework and google.cloud.pubsub and
  answers 200: the cold-start floor of any function that publishes.
"""

import base64
import json
import os

import functions_framework
from google.cloud import pubsub_v1

_TOPIC = os.environ.get("BASELINE_TOPIC")
_publisher = pubsub_v1.PublisherClient() if _TOPIC else None
_topic_path = _publisher.topic_path(os.environ.get("GOOGLE_CLOUD_PROJECT", ""), _TOPIC) if _TOPIC else None


@functions_framework.http
def floor(request):
    return "ok", 200


@functions_framework.http
def naive(request):
    data = base64.b64decode(json.loads(request.get_data())["message"]["data"])
    _publisher.publish(_topic_path, data).result()
    return "ok", 200


@functions_framework.http
def imports_only(request):
    return "ok", 200

"""Entry points of rbm-relay; each deployment picks one with --entry-point.

Each entry point imports its own module, functions/<entry point>.py, on first
call, so a function pays at cold start only for what it uses (the webhook
never loads Firestore). Every
HTTP entry point answers JSON, an unexpected error included.
"""

import flask
import functions_framework
from cloudevents.http import CloudEvent

from functions.replies import Reply, json_errors


@functions_framework.http
@json_errors
def receive_webhook(request: flask.Request) -> Reply:
    from functions.receive_webhook import handle

    return handle(request)


@functions_framework.http
@json_errors
def receive_sms_status(request: flask.Request) -> Reply:
    from functions.receive_sms_status import handle

    return handle(request)


@functions_framework.cloud_event
def track_delivery(cloud_event: CloudEvent) -> None:
    from functions.track_delivery import handle

    handle(cloud_event)


@functions_framework.cloud_event
def record_inbound(cloud_event: CloudEvent) -> None:
    from functions.record_inbound import handle

    handle(cloud_event)


@functions_framework.http
@json_errors
def send_message(request: flask.Request) -> Reply:
    from functions.send_message import handle

    return handle(request)


@functions_framework.http
@json_errors
def revoke_expired(request: flask.Request) -> Reply:
    from functions.revoke_expired import handle

    return handle(request)


@functions_framework.http
@json_errors
def send_fallbacks(request: flask.Request) -> Reply:
    from functions.send_fallbacks import handle

    return handle(request)


@functions_framework.http
@json_errors
def process_due_work(request: flask.Request) -> Reply:
    from functions.process_due_work import handle

    return handle(request)

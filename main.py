"""Entry points of rbm-relay; each deployment picks one with --entry-point.

Each entry point imports its own module on first call, so a function pays at
cold start only for what it uses (the webhook never loads Firestore). Every
HTTP entry point answers JSON, an unexpected error included.
"""

import flask
import functions_framework
from cloudevents.http import CloudEvent

from functions.replies import Reply, json_errors


@functions_framework.http
@json_errors
def receive_webhook(request: flask.Request) -> Reply:
    from functions import webhook

    return webhook.handle(request)


@functions_framework.cloud_event
def track_delivery(cloud_event: CloudEvent) -> None:
    from functions import tracker

    tracker.handle(cloud_event)


@functions_framework.cloud_event
def record_inbound(cloud_event: CloudEvent) -> None:
    from functions import inbound

    inbound.handle(cloud_event)


@functions_framework.http
@json_errors
def send_message(request: flask.Request) -> Reply:
    from functions import sender

    return sender.handle(request)


@functions_framework.http
@json_errors
def revoke_expired(request: flask.Request) -> Reply:
    from functions import due

    return due.handle_scheduled(request, "revoke")


@functions_framework.http
@json_errors
def send_fallbacks(request: flask.Request) -> Reply:
    from functions import due

    return due.handle_scheduled(request, "fallback")


@functions_framework.cloud_event
def process_due_work(cloud_event: CloudEvent) -> None:
    from functions import due

    due.handle_item(cloud_event)

"""Entry points of rbm-relay; each deployment picks one with --entry-point.

Each entry point imports its own module on first call, so a function pays at
cold start only for what it uses (the webhook never loads Firestore). Every
HTTP entry point answers JSON, an unexpected error included.
"""

import functions_framework

from functions.replies import json_errors


@functions_framework.http
@json_errors
def receive_webhook(request):
    from functions import webhook

    return webhook.handle(request)


@functions_framework.cloud_event
def track_delivery(cloud_event):
    from functions import tracker

    tracker.handle(cloud_event)


@functions_framework.cloud_event
def record_inbound(cloud_event):
    from functions import inbound

    inbound.handle(cloud_event)


@functions_framework.http
@json_errors
def send_message(request):
    from functions import sender

    return sender.handle(request)


@functions_framework.http
@json_errors
def revoke_expired(request):
    from functions import due

    return due.handle_scheduled(request, "revoke")


@functions_framework.http
@json_errors
def send_fallbacks(request):
    from functions import due

    return due.handle_scheduled(request, "fallback")


@functions_framework.cloud_event
def process_due_work(cloud_event):
    from functions import due

    due.handle_item(cloud_event)

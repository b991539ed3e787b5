"""Tiny functions that let the harness tests watch a real functions-framework
server from the outside."""

import json
import os
import time

import functions_framework


@functions_framework.http
def hello(request):
    return f"hello {request.args.get('name', 'world')}"


@functions_framework.http
def hold(request):
    """Answers after `seconds` (a query parameter)."""
    time.sleep(float(request.args["seconds"]))
    return "held"


@functions_framework.cloud_event
def record_event(cloud_event):
    """Append each CloudEvent as one JSON line to the file named by SAMPLE_OUTPUT."""
    line = json.dumps({"attributes": dict(cloud_event.get_attributes()), "data": cloud_event.get_data()})
    with open(os.environ["SAMPLE_OUTPUT"], "a") as out:
        out.write(line + "\n")


@functions_framework.cloud_event
def always_fail(cloud_event):
    """Never acknowledges: every push answers 500."""
    raise RuntimeError("this sample always fails")

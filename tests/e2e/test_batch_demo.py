"""The batch demo (`make run ARGS="--batch N"`) on the local stack: one send_batch, paced
creates, every message at its expected fate, and the batch's fate table printed."""

import io
import re

from functions import batches
from functions.outcomes import fate
from local import batch_demo
from local.batch_demo import RBM_RATE
from local.stack import _arguments

DEADLINE = 10  # the shortest deadline send_message accepts
SIZE = 20


def test_make_run_batch_takes_the_batch_size():
    assert _arguments(["--batch", str(SIZE)]).batch == SIZE
    assert _arguments([]).batch is None


def test_batch_demo_brings_every_message_to_its_fate_and_prints_the_fate_table(stack):
    out = io.StringIO()
    assert batch_demo.run(stack, size=SIZE, deadline=DEADLINE, timeout=30, out=out), out.getvalue()
    text = out.getvalue()
    batch_id = re.search(r"^batch (demo-\w+): 20 accepted, 0 rejected", text, re.M).group(1)
    messages = batches.of_batch(batch_id)
    assert len(messages) == SIZE and all(fate(m)[1] for m in messages)
    # A quarter of each kind: read, delivered late, revoked and texted (those three created), no RCS and texted.
    assert f"accepted {SIZE}  created 15  delivered 10  texted 10  at a fate {SIZE}/{SIZE}" in text
    assert f"batch {batch_id}, {SIZE} messages" in text
    assert "state     DELIVERED 5  READ 5  REVOKED 5  UNREACHABLE 5" in text
    assert "fallback  CANCELLED 10  SENT 10" in text
    assert "fate      rcs 10  sms 10" in text
    creates = r"creates/s: mean [\d.]+, most in one second \d+ \(15 accepted creates\)"
    assert re.search(creates + rf"; rbm queue: most in one second \d+ tasks, its configured rate {RBM_RATE:g}/s", text)

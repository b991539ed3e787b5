"""An SMS text counted as the provider counts it: encoding, units and segments. Pure, no I/O.

A text made only of GSM-7 characters (3GPP TS 23.038: the basic alphabet, and the
extension table, whose characters `^{}\\[~]|€` and form feed take an escape and so
count two) is sent as GSM-7: one unit per septet, 160 in a single SMS, 153 per
segment once split. Anything else is sent as UCS-2 / UTF-16: one unit per UTF-16
code unit (an emoji outside the Basic Multilingual Plane, a surrogate pair, counts
two), 70 in a single SMS, 67 per segment once split (Twilio, "What is UCS-2
character encoding?" and "How long can a message be?"). A segment never splits an
escape sequence or a surrogate pair: the character moves to the next segment.

Twilio refuses a body of more than 1,600 such units with error 21617 ("The
concatenated message body exceeds the 1600 character limit": "emojis … or non-GSM
characters will be counted as multiple characters",
https://www.twilio.com/docs/api/errors/21617).
"""

from dataclasses import dataclass
from enum import StrEnum

MAX_UNITS = 1600  # Twilio's body limit (21617), in the units above

GSM_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM_EXTENSION = frozenset("\f^{}\\[~]|€")


class Encoding(StrEnum):
    GSM7 = "GSM-7"
    UCS2 = "UCS-2"


# Units in a single SMS, and in each segment of a concatenated one (6 bytes of header).
_CAPACITY = {Encoding.GSM7: (160, 153), Encoding.UCS2: (70, 67)}


@dataclass(frozen=True)
class SmsCount:
    encoding: Encoding
    units: int  # GSM-7 septets, or UTF-16 code units
    segments: int  # SMS billed; 1 for an empty text


def count(text: str) -> SmsCount:
    """How the provider encodes `text`, how many units it counts, and in how many segments it goes out."""
    if all(c in GSM_BASIC or c in GSM_EXTENSION for c in text):
        encoding, weights = Encoding.GSM7, [2 if c in GSM_EXTENSION else 1 for c in text]
    else:
        encoding, weights = Encoding.UCS2, [1 if ord(c) < 0x10000 else 2 for c in text]
    units = sum(weights)
    single, per_segment = _CAPACITY[encoding]
    if units <= single:
        return SmsCount(encoding, units, 1)
    segments, room = 1, per_segment
    for weight in weights:
        if weight > room:
            segments, room = segments + 1, per_segment
        room -= weight
    return SmsCount(encoding, units, segments)


def refusal(text: str, max_segments: int | None) -> str | None:
    """Why the provider would refuse `text` as a `fallback.text` (over MAX_UNITS, or over
    `max_segments` when the gateway states a limit), with the count; None if it fits."""
    c = count(text)
    if c.units <= MAX_UNITS and (max_segments is None or c.segments <= max_segments):
        return None
    segments = "" if max_segments is None else f" in {max_segments} segment" + "s" * (max_segments != 1)
    limit = f"at most {MAX_UNITS:,} units{segments}"
    counted = f"{c.units:,} {c.encoding.value} units in {c.segments} segments"
    return f"fallback.text is {counted}; the SMS provider takes {limit}"

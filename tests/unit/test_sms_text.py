"""An SMS text counted as the provider counts it (functions/sms_text.py): exact counts
for GSM-7, its extension table, UCS-2 with surrogate pairs and mixed texts, and the
limit send_message applies."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from functions.sms_text import GSM_BASIC, GSM_EXTENSION, MAX_UNITS, Encoding, SmsCount, count, refusal

GSM7, UCS2 = Encoding.GSM7, Encoding.UCS2


@pytest.mark.parametrize(
    "text, expected",
    [
        ("", SmsCount(GSM7, 0, 1)),
        ("your code is 1234", SmsCount(GSM7, 17, 1)),
        ("a" * 160, SmsCount(GSM7, 160, 1)),
        ("a" * 161, SmsCount(GSM7, 161, 2)),
        ("a" * 306, SmsCount(GSM7, 306, 2)),
        ("a" * 307, SmsCount(GSM7, 307, 3)),
        ("a" * 1600, SmsCount(GSM7, 1600, 11)),
        ("Ça coûte 5€", SmsCount(UCS2, 11, 1)),  # û is not GSM-7: the whole text is UCS-2
        ("Ça cöute 5€", SmsCount(GSM7, 12, 1)),  # Ç, ö are GSM-7 basic; € is an extension: 2
        ("€" * 80, SmsCount(GSM7, 160, 1)),
        ("€" * 81, SmsCount(GSM7, 162, 2)),
        ("{[~]}|^\\\f€", SmsCount(GSM7, 20, 1)),
        ("a" * 152 + "€", SmsCount(GSM7, 154, 1)),
        # 153 units: 152 + the escape, which may not be split: it opens the second segment
        ("a" * 152 + "€" + "a" * 10, SmsCount(GSM7, 164, 2)),
        ("a" * 152 + "€" + "a" * 152, SmsCount(GSM7, 306, 3)),  # 306 plain units would take 2
        ("😀", SmsCount(UCS2, 2, 1)),
        ("😀" * 35, SmsCount(UCS2, 70, 1)),
        ("😀" * 36, SmsCount(UCS2, 72, 2)),
        ("你" * 70, SmsCount(UCS2, 70, 1)),
        ("你" * 71, SmsCount(UCS2, 71, 2)),
        ("你" * 134, SmsCount(UCS2, 134, 2)),
        ("你" * 135, SmsCount(UCS2, 135, 3)),
        # 66 units, then a surrogate pair that does not fit the 1 left: it opens the next segment
        ("a" * 66 + "😀" + "a" * 3, SmsCount(UCS2, 71, 2)),
        ("a" * 66 + "😀" + "a" * 66, SmsCount(UCS2, 134, 3)),
        ("code 1234 ✅", SmsCount(UCS2, 11, 1)),
        ("😀" * 800, SmsCount(UCS2, 1600, 25)),  # 33 pairs per segment of 67
    ],
)
def test_exact_counts(text, expected):
    assert count(text) == expected


def test_the_gsm_tables_are_the_standards():
    assert len(GSM_BASIC) == 127  # 128 code points less the escape to the extension table
    assert len(GSM_EXTENSION) == 10 and not GSM_BASIC & GSM_EXTENSION


gsm_text = st.text(alphabet=sorted(GSM_BASIC | GSM_EXTENSION), max_size=2000)
any_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=800)


@given(gsm_text)
def test_a_gsm_text_counts_each_extension_character_twice(text):
    c = count(text)
    assert c.encoding is GSM7 and c.units == len(text) + sum(ch in GSM_EXTENSION for ch in text)


@given(any_text)
def test_units_are_utf16_code_units_once_any_character_is_not_gsm(text):
    c = count(text)
    if c.encoding is UCS2:
        assert c.units == len(text.encode("utf-16-le")) // 2
    else:
        assert set(text) <= GSM_BASIC | GSM_EXTENSION


@given(any_text)
def test_segments_hold_the_units_and_no_more_segments_than_needed(text):
    c = count(text)
    single, per_segment = (160, 153) if c.encoding is GSM7 else (70, 67)
    if c.units <= single:
        assert c.segments == 1
    else:
        # an unsplittable pair may leave at most one unit unused per segment
        assert -(-c.units // per_segment) <= c.segments <= -(-c.units // (per_segment - 1))


@given(any_text, st.characters(blacklist_categories=("Cs",)))
def test_a_longer_text_never_takes_fewer_segments(text, extra):
    before, after = count(text), count(text + extra)
    if before.encoding is after.encoding:
        assert after.segments >= before.segments and after.units > before.units


def test_refusal_gives_the_count_and_the_limit():
    assert refusal("a" * MAX_UNITS, None) is None
    assert refusal("😀" * 800, None) is None
    assert refusal("😀" * 801, None) == (
        "fallback.text is 1,602 UCS-2 units in 25 segments; the SMS provider takes at most 1,600 units"
    )
    assert refusal("€" * 801, None) == (
        "fallback.text is 1,602 GSM-7 units in 11 segments; the SMS provider takes at most 1,600 units"
    )
    assert refusal("a" * 306, 2) is None
    assert refusal("a" * 307, 2) == (
        "fallback.text is 307 GSM-7 units in 3 segments; the SMS provider takes at most 1,600 units in 2 segments"
    )

"""intake/replies.py: every reply constant's name says its code, and its enhanced status
code (RFC 3463) is of the same class, for the AUTH replies as for the rest."""

from __future__ import annotations

from relayd.intake import replies


def test_reply_constants_have_matching_enhanced_codes() -> None:
    names = [n for n in dir(replies) if n.startswith("R") and n[1:4].isdigit()]
    assert {"R250_QUEUED", "R454_AUTH_LOCKED", "R535_AUTH_FAILED"} <= set(names)
    for name in names:
        text = getattr(replies, name)
        code = name[1:4]
        assert text.startswith(code + " "), name
        if code[0] == "3":
            continue  # RFC 2034: intermediate replies carry no enhanced code
        enhanced = text.split(" ")[1]
        assert enhanced[0] == code[0] and enhanced.count(".") == 2, name

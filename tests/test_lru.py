"""The shared LRU map behind the analysis cache, recent uploads and open worklists."""
from spine_ui.lru import LRU


def test_size_bound_and_recency():
    lru: LRU[str, int] = LRU(2)
    lru.put("a", 1)
    lru.put("b", 2)
    assert lru.get("a") == 1  # "a" is now the most recent
    lru.put("c", 3)
    assert lru.get("b") is None and lru.get("a") == 1 and lru.get("c") == 3 and len(lru) == 2
    assert lru.get(None) is None


def test_weight_bound_keeps_the_newest():
    lru: LRU[str, bytes] = LRU(10, max_weight=5, weight=len)
    lru.put("a", b"xxx")
    lru.put("b", b"yy")
    lru.put("c", b"z")  # 6 > 5: "a" goes
    assert lru.get("a") is None and lru.get("b") == b"yy" and lru.get("c") == b"z"
    lru.put("big", b"0123456789")  # alone over the bound, but the newest entry stays
    assert len(lru) == 1 and lru.get("big") == b"0123456789"
    lru.put("big", b"0")  # replacing a value re-weighs it
    lru.put("d", b"1234")
    assert lru.get("big") == b"0" and lru.get("d") == b"1234"

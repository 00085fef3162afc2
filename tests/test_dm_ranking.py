"""Replica choice without servers: same site first, then link bandwidth (symmetric links both ways),
tape and replicas being removed skipped, problematic ones last."""

from __future__ import annotations

from junodcs.dm.ranking import Links, SEInfo, rank_replicas

SES = {
    "A-DISK": SEInfo("A-DISK", "disk", "SITE.A", "https://a.example:1094"),
    "A-TAPE": SEInfo("A-TAPE", "tape", "SITE.A", "https://a-tape.example:1094"),
    "B-DISK": SEInfo("B-DISK", "disk", "SITE.B", "https://b.example", path="/data/juno"),
    "C-DISK": SEInfo("C-DISK", "disk", "SITE.C", "https://c.example"),
    "D-DISK": SEInfo("D-DISK", "disk", "SITE.D", None),
}
LINKS = Links([{"source": "SITE.A", "destination": "SITE.B", "bandwidth": 10000.0},
               {"source": "SITE.C", "destination": "SITE.A", "bandwidth": 1000.0, "symmetric": False},
               {"source": "SITE.B", "destination": "SITE.C", "bandwidth": 5000.0}])
LFN = "/juno/raw/f"


def order(replicas, site):
    ranked, skipped = rank_replicas(replicas, SES, LINKS, site, lfn=LFN)
    return [c.se.name for c in ranked], skipped


def reps(*names, status="AprioriGood"):
    return [{"se": n, "url": None, "status": status} for n in names]


def test_same_site_first_then_bandwidth_then_name() -> None:
    everything = reps("A-DISK", "A-TAPE", "B-DISK", "C-DISK", "D-DISK")
    assert order(everything, "SITE.A") == (["A-DISK", "B-DISK", "C-DISK"], ["A-TAPE", "D-DISK"])
    assert order(everything, "SITE.B") == (["B-DISK", "A-DISK", "C-DISK"], ["A-TAPE", "D-DISK"])
    # data flows from the replica to the reader: C -> A is one-way, so A -> C is unknown and comes last
    assert order(everything, "SITE.C")[0] == ["C-DISK", "B-DISK", "A-DISK"]
    # unknown site: no preference but a stable order by name
    assert order(everything, None)[0] == ["A-DISK", "B-DISK", "C-DISK"]


def test_statuses_and_urls() -> None:
    replicas = reps("A-DISK", status="Problematic") + reps("B-DISK") + reps("C-DISK", status="Trash")
    assert order(replicas, "SITE.A") == (["B-DISK", "A-DISK"], ["C-DISK"])
    assert SES["B-DISK"].url_for(LFN) == "https://b.example/data/juno/raw/f"
    assert SES["A-DISK"].url_for("/juno/x") == "https://a.example:1094/juno/x"
    assert SES["D-DISK"].url_for(LFN) is None
    ranked, _ = rank_replicas([{"se": "B-DISK", "url": "https://given/x"}], SES, LINKS, None, lfn=LFN)
    assert ranked[0].url == "https://given/x", "the catalog's URL wins over a derived one"


def test_tape_after_disk_problematic_after_tape_when_staging_is_possible() -> None:
    replicas = reps("A-TAPE") + reps("A-DISK", status="Problematic") + reps("C-DISK")
    ranked, skipped = rank_replicas(replicas, SES, LINKS, "SITE.A", lfn=LFN, tape=True)
    # same-site tape loses to a remote disk replica; a known-bad disk replica comes after staging
    assert [c.se.name for c in ranked] == ["C-DISK", "A-TAPE", "A-DISK"] and skipped == []
    assert [c.problematic for c in ranked] == [False, False, True]
    ranked, skipped = rank_replicas(replicas, SES, LINKS, "SITE.A", lfn=LFN)
    assert [c.se.name for c in ranked] == ["C-DISK", "A-DISK"] and skipped == ["A-TAPE"]

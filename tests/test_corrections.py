"""Shared corrections: signed records with precedence, withdrawal, bounds and persistence (IO-free
store), then their spread over the in-memory mesh: pushed at once, caught up by anti-entropy after a
device was away, refused (exact error, state unchanged) when the author may not make them. The attacks
of issue 21 (N2, N3) are in test_hardening_corrections.py."""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from edge_agent.mesh.corrections import Correction, CorrectionError, Corrections, make_correction
from edge_agent.mesh.features.corrections import CorrectionSync
from edge_agent.mesh.household import HouseholdRoot, Membership
from edge_agent.mesh.identity import DeviceIdentity
from edge_agent.mesh.protocol import CorrectionsData
from edge_agent.tasks import TASKS
from tests.support.meshsim import Device, household, until

PAIR = "en-pt"


class Home:
    """A household root and members, without a mesh: enough to sign and check records."""

    def __init__(self) -> None:
        self.root = HouseholdRoot(SigningKey.generate())
        self.membership = Membership(self.root.key.verify_key)
        self.ids: dict[str, DeviceIdentity] = {}

    def member(self, name: str, *, correct: bool = True, admin: bool = False) -> DeviceIdentity:
        """A member; ``correct``: the hub approved it to correct (`invite --may-correct`)."""
        ident = DeviceIdentity.generate()
        cert = self.root.issue(ident, name=name, profile="hub", requests=list(TASKS), serves=[],
                               device_class="appliance", admin=admin, may_correct=correct)  # fmt: skip
        self.membership.add_certificate(cert)
        self.ids[name] = ident
        return ident

    def fix(self, name: str, source: str, target: str, now: float | None = None) -> Correction:
        ident = self.ids[name]
        return make_correction(ident.signing_key, ident.device_id, PAIR, source, target,
                               model="bergamot-tiny11-en-pt@int8", now=now)  # fmt: skip

    def store(self, path: Path | None = None, **kw: int) -> Corrections:
        return Corrections(self.membership.member, path, **kw)


@pytest.fixture
def home() -> Home:
    h = Home()
    for name in ("fridge", "car"):
        h.member(name)
    h.member("plug", correct=False)
    h.member("hub", correct=False, admin=True)
    return h


def test_the_newest_correction_in_force_wins_and_a_withdrawal_brings_the_older_back(home: Home) -> None:
    store = home.store()
    old = home.fix("fridge", "Turn on  the oven.", "Liga o forno.", now=time.time() - 10)
    new = home.fix("car", "Turn on the oven.", "Acende o forno.")
    assert store.merge([new, old]) == (2, [])
    assert store.lookup(PAIR, ["Turn on the oven."])["Turn on the oven."] == new  # normalized match
    ident = home.ids["car"]
    back = make_correction(ident.signing_key, ident.device_id, PAIR, new.source, "", withdraws=new.id)
    assert store.merge([back]) == (1, [])
    assert store.lookup(PAIR, ["Turn on the oven."])["Turn on the oven."] == old
    assert store.lookup("pt-en", ["Turn on the oven."]) == {}


def test_every_refusal_names_its_reason_and_leaves_the_store_unchanged(home: Home) -> None:
    store = home.store()
    good = home.fix("fridge", "Good morning.", "Bom dia.")
    store.merge([good])
    before = (dict(store.records), store.digest)
    fridge, car, plug = home.ids["fridge"], home.ids["car"], home.ids["plug"]
    stranger = DeviceIdentity.generate()
    cases = {
        "not a known household member": make_correction(stranger.signing_key, stranger.device_id, PAIR,
                                                         "Hi.", "Olá."),
        "plug may not correct translations": make_correction(plug.signing_key, plug.device_id, PAIR, "Hi.",
                                                             "Olá."),
        "not signed by fridge": make_correction(car.signing_key, fridge.device_id, PAIR, "Hi.", "Olá."),
        "made in the future": home.fix("fridge", "Hi.", "Olá.", now=time.time() + 3600),
        "plug may not correct translations (the hub approves that": make_correction(
            plug.signing_key, plug.device_id, PAIR, good.source, "", withdraws=good.id),
    }  # fmt: skip
    for reason, record in cases.items():
        added, refused = store.merge([record])
        assert added == 0 and len(refused) == 1 and reason in refused[0], (reason, refused)
    edited = good.model_copy(update={"target": "Boa noite."})  # changed after signing
    assert store.merge([edited])[1] == [f"correction {edited.id[:8]}: not signed by fridge"]
    assert (dict(store.records), store.digest) == before


@pytest.mark.parametrize("withdrawer", ["hub", "car"])
def test_an_admin_or_any_device_that_may_correct_may_withdraw_anyones_correction(
    home: Home, withdrawer: str
) -> None:
    """A device approved to correct could override the sentence with its own newer correction anyway."""
    store = home.store()
    good = home.fix("fridge", "Good morning.", "Bom dia.")
    by = home.ids[withdrawer]
    back = make_correction(by.signing_key, by.device_id, PAIR, good.source, "", withdraws=good.id)
    assert store.merge([good, back]) == (2, [])
    assert store.lookup(PAIR, ["Good morning."]) == {}


def test_a_revoked_authors_corrections_stop_counting_at_once(home: Home) -> None:
    store = home.store()
    store.merge([home.fix("fridge", "Good morning.", "Bom dia.")])
    home.membership.apply_revocations(home.root.revoke(home.ids["fridge"].device_id))
    assert store.lookup(PAIR, ["Good morning."]) == {}
    assert store.forget_author(home.ids["fridge"].device_id) == 1 and store.records == {}


def test_corrections_survive_a_restart_and_stay_bounded(home: Home, tmp_path: Path) -> None:
    path = tmp_path / "corrections.json"
    store = home.store(path, max_records=6, max_per_author=4)
    now = time.time()
    records = [home.fix("fridge", f"Sentence {i}.", f"Frase {i}.", now=now - 100 + i) for i in range(6)]
    records += [home.fix("car", f"Line {i}.", f"Linha {i}.", now=now - 50 + i) for i in range(3)]
    store.merge(records)
    # Six of the fridge's were cut to its last four; the car's three then pushed the total over six,
    # so the oldest of all (the fridge's "Sentence 2.") went too.
    assert {r.source for r in store.records.values()} == {
        "Sentence 3.", "Sentence 4.", "Sentence 5.", "Line 0.", "Line 1.", "Line 2."
    }  # fmt: skip
    again = home.store(path, max_records=6, max_per_author=4)
    assert again.records == store.records and again.digest == store.digest
    assert path.stat().st_mode & 0o777 == 0o600


def test_merging_in_any_order_gives_the_same_result(home: Home) -> None:
    fridge = home.ids["fridge"]
    a = home.fix("fridge", "Good morning.", "Bom dia.", now=time.time() - 5)
    b = home.fix("car", "Good morning.", "Bom dia!", now=time.time() - 3)
    w = make_correction(fridge.signing_key, fridge.device_id, PAIR, a.source, "", withdraws=a.id)
    results = set()
    for order in itertools.permutations([a, b, w]):
        store = home.store()
        for record in order:  # one at a time, as they might arrive
            store.merge([record])
        results.add((store.digest, tuple(sorted((k, v.id) for k, v in store.active().items()))))
    assert len(results) == 1


# -- over the mesh (in-memory transport, real endpoints and crypto) ----------------------------------


def sync_for(dev: Device, tmp: Path) -> CorrectionSync:
    store = Corrections(dev.node.membership.member, tmp / dev.name / "corrections.json")
    sync = CorrectionSync(dev.endpoint, store)
    dev.corrections = store.digest if store.records else None
    return sync


def announce(dev: Device, sync: CorrectionSync) -> None:
    dev.corrections = sync.corrections.digest  # what its next presence (every 50 ms) carries


async def test_a_correction_reaches_every_device_and_one_that_was_away_catches_up(tmp_path: Path) -> None:
    async with household(tmp_path) as home:
        hub, fridge, car = (home.device(n, device_class="hub" if n == "hub" else "appliance",
                                        may_correct=n == "fridge")
                            for n in ("hub", "fridge", "car"))  # fmt: skip
        await home.start(hub, fridge)
        syncs = {d.name: sync_for(d, tmp_path) for d in (hub, fridge)}
        record = await syncs["fridge"].correct(PAIR, "Turn on the oven.", "Liga o forno.", "m@int8")
        announce(fridge, syncs["fridge"])
        assert await until(lambda: record.id in syncs["hub"].corrections.records)  # pushed at once
        announce(hub, syncs["hub"])
        # The car was off; it starts later and catches up from the digests in presence.
        syncs["car"] = sync_for(car, tmp_path)
        await home._stack.enter_async_context(car.endpoint)
        assert await until(lambda: record.id in syncs["car"].corrections.records, timeout=10)
        assert syncs["car"].corrections.lookup(PAIR, ["Turn on the oven."])["Turn on the oven."].target == (
            "Liga o forno."
        )
        # Withdrawn on the fridge: gone everywhere.
        back = await syncs["fridge"].withdraw(record.id)
        announce(fridge, syncs["fridge"])
        assert await until(lambda: all(back.id in s.corrections.records for s in syncs.values()), timeout=10)
        assert all(s.corrections.lookup(PAIR, ["Turn on the oven."]) == {} for s in syncs.values())


async def test_records_a_device_may_not_make_are_refused_by_every_peer(tmp_path: Path) -> None:
    async with household(tmp_path) as home:
        hub = home.device("hub", device_class="hub")
        plug = home.device("plug")  # the hub did not approve it to correct
        await home.start(hub, plug)
        hub_sync, plug_sync = sync_for(hub, tmp_path), sync_for(plug, tmp_path)
        with pytest.raises(CorrectionError, match="plug may not correct translations"):
            await plug_sync.correct(PAIR, "Hi.", "Olá.")
        assert plug_sync.corrections.records == {}
        forged = make_correction(plug.identity.signing_key, plug.id, PAIR, "Hi.", "Olá.")  # sent anyway
        peer = plug.endpoint.peers.get(hub.id)
        assert peer is not None
        from edge_agent.mesh.interfaces import Channel

        before = dict(hub_sync.corrections.records)
        await plug.endpoint.send(hub.id, Channel.REQUESTS, CorrectionsData(nonce=0, records=[forged]),
                                 session=peer.session)  # fmt: skip
        assert await until(lambda: hub.endpoint.dropped["CorrectionsPushForbidden"] == 1)
        assert hub_sync.corrections.records == before


def test_the_command_line_says_what_a_correction_needs(hearth_env: dict[str, str]) -> None:
    from tests.support.cli import hearth

    cases = {
        ("Turn it on. Now.", "--correct", "Liga."): "--correct fixes one sentence",
        ("Turn it on.", "--correct", "Liga.", "--local"): "corrections are shared by the household",
    }
    for args, message in cases.items():
        proc = hearth("translate", *args, env=hearth_env)
        assert proc.returncode != 0 and "Traceback" not in proc.stderr
        assert message in " ".join((proc.stdout + proc.stderr).split()), proc.stderr
    listed = hearth("corrections", "list", env=hearth_env)  # not paired: says so, no traceback
    assert listed.returncode != 0 and "not on a household mesh" in " ".join(listed.stderr.split())


async def test_a_member_flooding_pushes_gets_the_excess_dropped_unverified(tmp_path: Path) -> None:
    from edge_agent.mesh.features.corrections import PUSHED_RECORDS as PUSHES
    from edge_agent.mesh.interfaces import Channel

    async with household(tmp_path) as home:
        hub, car = home.device("hub", device_class="hub"), home.device("car", may_correct=True)
        await home.start(hub, car)
        hub_sync = sync_for(hub, tmp_path)
        peer = car.endpoint.peers.get(hub.id)
        assert peer is not None
        for i in range(PUSHES + 5):
            record = make_correction(car.identity.signing_key, car.id, PAIR, f"Line {i}.", f"Linha {i}.")
            await car.endpoint.send(hub.id, Channel.REQUESTS, CorrectionsData(nonce=0, records=[record]),
                                    session=peer.session)  # fmt: skip
        assert await until(lambda: hub.endpoint.dropped["CorrectionsPushFlood"] == 5)
        assert len(hub_sync.corrections.records) == PUSHES

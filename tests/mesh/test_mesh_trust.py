"""An impostor: a daemon on another host that claims a pinned agent_id with a different key."""

from __future__ import annotations

from mesh_harness import Mesh, numbered, start_all, subscribed, wait_for

MESH_PREFIX = "acpt4"
MESH_NET = "10.94.0"


def test_impostor_with_a_pinned_agent_id_and_another_key_is_not_trusted(mesh: Mesh, figure) -> None:
    mesh.up(3)
    # "beta" < "omega": the impostor (also "beta") dials omega at once rather than waiting 10 s
    omega, beta = mesh.daemon(1, "omega"), mesh.daemon(2, "beta")
    start_all(omega, beta)
    wait_for(
        lambda: omega.connected_to() == {"beta"} and beta.connected_to() == {"omega"},
        timeout=30,
        what="omega and beta to connect",
    )
    genuine = beta.status()
    assert omega.peer("beta")["pubkey"] == genuine["pubkey"]  # pinned (trust = tofu)

    with subscribed(omega) as inbox:
        impostor = mesh.daemon(3, "beta", name="h3-impostor")  # fresh key, made at its start
        start_all(impostor)
        fake = impostor.status()
        assert fake["agent_id"] == "beta" and fake["pubkey"] != genuine["pubkey"]

        # omega hears the other key announced for "beta" and says so, without switching to it
        def flagged() -> dict | None:
            row = omega.peer("beta")
            return row if row and row["announced_fingerprint"] == fake["fingerprint"] else None

        row = wait_for(flagged, timeout=30, what="omega to flag the key announced for beta")
        assert row["pubkey"] == genuine["pubkey"], row
        assert row["fingerprint"] == genuine["fingerprint"], row
        assert "not the pinned" in (row["last_error"] or ""), row
        assert row["status"] in ("connected", "key_changed"), row

        # the impostor's own dial is refused by omega's handshake
        wait_for(
            lambda: omega.status()["counters"].get("handshakes_refused.key_mismatch", 0) >= 1,
            timeout=30,
            what="omega to refuse the impostor's handshake",
        )
        sent = impostor.send("omega", numbered("impostor", 666))
        assert sent["state"] == "queued", sent

        # the genuine session still works, both ways
        omega.send("beta", numbered("to-genuine", 1), wait="acked", timeout=20)
        beta.send("omega", numbered("from-genuine", 2), wait="acked", timeout=20)
        wait_for(lambda: inbox.numbers("from-genuine") == [2], timeout=10, what="genuine delivery")
        assert omega.peer("beta")["status"] == "connected"
        assert omega.peer("beta")["pubkey"] == genuine["pubkey"]

        # whatever the impostor tries meanwhile never reaches omega's clients
        refused_before = omega.status()["counters"].get("handshakes_refused.key_mismatch", 0)
        wait_for(
            lambda: (
                omega.status()["counters"].get("handshakes_refused.key_mismatch", 0)
                > refused_before
            ),
            timeout=30,
            what="the impostor's next (refused) attempt",
        )
        assert inbox.numbers("impostor") == []
        assert all(e["payload"]["topic"] != "impostor" for e in inbox.envelopes())
        imp_row = impostor.peer("omega")
        assert imp_row is not None and imp_row["status"] != "connected", imp_row
        assert imp_row["queued"] == 1, imp_row
        assert omega.status()["messages_received"] == 1  # the genuine one only

    # the genuine beta hears someone else advertise its agent_id, and warns
    warnings = wait_for(
        lambda: beta.status()["warnings"], timeout=20, what="beta's warning about the impostor"
    )
    figure("genuine beta warns", warnings[0][:100])
    # the warning names the impostor's host only: its records did not merge with beta's own
    assert mesh.ip(3) in warnings[0] and mesh.ip(2) not in warnings[0], warnings

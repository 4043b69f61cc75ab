"""Who did what: an API call's audit events name its user and token, and read back by user
through the API as through the engine."""

from __future__ import annotations

from api_fixtures import agents, api, connect  # noqa: F401


def test_an_api_change_is_audited_with_its_user_and_token(api, connect):
    client = connect(api.token_for("ClusterAdmin"))
    me = client.get("/auth/whoami").json()
    assert me["token_id"]
    changed = client.put("/clusters/audited", json={"virt_type": "qemu"})
    assert changed.status_code == 200, changed.text

    page = client.get("/events", params={"user": me["user"]}).json()
    assert [(e["entity_name"], e["user"], e["token_id"]) for e in page["items"]] == [
        ("audited", me["user"], me["token_id"])]

    # The same entry, read on the engine host; the engine host's own calls are not hers.
    api.engine.clusters.ensure("local-change", virt_type="qemu")
    [entry] = api.engine.events.info(user=me["user"])
    assert (entry["entity_name"], entry["token_id"]) == ("audited", me["token_id"])
    [local] = api.engine.events.info(entity_name="local-change")
    assert local["user"].startswith("local:") and local["token_id"] == ""

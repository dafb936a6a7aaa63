from support import invite, ledger_counts


async def test_first_invite_is_granted_and_charged(stub, seller, db, clock):
    response = await stub.CheckAndConsume(invite(seller, "c1"))
    assert response.allowed
    assert (await ledger_counts(db, seller))["used"] == 1

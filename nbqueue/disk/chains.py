"""Chains (``async_chain``, ``Chain``): tasks that run one after another.

A chain is sent as its first link; each link's header carries the signed package of the
next (``Header.then``). Once a link's outcome is stored, whoever stored it (a cluster's
writer, or the caller for ``sync=True``) goes on: after a success it sends the next link
(``send_next``); after a failure, the links after it never run, and their outcomes are
stored as failures saying so (``stop``, ``Cause.DEPENDENCY``), so that a chain's counts
always reach its length. Both may be called again for the same link (a cluster that died
between storing an outcome and its ack): they look before they act.
"""

from __future__ import annotations

from nbqueue.disk.broker import Broker
from nbqueue.disk.records import Cause, Header, Record, chain_rest, decode_header
from nbqueue.disk.store import Store


def go_on(broker: Broker, store: Store, header: Header, record: Record, save_limit: int) -> None:
    """The chain of ``header``'s link, whose final outcome ``record`` is stored, goes on."""
    if header.then is None:
        return
    if record["success"]:
        send_next(broker, store, header)
    else:
        stop(broker, store, header, record, save_limit)


def send_next(broker: Broker, store: Store, header: Header) -> None:
    """Send the link after ``header``'s, unless it ran or is sent already. One whose
    outcome says the chain stopped before it (its link failed, then was retried) is
    sent again."""
    assert header.then is not None
    link = decode_header(broker.key, header.then)
    part = store.part(bool(link.cached))
    stored = part.get(link.id)
    if stored is not None and stored.get("cause") != Cause.DEPENDENCY.value:
        return  # it ran
    if broker.is_waiting(link.id) or broker.holds([link.id]):
        return  # it is queued, running, or waits for other tasks' results
    if stored is not None:
        part.delete_outcome(stored)
    if link.after:  # it takes other tasks' results: queued once they are there
        broker.wait(link.id, link.after, header.then, None)
    else:
        broker.enqueue_many([header.then], {})


def stop(broker: Broker, store: Store, header: Header, record: Record, save_limit: int) -> None:
    """Store the links after ``header``'s, whose outcome ``record`` is a failure, as
    failures that never ran."""
    error = str(record["result"]).split("\n", 1)[0]
    why = (
        f"DependencyFailed: the task before it in its chain, {header.name}, failed, so it "
        f"never ran: {error}"
    )
    store.save(chain_rest(broker.key, header, why), save_limit, replace=True)

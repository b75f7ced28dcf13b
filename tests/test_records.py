"""nbqueue.records: the named messages of a task and the functions that convert them."""

from __future__ import annotations

import ast
import os
import pickle
import sys
import time

import cloudpickle
import pytest

from nbqueue.disk import blobs
from nbqueue import conf
from nbqueue import errors
from nbqueue.disk import filesystems
from nbqueue.disk import records
from nbqueue.disk import signing
from nbqueue.errors import SignatureError
from nbqueue.disk.records import (EMPTY_ARGS, Cause, Header, Item, Outcome, cause_of,
                                  decode_header, decode_result, encode_header, failure,
                                  IterOutcome, is_cancelled, item_outcome, item_view,
                                  make_record, refused_record, tallies)
from nbqueue.disk.signing import sign

KEY = os.urandom(32)


def _header(**fields):
    base = Header("id-1", "name-1", "math.floor", "math.floor", None,
                  pickle.dumps(((2.5,), {})), enqueued=100.0)
    return base._replace(**fields)


def test_a_header_round_trips_through_a_signed_package():
    header = _header(group="g", timeout=3.0, cached=60, hook_name="h", iter="it")
    package = encode_header(KEY, header)
    decoded = decode_header(KEY, package)
    assert decoded == header and isinstance(decoded, Header)
    assert decoded.group == "g" and decoded.cached == 60 and decoded.iter == "it"


def test_a_header_queued_as_a_dict_by_an_older_version_still_reads():
    old = dict(_header()._asdict(), unknown_field=1)
    del old["iter"]
    decoded = decode_header(KEY, sign(KEY, pickle.dumps(old)))
    assert decoded == _header() and decoded.iter is None


def test_decode_header_refuses_what_is_not_a_task_of_this_store():
    with pytest.raises(SignatureError, match="cannot be read"):
        decode_header(KEY, sign(KEY, b"\x80\x05not a pickle"))
    with pytest.raises(SignatureError, match="not an nbqueue task"):
        decode_header(KEY, sign(KEY, pickle.dumps([1, 2, 3])))
    with pytest.raises(SignatureError, match="not an nbqueue task"):
        decode_header(KEY, sign(KEY, pickle.dumps({"no": "id"})))
    with pytest.raises(SignatureError, match="does not match"):
        decode_header(os.urandom(32), encode_header(KEY, _header()))


def test_a_worker_gets_only_what_it_runs():
    header = _header(timeout=None)
    assert header.item(7.0) == Item("id-1", "math.floor", None, header.args, 7.0)


def test_a_record_is_the_header_described_with_its_outcome():
    header = _header(group="g", save=False, cached=True, hook_name="mod.hook")
    record = make_record(header, Outcome("id-1", True, b"blob", 101.0, 102.0), attempt=2)
    assert record == {
        "id": "id-1", "name": "name-1", "func": "math.floor", "hook": "mod.hook",
        "args": header.args, "group": "g", "result": b"blob", "success": True,
        "started": 100.0, "stopped": 102.0, "attempt_count": 2, "cached": True,
        "save": False, "iter": None, "began": 101.0, "pid": 0, "sent": 100.0}
    retried = make_record(header._replace(sent=100.5), Outcome("id-1", True, b"", 101.0,
                                                               102.0), attempt=3)
    assert retried["started"] == 100.0 and retried["sent"] == 100.5


def test_failures_judged_by_the_cluster_and_refused_packages():
    before = time.time()
    outcome = failure("x", "TaskTimeout: timed out", Cause.TIMEOUT)
    assert not outcome.success and outcome.result == "TaskTimeout: timed out"
    assert outcome.cause is Cause.TIMEOUT
    assert before <= outcome.started == outcome.stopped <= time.time()
    record = refused_record("r", "refused-name", "SignatureError: bad", attempt=3)
    assert record["func"] == "<rejected package>" and record["success"] is False
    assert record["attempt_count"] == 3 and record["save"] is True
    assert pickle.loads(record["args"]) == ((), {}) and record["args"] == EMPTY_ARGS
    assert record["cause"] == "refused" and cause_of(record) is Cause.REFUSED


@pytest.mark.parametrize("cause", list(Cause))
def test_a_failure_record_keeps_its_cause_as_a_plain_string(cause):
    record = make_record(_header(), Outcome("id-1", False, "Error: text", 1.0, 2.0,
                                            cause=cause), attempt=1)
    assert type(record["cause"]) is str and record["cause"] == cause.value
    assert cause_of(pickle.loads(pickle.dumps(record))) is cause
    assert is_cancelled(record) is (cause is Cause.CANCELLED)


def test_a_cancel_is_told_by_the_cause_not_by_the_text():
    said = make_record(_header(), Outcome("id-1", False, "TaskCancelled: not really", 1.0,
                                          2.0, cause=Cause.RAISED), attempt=1)
    assert not is_cancelled(said) and cause_of(said) is Cause.RAISED
    success = make_record(_header(), Outcome("id-1", True, b"", 1.0, 2.0), attempt=1)
    assert "cause" not in success and cause_of(success) is None and not is_cancelled(success)


def test_results_decode_from_pickles_and_failures_stay_text():
    assert decode_result(pickle.dumps([1, 2, 3])) == [1, 2, 3]
    assert decode_result(cloudpickle.dumps(lambda x: x + 1))(1) == 2
    assert decode_result("Traceback ... ValueError") == "Traceback ... ValueError"


def test_an_iter_record_keeps_input_order_and_the_worst_outcome():
    manifest = {"id": "it", "group": "g", "ids": ["a", "b"], "func": "f", "enqueued": 5.0,
                "cached": False}
    records = [make_record(_header(id=i), Outcome(i, ok, value, 6.0, stop), attempt=n)
               for i, ok, value, stop, n in (("a", True, pickle.dumps(1), 9.0, 1),
                                             ("b", False, "ValueError: no", 8.0, 2))]
    records[1]["cause"] = Cause.RAISED.value
    outcome = IterOutcome(manifest)
    for record in records:
        outcome.add([item_outcome(record)], record["attempt_count"])
    combined = outcome.record()
    assert combined["cause"] == "raised"  # the cause of its first failed task
    assert decode_result(combined["result"]) == [1, "ValueError: no"]
    assert combined["success"] is False and combined["stopped"] == 9.0
    assert combined["attempt_count"] == 2 and combined["started"] == 5.0


def test_a_batch_record_gives_each_item_its_own_record():
    from nbqueue.disk.names import item_id, new_batch_id
    batch_id, name = new_batch_id()
    args = [((i,), {}) for i in range(3)]
    header = _header(id=batch_id, name=name, args=pickle.dumps(args), items=3, group="g")
    entries = [(True, pickle.dumps(0), 1.0, 2.0, None, None),
               (False, "ValueError: no", 2.0, 3.0, "raised", {"traceback": "tb", "live": True}),
               (False, "TaskCancelled: x", 3.0, 3.0, "cancelled", None)]
    record = make_record(header, Outcome(batch_id, True, entries, 1.0, 3.0), attempt=1)
    assert record["count"] == 3 and record["items"] == entries and record["result"] is None
    assert tallies(record) == {(True, False): 1, (False, False): 1, (False, True): 1}
    view = item_view(record, 1)
    assert view["id"] == item_id(batch_id, 1) and view["name"] == f"{name}.1"
    assert pickle.loads(view["args"]) == ((1,), {}) and view["group"] == "g"
    assert view["batch"] == batch_id
    assert (view["success"], view["result"], view["cause"], view["traceback"]) == (
        False, "ValueError: no", "raised", "tb")
    assert "live" not in view and item_view(record, 3) is None
    assert item_outcome(view)[:5] == entries[1][:5]
    # a batch that failed as a whole is each item's failure
    whole = make_record(header, failure(batch_id, "WorkerLost: gone", Cause.WORKER_LOST), 2)
    assert tallies(whole) == {(False, False): 3}
    assert item_view(whole, 2)["result"] == "WorkerLost: gone"


def _imports(module):
    """What importing ``module`` imports (its top-level import statements)."""
    tree = ast.parse(open(module.__file__).read())
    for node in tree.body:
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module in ("nbqueue", "nbqueue.disk"):
            yield from (f"{node.module}.{alias.name}" for alias in node.names)  # modules
        elif isinstance(node, ast.ImportFrom) and node.module != "__future__":
            yield "." * node.level + node.module


@pytest.mark.parametrize("module", [records, signing, errors, blobs, conf, filesystems])
def test_records_and_what_it_imports_need_only_the_standard_library_and_blake3(module):
    for name in _imports(module):
        assert name in ("nbqueue.errors", "nbqueue.disk.signing", "nbqueue.disk.blobs",
                        "nbqueue.conf", "nbqueue.disk.filesystems", "nbqueue.disk.names", "blake3") or (
            name.split(".")[0] in sys.stdlib_module_names), name

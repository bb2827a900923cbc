"""WorkerChannel: a reply that arrived is delivered even when the channel closes right after it."""

from __future__ import annotations

import asyncio
import json
import threading
from multiprocessing import Pipe

import numpy as np
import pytest

from shoal.runtime.batch_block import BATCH_SLOTS, BatchBlock
from shoal.runtime.errors import WorkerFailedError
from shoal.runtime.worker_channel import WorkerChannel


def _doubling_worker(connection, block_name: str, size_bytes: int, batches: int = 1, slots: list | None = None) -> None:
    """Answers `batches` "run"s in the order they came by doubling each, from and into its own
    slot (noting the slot in `slots`), like a worker whose process exits right after."""
    block = BatchBlock.attach(block_name, size_bytes)
    for _ in range(batches):
        message = json.loads(connection.recv_bytes())
        slot = message.get("slot", 0)
        if slots is not None:
            slots.append(slot)
        shape = block.write_outputs(2 * block.inputs(message["batch_size"], (3,), slot), slot)
        reply = {"op": "done", "batch_id": message["batch_id"], "output_shape": shape, "compute_ms": 1.0, "request_id": message["request_id"]}
        connection.send_bytes(json.dumps(reply).encode())
    block.release()


def test_a_reply_that_arrived_survives_the_channel_closing_before_the_batch_resumes():
    async def scenario():
        parent, child = Pipe()
        block = BatchBlock.create(1 << 16)
        channel = WorkerChannel("w0", parent, block, on_closed=lambda: None)
        deliver = channel._on_readable

        def deliver_then_close() -> None:  # the exit is noticed in the same loop pass as the reply
            deliver()
            channel.close("worker w0 exited")

        asyncio.get_running_loop().remove_reader(parent.fileno())
        asyncio.get_running_loop().add_reader(parent.fileno(), deliver_then_close)
        thread = threading.Thread(target=_doubling_worker, args=(child, block.name, 1 << 16))
        thread.start()
        items = [np.array([1.0, 2.0, 3.0], dtype=np.float32), np.array([4.0, 5.0, 6.0], dtype=np.float32)]
        outputs, compute_ms = await channel.run("v", items)
        thread.join()
        with pytest.raises(WorkerFailedError, match="not running"):
            await channel.run("v", items)  # closed now: later batches fail at once
        return outputs, block

    outputs, block = asyncio.run(scenario())
    np.testing.assert_array_equal(outputs, [[2.0, 4.0, 6.0], [8.0, 10.0, 12.0]])
    assert block._memory is None  # released once the batch was done with it


def _run_against_doubling_worker(on_outputs=None, on_reply=None):
    """One batch through a channel whose worker thread doubles it (through `run`, or a bare
    `request` with `on_reply`); returns what happened, in order."""
    events = []

    async def scenario():
        parent, child = Pipe()
        block = BatchBlock.create(1 << 16)
        channel = WorkerChannel("w0", parent, block, on_closed=lambda: None)
        thread = threading.Thread(target=_doubling_worker, args=(child, block.name, 1 << 16))
        thread.start()

        async def batch():  # the task that awaits the batch records its own return
            if on_reply is not None:
                block.write_inputs([np.array([1.0, 2.0, 3.0], dtype=np.float32)])
                await channel.request({"op": "run", "batch_id": 1, "batch_size": 1}, on_reply)
                return
            outputs, _ = await channel.run("v", [np.array([1.0, 2.0, 3.0], dtype=np.float32)], on_outputs=on_outputs(events))
            events.append(("returned", outputs.tolist()))

        try:
            await asyncio.wait_for(batch(), 5.0)
        except ZeroDivisionError as error:
            events.append(("raised", str(error)))
        finally:
            thread.join()
            channel.close("test over")
        await asyncio.sleep(0.01)  # whatever the hand-on woke has run

    asyncio.run(scenario())
    return events


def test_outputs_are_handed_on_from_the_reply_callback_after_the_batch_is_due_to_resume():
    def record(events):
        answered = asyncio.get_running_loop().create_future()

        async def handler():  # a request waiting for its row, as the scheduler's are
            await answered
            events.append("handler resumed")

        events.append(asyncio.get_running_loop().create_task(handler()))

        def hand_on(outputs, compute_ms):
            # No current task: called by the loop's read callback, not by the batch's coroutine.
            events.append(("handed on", outputs.tolist(), compute_ms, asyncio.current_task() is None))
            answered.set_result(None)

        return hand_on

    _, *events = _run_against_doubling_worker(record)
    # The batch's coroutine resumes first (its worker dispatches the next batch), the handler after.
    assert events == [("handed on", [[2.0, 4.0, 6.0]], 1.0, True), ("returned", [[2.0, 4.0, 6.0]]), "handler resumed"]


def test_a_failure_while_handing_outputs_on_is_logged_and_the_batch_still_returns(caplog):
    def fail(events):
        return lambda outputs, compute_ms: 1 / 0

    assert _run_against_doubling_worker(fail) == [("returned", [[2.0, 4.0, 6.0]])]
    assert "w0: handing a reply on failed" in caplog.text


def test_a_reply_hook_that_raises_fails_the_request():
    assert _run_against_doubling_worker(on_reply=lambda reply: 1 / 0) == [("raised", "division by zero")]


def test_a_request_to_a_worker_that_is_gone_names_its_exit():
    async def scenario():
        parent, child = Pipe()
        child.close()  # the worker's end is gone; its exit has not been noticed yet
        channel = WorkerChannel("w0", parent, BatchBlock.create(1 << 12), on_closed=lambda: None)
        try:
            with pytest.raises(WorkerFailedError, match="w0 exited before this request reached it"):
                await channel.run("v", [np.zeros(3, dtype=np.float32)])
        finally:
            channel.close("test over")

    asyncio.run(scenario())


def test_batches_in_flight_each_get_their_own_slot_and_outputs():
    async def scenario():
        parent, child = Pipe()
        block = BatchBlock.create(1 << 16)
        channel = WorkerChannel("w0", parent, block, on_closed=lambda: None)
        slots: list[int] = []
        thread = threading.Thread(target=_doubling_worker, args=(child, block.name, 1 << 16, 5, slots))
        thread.start()
        batches = [[np.full(3, 10.0 * index + item, np.float32) for item in range(index + 1)] for index in range(5)]
        try:
            # five at once: BATCH_SLOTS in flight, the rest waiting for a slot to come free
            results = await asyncio.wait_for(asyncio.gather(*(channel.run("v", items) for items in batches)), 5.0)
        finally:
            thread.join()
            channel.close("test over")
        return batches, results, slots

    batches, results, slots = asyncio.run(scenario())
    for items, (outputs, _) in zip(batches, results, strict=True):
        np.testing.assert_array_equal(outputs, 2 * np.stack(items))
    assert sorted(set(slots)) == list(range(BATCH_SLOTS))  # more than one slot was used


def test_a_batch_block_round_trips_a_batch_per_slot_and_refuses_one_that_does_not_fit():
    block = BatchBlock.create(BATCH_SLOTS * 2 * 3 * 4 * 4 * 2)  # each side of a slot holds exactly 3 items of 2x4 float32
    try:
        batches = {slot: [np.full((2, 4), 10 * slot + index, np.float32) for index in range(3)] for slot in range(BATCH_SLOTS)}
        for slot, items in batches.items():
            block.write_inputs(items, slot)
        for slot, items in batches.items():  # no slot wrote over another
            np.testing.assert_array_equal(block.inputs(3, (2, 4), slot), np.stack(items))
        with pytest.raises(ValueError, match="exceeds the worker's shared block"):
            block.write_inputs(batches[0] + [batches[0][0]])
        shapes = {slot: block.write_outputs(np.arange(6, dtype=np.float32).reshape(3, 2) + slot, slot) for slot in range(BATCH_SLOTS)}
        for slot, shape in shapes.items():
            np.testing.assert_array_equal(block.read_outputs(shape, slot), np.arange(6, dtype=np.float32).reshape(3, 2) + slot)
        np.testing.assert_array_equal(block.inputs(3, (2, 4), 0), np.stack(batches[0]))  # outputs left the inputs alone
        with pytest.raises(ValueError, match=f"slot {BATCH_SLOTS} is not one of the block's"):
            block.inputs(1, (2, 4), BATCH_SLOTS)
    finally:
        block.release()


def test_control_messages_with_lone_surrogates_still_travel():
    """A path of undecodable bytes (os.fsdecode's surrogate escapes) or an error quoting one:
    orjson refuses such text, and a worker that could not send its reply would stop answering."""
    from shoal.runtime.worker import decode_message, encode_message

    path = "/models/caf\udce9/model.onnx"
    for message in ({"op": "load", "path": path, "request_id": 3}, {"op": "error", "message": f"cannot open {path}", "request_id": 4}):
        assert decode_message(encode_message(message)) == message
    assert decode_message(encode_message({"op": "run", "batch_size": 2})) == {"op": "run", "batch_size": 2}

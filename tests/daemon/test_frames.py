"""FrameRelay: a task's ComfyUI frames batched to the scheduler, progress coalesced."""

import threading

from workers_app.daemon.frames import FrameRelay


class Clock:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(round(seconds, 3))
        self.now += seconds


def test_frames_go_out_in_order_and_others_stay_on_the_worker():
    sent: list[list] = []
    relay = FrameRelay(sent.append)
    relay.put({"type": "execution_start", "data": {"prompt_id": "p"}})
    relay.put({"type": "status", "data": {}})
    relay.put({"type": "progress_state", "data": {"prompt_id": "p"}})
    relay.put({"type": "executing", "data": {"node": "3", "prompt_id": "p"}})
    relay.put({"type": "execution_error", "data": {"prompt_id": "p", "current_inputs": {"text": "secret"}}})
    assert relay.join(5)
    frames = [frame for batch in sent for frame in batch]
    assert [kind for kind, _ in frames] == ["execution_start", "executing", "execution_error"]
    assert "current_inputs" not in frames[-1][1]


def test_the_prompts_end_is_not_relayed_the_scheduler_sends_it_after_the_images():
    sent: list[list] = []
    relay = FrameRelay(sent.append)
    relay.put({"type": "executing", "data": {"node": "9", "prompt_id": "p"}})
    relay.put({"type": "executed", "data": {"node": "9", "output": {"images": []}, "prompt_id": "p"}})
    relay.put({"type": "execution_success", "data": {"prompt_id": "p"}})
    relay.put({"type": "executing", "data": {"node": None, "prompt_id": "p"}})
    assert relay.join(5)
    assert [frame for batch in sent for frame in batch] == [["executing", {"node": "9", "prompt_id": "p"}]]


def test_progress_is_coalesced_to_at_most_ten_batches_a_second():
    clock = Clock()
    sent: list[list] = []
    sending, gate = threading.Event(), threading.Event()

    def send(batch):
        sent.append(batch)
        sending.set()
        gate.wait(5)  # hold the first send so the next frames pile up behind it

    relay = FrameRelay(send, clock=clock, sleep=clock.sleep)
    relay.put({"type": "progress", "data": {"value": 1, "max": 10}})
    assert sending.wait(5)
    for value in range(2, 6):
        relay.put({"type": "progress", "data": {"value": value, "max": 10}})
    gate.set()
    assert relay.join(5)
    assert [[data["value"] for _, data in batch] for batch in sent] == [[1], [5]]
    assert clock.slept == [0.1]  # the second progress batch waited out the tenth of a second


def test_close_drops_what_was_not_sent():
    sending, gate = threading.Event(), threading.Event()
    sent: list[list] = []
    relay = FrameRelay(lambda batch: (sent.append(batch), sending.set(), gate.wait(5)))
    relay.put({"type": "executing", "data": {"node": "1"}})
    assert sending.wait(5)
    relay.put({"type": "executing", "data": {"node": "2"}})
    relay.close()
    gate.set()
    assert relay.join(5)
    relay.put({"type": "executing", "data": {"node": "3"}})
    assert [batch[0][1]["node"] for batch in sent] == ["1"]

"""FileWork: the tasks' local file operations, one trip to one thread per turn of the loop."""

from __future__ import annotations

import asyncio
import threading

import pytest

from batch_agent.tasks.filework import FileWork


def test_the_calls_of_one_turn_run_in_order_in_one_thread_off_the_loop():
    ran: list[tuple[str, int]] = []

    def call(name: str) -> str:
        ran.append((name, threading.get_ident()))
        return name.upper()

    async def main() -> list[str]:
        work = FileWork()
        try:
            calls = [work.run(lambda name=name: call(name)) for name in "abc"]
            return list(await asyncio.gather(*calls))
        finally:
            work.close()

    loop_thread = threading.get_ident()
    assert asyncio.run(main()) == ["A", "B", "C"]
    assert [name for name, _ in ran] == ["a", "b", "c"]
    threads = {ident for _, ident in ran}
    assert len(threads) == 1 and loop_thread not in threads


def test_an_error_goes_to_its_own_caller_only():
    def broken() -> None:
        raise FileNotFoundError("no such folder")

    async def main() -> tuple[object, object]:
        work = FileWork()
        try:
            results = await asyncio.gather(
                work.run(broken), work.run(lambda: 7), return_exceptions=True
            )
            return results[0], results[1]
        finally:
            work.close()

    error, fine = asyncio.run(main())
    assert isinstance(error, FileNotFoundError) and fine == 7


def test_a_later_turns_call_runs_after_the_trip_before_it():
    order: list[str] = []

    async def main() -> None:
        work = FileWork()
        try:
            earlier = work.submit(lambda: order.append("earlier"))
            await asyncio.sleep(0)  # the next turn: `earlier` is on its way
            later = work.submit(lambda: order.append("later"))
            await asyncio.gather(earlier, later)
        finally:
            work.close()

    asyncio.run(main())
    assert order == ["earlier", "later"]


def test_a_cancelled_caller_does_not_stop_the_others():
    async def main() -> int:
        work = FileWork()
        try:
            dropped = asyncio.ensure_future(work.run(lambda: 1))
            kept = work.submit(lambda: 2)
            await asyncio.sleep(0)
            dropped.cancel()
            with pytest.raises(asyncio.CancelledError):
                await dropped
            return await kept
        finally:
            work.close()

    assert asyncio.run(main()) == 2

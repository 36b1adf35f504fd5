"""What a process runs besides answering requests: asyncio tasks on its one event loop.

Workers (with their lease heartbeat and the recovery pass), the scheduler, the webhook dispatcher
and the listener for other processes' wake-ups are coroutines; `Tasks` starts and stops them all
the same way. The model's drawing, which is CPU work, runs on a thread (`asyncio.to_thread`).
"""

"""The daemon's workers: peers that take their work from the state, never from each other.

`outbox` sends mail, `actions` does the other side effects (reactions,
replies, digests asked for in the chat), `schedule` queues scheduled digests.
Each owns its retry policy. They meet only in the state package: what one
queues, another finds there (a wake-up callback given by the daemon only
shortens the wait). tests/test_architecture.py keeps it that way.
"""
